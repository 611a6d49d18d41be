"""Early exit and zero-shot ASR / speech translation over a layer store's languages (``jobs/decode.py``).

For every (language, layer, ln_post, task, decoding) part, each utterance is decoded from encoder layer ``layer``,
window by window for audio over 30 s, the windows' texts joined; then scored against the store's transcription
(transcribe) or the English transcription of the same id (translate) with ``engine.text.metrics`` (jiwer, Whisper's
normalisers, sacrebleu). The store supplies the utterance list, the done flags, the transcriptions and the layers on
offer.

The path is the head the store's model has: its text decoder (``engine.models.interface.Decoder``, whatever the
family: ``engine.pipelines.decode.decoder``, which says how each decoder's memory is made exact), else its CTC head
(the per-layer logit lens: ``engine.pipelines.decode.ctc``). Output: the layout in
``engine/pipelines/decode/hypotheses.py`` and BUILD.md. Resume: a part is kept when the utterances done in the store
are the ones it was made from; the merged files are rebuilt from the parts at the end.

Multi-process runs (``jax.distributed``) and independent workers of every path share the work through claim keys in
the output store (``engine.runtime.claims``, ``engine.pipelines.decode.store.decode_claimed``). A process that dies
leaves its claims to expire, and the others take its units; process 0 writes the merged files once every unit is
done, without a barrier (a dead peer would hang it). A part is one write (its Parquet metadata is its done marker),
so a killed process leaves a part whole or absent.
"""

from __future__ import annotations

import dataclasses
import math
import time

from engine.dtypes import DTYPES
from engine.errors import CheckpointError
from engine.models.family import FAMILIES, refuse_without_head
from engine.models.interface import CTC, DECODER, WINDOW_SECONDS
from engine.pipelines.decode.config import DecodeConfig, DecodeError, parse_decoding
from engine.pipelines.decode.ctc import prepare_ctc, run_ctc_decode
from engine.pipelines.decode.decoder import prepare_decoder, run_decoder
from engine.pipelines.stages.early_exit import has_decoder
from engine.pipelines.stages.memory import SAFE_SHARE, available_memory
from engine.runtime.plan import size
from engine.runtime.runs import RunSummary, job_lease
from engine.stores.reader import open_store


@dataclasses.dataclass
class DecodeSummary(RunSummary):
    decoded: int = 0  # utterance x part decodings in this run
    windows: int = 0
    tokens: int = 0
    parts_kept: int = 0  # parts kept from an earlier run
    outputs: list[str] = dataclasses.field(default_factory=list)
    table: str = ""
    unit: str = "(language, layer, ln_post)"  # what one work unit of the run's decode path is

    def report(self) -> str:
        lines = [
            f"decoded {self.decoded} utterance-parts ({self.windows} windows, {self.tokens} tokens) in "
            f"{self.seconds:.1f} s; {self.parts_kept} parts kept from an earlier run; skipped: {self.n_skipped}",
            self.work_line(self.unit),
        ]
        return "\n".join([*lines, *self.skip_lines(), self.table])


def run_decode(config: DecodeConfig, *, decoder=None) -> DecodeSummary:
    """Decodes and scores every part of the config; writes the layout of ``engine.pipelines.decode.hypotheses``. The
    run holds the output folder's writer lease (``engine.runtime.lease``).

    The path is the head the store's model has (``engine.models.family.Family``): its text decoder
    (``engine.models.interface.Decoder``: ``engine.pipelines.decode.decoder``), else its CTC head (wav2vec2
    ``*ForCTC``, ``ParakeetForCTC``: ``engine.pipelines.decode.ctc``); a model with neither is refused before
    anything is written. ``decoder``: the store's model's ``Decoder`` already loaded in ``config.compute_dtype`` (a
    notebook or test that holds one); by default the family's decoder loader loads ``config.model``.
    """
    path = check_decode(config, decoder=decoder)
    with job_lease(config, "decode") as lease:
        summary = DecodeSummary()
        t0 = time.perf_counter()
        path(config, open_store(config.store), lease, summary)
        summary.seconds = time.perf_counter() - t0
        return summary


def check_decode(config: DecodeConfig, *, decoder=None):
    """What the run refuses, refused before anything is written (``run_decode`` before its lease, ``--plan`` before
    it prices the run): a model without the head, a decoding or task the head cannot do, languages and layers the
    store lacks, a ``--batch_size`` that cannot fit. Loads the model (``decoder``: one already loaded) and returns the
    run's path, ``path(config, reader, lease, summary)``."""
    info = open_store(config.store).info
    family = FAMILIES[info.family]
    hint = "decode needs a text decoder (Whisper, OWSM, Canary) or a CTC head (wav2vec2 *ForCTC, ParakeetForCTC models)"
    if has_decoder(info):
        refuse_without_head("decode", DECODER, None if decoder is not None else config.model, info, hint)
    elif family.ctc is not None:  # before the lease: a model without the head writes nothing
        searched = [d for d in config.decodings if d not in (CTC, "greedy")]  # greedy: the head's best path
        if searched:
            raise DecodeError(
                f"--decoding {','.join(searched)}: the store's model has no text decoder to search, only a CTC head, "
                f"read by its best path: pass --decoding {CTC}"
            )
        refuse_without_head(
            "decode", CTC, config.model, None,
            f"decode reads a {info.family} store through its model's {CTC} head: give the checkpoint that encoded it, "
            "with that head (a *ForCTC model)",
        )  # fmt: skip
    else:
        refuse_without_head("decode", DECODER, config.model, info, hint)
    if CTC in config.decodings and family.ctc is None:
        raise DecodeError(
            f"--decoding ctc reads a CTC head, which {info.family} models have none of; pass greedy or beam:N"
        )
    check_decode_batch(info, config)  # before the lease and the manifest: a corrected rerun is not refused
    # The model against the store, its languages and layers, what its decoder can do: before the lease, so that a
    # request it cannot meet creates nothing
    if has_decoder(info):
        if decoder is None:
            try:
                decoder = family.decoder(config.model, dtype=DTYPES[config.compute_dtype])
            except CheckpointError as e:
                raise DecodeError(str(e)) from None
        prepared = prepare_decoder(config, open_store(config.store), decoder)

        def path(config, reader, lease, summary):
            run_decoder(config, reader, lease, summary, decoder, prepared)
    else:
        prepared = prepare_ctc(config, open_store(config.store), family.ctc)

        def path(config, reader, lease, summary):
            run_ctc_decode(config, reader, lease, summary, prepared)

    return path


def check_decode_batch(info, config: DecodeConfig) -> None:
    """Refuses a ``--batch_size`` whose decoder call cannot fit in memory, before anything is written: every window of
    a call holds at least its stored states and the decoder's cross-attention keys and values over them (3 copies
    of f32[window frames, width]) for each beam, the lower bound of any family's decoder or CTC head."""
    beams = max(max(parse_decoding(d) for d in config.decodings), 1)
    frames = math.ceil(info.frame_rate * WINDOW_SECONDS)
    per_window = 3 * frames * info.embed * 4 * beams
    limit, what, _ = available_memory()
    if config.batch_size * per_window <= SAFE_SHARE * limit:
        return
    largest = int(SAFE_SHARE * limit // per_window)
    raise DecodeError(
        f"batch_size {config.batch_size} needs at least {size(config.batch_size * per_window)} per decoder call "
        f"({frames} frames x {info.embed} wide per window, states and cross-attention keys and values, x {beams} "
        f"beams), more than {SAFE_SHARE:.0%} of the {size(limit)} of {what}: pass --batch_size {max(largest, 1)} or "
        "less; nothing was written"
    )
