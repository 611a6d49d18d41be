"""One pass of the heads job: the evaluation set encoded under a batch of head masks, and what each mask scores.

The evaluation set is the first ``--utterances`` utterances the store has done in each language, read again from the
audio its utterance table points to and cut into the family's windows (``Encoder.windows``, the store's
``long_audio``). A pass encodes every window under each of its masks (``HeadMasked``: a row of a batch is one window
under one mask, the rows of a batch from one language, so that a decoder prompt serves the whole batch) and scores
each mask:

- **SeqSim R@1** at each scored layer: every utterance's valid frames (its windows in order) against every other
  utterance's (``kernels.seqsim.seqsim_matrix``), and for each ordered pair of languages (a, b) the share of a's
  utterances whose most similar utterance of b is its translation (``r1_of_similarity``: queries without a
  translation in b are left out; a pair with none is NaN);
- **mean-pooled states** at each scored layer, for the language-ID probe (fitted once, on the unablated states, when
  every pass is done: ``engine.pipelines.heads.run``);
- **WER and CER** of the last stored layer's greedy decode, per language (``engine.text.metrics``, Whisper's
  normalisers), where the model has a text decoder: the windows' texts joined per utterance.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from engine.data.audio import load_audio
from engine.errors import AudioError
from engine.models.interface import Search
from engine.pipelines.stages.retrieval import r1_of_similarity
from engine.pipelines.stages.windows import audio_skip_reason
from engine.text import metrics
from kernels.seqsim import seqsim_matrix

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The utterances every mask is scored on, and their windows."""

    langs: tuple[str, ...]
    label: np.ndarray  # i32[utterance]: index into langs
    ids: tuple[str, ...]  # per utterance: the parallel id
    texts: tuple[str | None, ...]  # per utterance: the store's transcription
    inputs: tuple  # per window: the encoder's input
    frames: np.ndarray  # i32[window]: valid encoder frames
    owner: np.ndarray  # i64[window]: the utterance
    skipped: tuple[tuple[str, str, str], ...]  # (lang, id, reason) of utterances whose audio could not be read

    @property
    def n(self) -> int:
        return len(self.ids)


def evaluation_set(reader, encoder, langs, per_language: int) -> Evaluation:
    label, ids, texts, inputs, frames, owner, skipped = [], [], [], [], [], [], []
    for li, lang in enumerate(langs):
        rows = reader.arrays(lang).rows
        for u in np.flatnonzero(reader.done(lang))[:per_language]:
            row = rows[int(u)]
            try:
                windows, valid = encoder.windows(load_audio(row.path), reader.info.long_audio)
            except AudioError as e:
                skipped.append((lang, row.id, audio_skip_reason(e)))
                log.warning("heads: %s/%s skipped (%s): %s", lang, row.id, audio_skip_reason(e), e)
                continue
            inputs += list(windows)
            frames += [int(v) for v in valid]
            owner += [len(ids)] * len(windows)
            label.append(li)
            ids.append(str(row.id))
            texts.append(row.transcription)
    return Evaluation(tuple(langs), np.asarray(label, np.int32), tuple(ids), tuple(texts), tuple(inputs),
                      np.asarray(frames, np.int32), np.asarray(owner, np.int64), tuple(skipped))  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class Decoding:
    """The last layer's greedy decode under each mask: ``decoder`` (``engine.models.interface.Decoder``), the prompt
    language of each store language (None: no token, not decoded), and the normaliser that scores it."""

    decoder: object
    languages: dict  # store language -> prompt language or None
    normalizers: dict  # store language -> callable
    position: int  # the top layer's place in the pass's layers
    max_new_tokens: int


@dataclasses.dataclass
class Scores:
    """What a pass measured, per mask (``cond``), scored layer, utterance or language."""

    pooled: np.ndarray  # f32[cond, scored, utterance, embed]
    r1: np.ndarray  # f64[cond, scored, lang, lang]
    wer: np.ndarray  # f64[cond, lang], NaN where not decoded
    cer: np.ndarray  # f64[cond, lang]
    hyps: np.ndarray  # str[cond, utterance], "" where not decoded

    def arrays(self) -> dict:
        return dataclasses.asdict(self)


def ablation_pass(masked, evaluation: Evaluation, masks: np.ndarray, scored: list[int], decoding: Decoding | None,
                  batch_size: int, collate, progress) -> Scores:  # fmt: skip
    """Every window under every mask of ``masks: f32[cond, blocks, heads]`` (module docstring). ``masked``: the
    encoder's ``HeadMasked`` over the pass's layers; ``scored``: the places in them of the scored layers;
    ``collate``: the encoder's."""
    n_cond, n_utt = len(masks), evaluation.n
    frames = [[[[] for _ in range(n_utt)] for _ in scored] for _ in range(n_cond)]  # [cond][scored][utt]: arrays
    tokens = [[[] for _ in range(n_utt)] for _ in range(n_cond)]
    ablated = np.flatnonzero((masks != 1).any(axis=(0, 2)))
    first = int(ablated[0]) + 1 if len(ablated) and masked.resume is not None else None  # blocks before it shared
    for lang_index, lang in enumerate(evaluation.langs):
        windows = np.flatnonzero(evaluation.label[evaluation.owner] == lang_index)
        if not len(windows):  # every utterance of the language was skipped
            continue
        rows = [(int(w), c) for w in windows for c in range(n_cond)]
        language = decoding.languages.get(lang) if decoding else None
        shared = _shared(masked, evaluation, windows, first, batch_size, collate) if first else None
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            batch = collate([evaluation.inputs[w] for w, _ in chunk], batch_size)
            row_masks = np.ones((batch_size, *masks.shape[1:]), np.float32)
            row_masks[: len(chunk)] = masks[[c for _, c in chunk]]
            states = masked(batch, row_masks) if shared is None else shared.states(chunk, batch, row_masks)
            for r, (w, c) in enumerate(chunk):
                n, u = int(evaluation.frames[w]), int(evaluation.owner[w])
                for s, position in enumerate(scored):
                    frames[c][s][u].append(states[position, r, :n])
            if language is not None:
                valid = np.full(batch_size, states.shape[2], np.int32)
                if not decoding.decoder.caps.reads_padding:
                    valid[: len(chunk)] = evaluation.frames[[w for w, _ in chunk]]
                search = Search(1, decoding.max_new_tokens, 1.0, 1.0)
                ids, _, _ = decoding.decoder.search(states[decoding.position], valid, "transcribe",
                                                    [language] * batch_size, search)  # fmt: skip
                for r, (w, c) in enumerate(chunk):
                    tokens[c][int(evaluation.owner[w])] += list(ids[r])
            progress.update(len(chunk))
    return _score(evaluation, frames, tokens, decoding)


@dataclasses.dataclass
class _Shared:
    """The unablated blocks before ``first`` of one language's windows, computed once for every mask of a pass:
    ``below[w]`` the pass's layers under ``first`` (``f[n, frame, embed]``), ``x[w]`` the input of block ``first``."""

    masked: object
    first: int
    x: dict
    below: dict

    def states(self, chunk, batch, row_masks) -> np.ndarray:
        """The pass's layers of a batch of (window, mask) rows: those under ``first`` read, the others resumed."""
        x = np.zeros((len(row_masks), *self.x[chunk[0][0]].shape), np.float32)
        for r, (w, _) in enumerate(chunk):
            x[r] = self.x[w]
        upper = self.masked.resumed(self.first, x, batch, row_masks)
        n_below = sum(1 for la in self.masked.layers if la < self.first)
        out = np.empty((len(self.masked.layers), *upper.shape[1:]), np.float32)
        out[n_below:] = upper
        for r, (w, _) in enumerate(chunk):
            out[:n_below, r] = self.below[w]
        return out


def _shared(masked, evaluation: Evaluation, windows, first: int, batch_size: int, collate) -> _Shared:
    below = [la for la in masked.layers if la < first]
    layers = tuple(sorted({*below, first - 1}))
    prefix = masked.with_layers(layers)
    size = min(batch_size, len(windows))  # no padding rows where a language has fewer windows than a batch
    ones = np.ones((size, masked.blocks, masked.heads), np.float32)
    x, kept = {}, {}
    for start in range(0, len(windows), size):
        chunk = [int(w) for w in windows[start : start + size]]
        states = prefix(collate([evaluation.inputs[w] for w in chunk], size), ones)
        for r, w in enumerate(chunk):
            x[w] = states[layers.index(first - 1), r]
            kept[w] = states[[layers.index(la) for la in below], r]
    return _Shared(masked, first, x, kept)


def _score(evaluation: Evaluation, frames, tokens, decoding: Decoding | None) -> Scores:
    n_cond, n_scored, n_utt, n_lang = len(frames), len(frames[0]), evaluation.n, len(evaluation.langs)
    embed = frames[0][0][0][0].shape[-1]
    pooled = np.zeros((n_cond, n_scored, n_utt, embed), np.float32)
    r1 = np.full((n_cond, n_scored, n_lang, n_lang), np.nan)
    for c in range(n_cond):
        for s in range(n_scored):
            utts = [np.concatenate(parts) for parts in frames[c][s]]
            lengths = np.array([len(x) for x in utts], np.int32)
            padded = np.zeros((n_utt, int(lengths.max()), embed), np.float32)
            for u, x in enumerate(utts):
                padded[u, : len(x)] = x
                pooled[c, s, u] = x.mean(axis=0)
            sims = np.asarray(seqsim_matrix(padded, lengths, padded, lengths))
            r1[c, s] = r1_of_similarity(sims, evaluation.label, evaluation.ids, n_lang)
    wer, cer = np.full((n_cond, n_lang), np.nan), np.full((n_cond, n_lang), np.nan)
    hyps = np.full((n_cond, n_utt), "", dtype=object)
    if decoding is not None:
        for c in range(n_cond):
            for u in range(n_utt):
                hyps[c, u] = decoding.decoder.text(tokens[c][u]).strip() if tokens[c][u] else ""
            for li, lang in enumerate(evaluation.langs):
                wer[c, li], cer[c, li] = _error_rates(evaluation, hyps[c], li, lang, decoding)
    return Scores(pooled, r1, wer, cer, hyps.astype(str))


def _error_rates(evaluation: Evaluation, hyps, li: int, lang: str, decoding: Decoding) -> tuple[float, float]:
    """(WER, CER) of one language's decodes against the store's transcriptions; NaN where the language has no prompt
    token or no transcription."""
    if decoding.languages.get(lang) is None:
        return np.nan, np.nan
    pairs = [(t, h) for t, h, lab in zip(evaluation.texts, hyps, evaluation.label, strict=True) if lab == li and t]
    norm = decoding.normalizers[lang]
    refs, outs = [norm(t) for t, _ in pairs], [norm(h) for _, h in pairs]
    if not any(r.split() for r in refs):
        return np.nan, np.nan
    return (metrics.error_rate(refs, outs, "word", normalize=False),
            metrics.error_rate(refs, outs, "char", normalize=False))  # fmt: skip
