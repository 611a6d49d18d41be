"""The decode job on a model with a CTC head (wav2vec2 / HuBERT ``*ForCTC``, MMS with its adapter, Parakeet-CTC):
the per-layer logit lens, early exit for ASR-only models.

For every stored layer k (``--layers``, default all) the CTC head is applied to the store's states of layer k, with
the model's final layer norm first where it has one (pre-LN wav2vec2 models: ``ln_post`` = on in the outputs; post-LN
models end every layer normed and FastConformer has no encoder-level norm: ``ln_post`` = off), and greedy CTC decoding
(argmax per frame over the utterance's valid frames, repeats collapsed, blanks dropped, the ids read with the
checkpoint's own tokenizer) gives the hypothesis. What is family-specific (the head, the norm, the tokenizer) is the
model's ``CTCLens`` (``engine.models.interface``), which the registry's ``ctc=`` loader's model gives by
``ctc_lens()``. At the last layer this is ``Wav2Vec2ForCTC``'s / ``ParakeetForCTC``'s own greedy output
(``tests/jobs/test_decode_ctc.py``, ``tests/jobs/test_decode_parakeet.py``, which checks every layer). The store holds
each utterance's valid frames exactly as the encoder computes them (no window padding reaches a CTC head), so unlike
Whisper's decoder nothing is recomputed from audio.

Output: the layout of ``engine.pipelines.decode.hypotheses`` (task ``transcribe``, decoding ``ctc``), scored with
WER/CER (and BLEU/chrF) exactly as Whisper's hypotheses: ``scores.csv``, the figure, ``report.md``. Columns that only
a decoder has: ``language_token`` is the store's language, ``avg_logprob`` the mean over valid frames of the best
class's log-probability, ``n_tokens`` the emitted (non-blank, collapsed) ids. Resume: a part per (language, layer) is
kept when made from the utterances done now. Processes of a multi-process run claim (language, layer) units as
Whisper's decode claims its own (``engine.pipelines.decode.store.decode_claimed``).
"""

from __future__ import annotations

import types

import jax
import numpy as np

from engine.faults import fault_point
from engine.languages import text_code
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError
from engine.pipelines.decode.merge import merge
from engine.pipelines.decode.store import Units, check_store, decode_claimed
from engine.pipelines.decode.unit import compression_ratio
from engine.stores.kv import write_value

DECODING = "ctc"
TASK = "transcribe"
BATCH = 16  # utterances per head call
MANIFEST_FIELDS = (
    "format", "version", "head", "model_name", "checkpoint_sha256", "adapter", "store", "matmul_precision"
)  # fmt: skip


def prepare_ctc(config: DecodeConfig, reader, load) -> tuple:
    """(the ``CTCLens`` of ``config.model``, languages, layers) of a CTC decode, checked against the store before the
    caller takes the lease. ``load``: the family's CTC head loader, ``Family.ctc``, whose model gives the lens."""
    if config.tasks != (TASK,):
        raise DecodeError(f"a CTC head only transcribes: pass --tasks {TASK} (got {','.join(config.tasks)})")
    if config.model is None:
        raise DecodeError("decode needs the store's model: pass --model (the *ForCTC folder or hub id it encoded with)")
    info = reader.info
    # The encode job names an MMS model with its adapter "<name>+adapter.<lang>" (engine.models.wav2vec2.encoder).
    adapter = info.model_name.split("+adapter.", 1)[1] if "+adapter." in info.model_name else None
    lens = load(config.model, adapter=adapter).ctc_lens()
    langs, layers = check_store(config, reader, lens.name, lens.sha256)
    return lens, langs, layers


def run_ctc_decode(config: DecodeConfig, reader, lease, summary, prepared: tuple) -> None:
    """Decodes every (language, layer) of the store with the CTC head (``prepared``: ``prepare_ctc``'s) into
    ``config.run.out``; counts into ``summary`` (a ``DecodeSummary``). The caller holds the output's writer lease
    (``lease``). A work unit is one (language, layer): one part."""
    lens, langs, layers = prepared
    ln_post = lens.ln_post  # the final norm the head is read through (module docstring)
    manifest = {
        "format": "babelgrid-hypotheses", "version": 1, "head": "ctc", "model_name": lens.name,
        "checkpoint_sha256": lens.sha256, "adapter": lens.adapter, "store": reader.url,
        "matmul_precision": config.run.matmul_precision,
    }  # fmt: skip
    units = {f"{lang}/L{layer:02d}": (lang, layer) for lang in langs for layer in layers}

    def part_keys(unit: str) -> dict:
        lang, layer = units[unit]
        return {(TASK, DECODING, layer, ln_post): hyp.part_key(lang, TASK, DECODING, layer, ln_post)}

    def work(kv, unit: str, pending: dict, done: list[int]) -> None:
        lang, layer = units[unit]
        for key in pending.values():
            rows = _part_rows(lens, reader, lang, layer, ln_post, np.asarray(done, np.int64), summary)
            fault_point("before_part")
            write_value(kv, key, hyp.part_bytes(rows, done, []), config.run.out)

    def finish(kv) -> None:
        options = types.SimpleNamespace(
            tasks=(TASK,), decodings=(DECODING,), run=config.run, report_samples=config.report_samples
        )
        codes = {lang: text_code(lang) for lang in langs}
        merge(kv, options, reader, langs, codes, [(layer, ln_post) for layer in layers], summary)

    summary.unit = "(language, layer)"
    decode_claimed(config, reader, lease, summary, manifest, Units(units, part_keys), work, finish, "decode (ctc)",
                   fields=MANIFEST_FIELDS, unrecorded=("matmul_precision",))  # fmt: skip


def _part_rows(lens, reader, lang: str, layer: int, ln_post: bool, done: np.ndarray, summary) -> dict:
    """The hypothesis rows of one (language, layer): the head over the stored states of the done utterances."""
    rows_of = reader.arrays(lang).rows
    out = {name: [] for name in hyp.HYPOTHESIS_SCHEMA.names}
    for first in range(0, len(done), BATCH):
        index = done[first : first + BATCH]
        lengths = reader.lengths(lang)[index]
        states, _ = reader.language_layer(lang, layer, index, np.float32, frames=int(lengths.max()))
        logits = np.asarray(lens.logits(states))  # f32[batch, frame, vocab]
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        best = logits.argmax(-1)
        texts = [lens.text(best[i, : int(n)]) for i, n in enumerate(lengths)]
        for i, u in enumerate(index):
            n = int(lengths[i])
            ids = best[i, :n]
            emitted = ids[np.r_[True, ids[1:] != ids[:-1]]]
            row = rows_of[u]
            values = dict(
                language=lang, id=row.id, recording=row.recording, utterance=int(u), layer=int(layer),
                ln_post=ln_post, task=TASK, decoding=DECODING, language_token=lang, hypothesis=texts[i],
                reference=row.transcription, avg_logprob=float(logp[i, np.arange(n), ids].mean()),
                compression_ratio=compression_ratio(texts[i]),
                n_tokens=int(np.sum(emitted != lens.blank_id)),
            )  # fmt: skip
            for name in out:
                out[name].append(values[name])
            summary.decoded += 1
            summary.tokens += values["n_tokens"]
    return out
