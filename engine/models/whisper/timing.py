"""Word timestamps from the decoder's cross-attention, as openai-whisper's ``timing.py`` computes them.

For a batch of utterances with known transcripts: run the decoder teacher-forced on
``sot, language, task, notimestamps, text..., eot``; take the pre-softmax cross-attention of the
model's alignment heads; crop each row to the utterance's valid encoder frames *before* the
softmax (padding frames must not take probability mass); standardise every frame over the
tokens; median-filter along frames; average the heads; run DTW on the negative. The DTW path
says at which frame each token starts; words are groups of tokens (split at spaces, or at
character boundaries in languages written without spaces), and punctuation is merged into its
neighbour as Whisper does. CTranslate2's ``Whisper.align`` (faster-whisper's word timestamps)
runs the same recipe; ``tests/models/whisper/test_timing.py`` compares with it on real speech.

Long utterances (xa of several 30 s windows, window ``w`` holding seconds ``30 w .. 30 (w + 1)``) are aligned window
by window, as Whisper aligns each window with its own text. Pass 1 runs the recipe once over the windows' encoder
outputs concatenated along frames: one DTW places every word roughly, but near a window boundary it is off by up to
~1.3 s (presumably because every window's encoder outputs carry the same positional embeddings, so the start of a
window looks to the heads like the start of the previous one). Pass 1 only guesses which words each window holds (by
midpoint); each boundary then moves by up to ``boundary_words`` words to the split under which the decoder finds the
two windows' texts, each followed by eot, most likely given their own window (``_window_splits``), so a word spoken
across a boundary goes to the window whose decoder accounts for it better. Pass 2 aligns each window's words against
its 1500 frames alone (openai-whisper's ``find_alignment`` per segment) and shifts their times by the window's
start. On five FLEURS clips joined into 43 s, against each clip aligned alone: pass 1's words in the 5 s after the
boundary were off by up to 1.14 s, pass 2's by at most 0.04 s (0.18 s over all words). One window: pass 1 alone,
unchanged.

Glossary: ``token`` = a position of the teacher-forced sequence, ``frame`` = an encoder frame
(``ENCODER_FRAMES_PER_SECOND`` a second), ``head`` = one of the alignment heads (decoder layer, head).
Not applied (they are heuristics on top of the alignment, in Whisper's ``add_word_timestamps``):
clamping words longer than twice the median word duration, and moving words to the previous
segment's speech end.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.data.audio import N_SAMPLES
from engine.errors import ShapeError
from engine.models.whisper.decoding import heads_cross_attention
from engine.models.whisper.features import ENCODER_FRAMES_PER_SECOND, N_ENCODER_FRAMES, log_mel_spectrogram
from kernels.dtw import dtw_batch
from kernels.filters import median_filter

PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # Whisper's defaults: merged into the following word
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # merged into the preceding word
TOKEN_BUCKET = 32  # teacher-forced lengths are padded to a multiple of this, to bound recompilation


class TranscriptTooLongError(ShapeError):
    """The transcript does not fit the decoder's text context with its prompt."""


@dataclasses.dataclass(frozen=True)
class Word:
    text: str  # as the tokenizer decodes it, with its leading space and merged punctuation
    start: float  # seconds from the start of the utterance
    end: float
    probability: float  # mean probability of the word's own tokens under the teacher-forced decoder
    tokens: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class AlignmentConfig:
    median_filter_width: int = 7  # Whisper's and CTranslate2's default
    prepend_punctuations: str = PREPEND_PUNCTUATIONS
    append_punctuations: str = APPEND_PUNCTUATIONS
    task: str = "transcribe"  # the prompt's task token; "translate" aligns an English translation
    boundary_words: int = 4  # how far (words) a window boundary may move from pass 1's guess (_window_splits)


@functools.partial(jax.jit, static_argnames=("graphdef", "eot", "width", "offset"))
def _alignment_cost(graphdef, state, xa, tokens, n_tokens, n_frames, heads, *, eot, width, offset):
    """Teacher-forced decoder -> (cost f32[b, rows, frame], text_probs f32[b, rows]).

    tokens: i32[b, t] (``offset`` prompt tokens, then text and eot, padded); n_tokens: i32[b] valid
    positions; n_frames: i32[b] valid frames. Row r of the cost is position ``offset + r``, the one
    that predicts text token r (the last valid row predicts eot).
    """
    b, t = tokens.shape
    frames = xa.shape[1]
    valid_frame = jnp.arange(frames)[None, :] < n_frames[:, None]  # [b, frame]
    # The decoder attends to the whole window, padding included, as Whisper's does; only the weights are cropped.
    # w: the alignment heads' pre-softmax cross-attention f32[b, head, t, frame].
    logits, w = heads_cross_attention(nnx.merge(graphdef, state), xa, tokens, heads, cross="logits")
    # Probability of each next token, the softmax over text tokens only (ids below eot), as Whisper.
    text_logits = logits[:, :, :eot]
    nxt = jnp.concatenate([tokens[:, 1:], jnp.zeros((b, 1), tokens.dtype)], axis=1)
    logp = jnp.take_along_axis(jax.nn.log_softmax(text_logits, axis=-1), jnp.minimum(nxt, eot - 1)[..., None], -1)
    probs = jnp.exp(logp[..., 0])
    valid_token = jnp.arange(t)[None, :] < n_tokens[:, None]  # [b, t]
    w = jnp.where(valid_frame[:, None, None, :], w, -jnp.inf)
    w = jax.nn.softmax(w, axis=-1)  # over the valid frames only: the same as cropping first
    # Standardise each frame over the valid tokens (torch.std_mean, unbiased=False).
    tmask = valid_token[:, None, :, None]
    count = n_tokens[:, None, None, None].astype(jnp.float32)
    mean = jnp.sum(jnp.where(tmask, w, 0.0), axis=2, keepdims=True) / count
    var = jnp.sum(jnp.where(tmask, jnp.square(w - mean), 0.0), axis=2, keepdims=True) / count
    w = (w - mean) / jnp.sqrt(var)
    w = median_filter(w, width, n_valid=n_frames[:, None, None])
    matrix = jnp.mean(w, axis=1)  # [b, t, frame]
    cost = -matrix[:, offset:, :]
    # Padding rows/frames hold garbage (inf, NaN): the DTW kernel never reads past n_rows / n_frames.
    return cost, probs[:, offset:]


def _bucket(n: int, limit: int) -> int:
    return min(-(-n // TOKEN_BUCKET) * TOKEN_BUCKET, limit)


def align_words(
    whisper,
    xa,
    n_frames,
    text_tokens: Sequence[Sequence[int]],
    languages: Sequence[str | None],
    config: AlignmentConfig | None = None,
) -> list[list[Word]]:
    """Words with start/end times for a batch of utterances with known transcripts.

    whisper: a ``LoadedWhisper``. xa: f[batch, frame, embed], the decoder's audio input (the final
    encoder layer, L+1), one 30 s window (1500 frames) or several concatenated along frames (then
    every utterance is aligned window by window: the module docstring).
    n_frames: i32[batch] valid frames of each utterance (the rest is padding). text_tokens: the
    transcript of each utterance as text token ids (no prompt, no eot; ``tokenizer.encode(" " +
    text)`` for a given transcript). languages: Whisper codes for the prompt (None for English-only
    models); they also choose the word splitting (by character in zh/ja/th/lo/my/yue).
    Returns, per utterance, its words in order (an empty transcript gives no words).
    Raises TranscriptTooLongError when prompt + transcript + eot exceed the text context (448).
    """
    config = config or AlignmentConfig()
    tok = whisper.tokenizer
    dims = whisper.dims
    xa = jnp.asarray(xa)
    if xa.ndim != 3 or xa.shape[2] != dims.n_audio_state:
        raise ShapeError(f"xa must be f[batch, frame, {dims.n_audio_state}], got shape {xa.shape}")
    batch, frames = xa.shape[0], xa.shape[1]
    n_frames = np.asarray(n_frames, np.int32).reshape(-1)
    if n_frames.shape != (batch,) or len(text_tokens) != batch or len(languages) != batch:
        raise ShapeError(
            f"n_frames ({n_frames.shape}), text_tokens ({len(text_tokens)}) and languages ({len(languages)}) "
            f"need one entry per utterance of xa ({batch})"
        )
    if batch and (n_frames.min() < 1 or n_frames.max() > frames):
        raise ShapeError(f"n_frames must lie in 1..{frames} (frames of xa), got {n_frames.min()}..{n_frames.max()}")
    texts = [[int(x) for x in t if int(x) < tok.eot] for t in text_tokens]
    prompts = [prompt_tokens(whisper, lang, config.task) for lang in languages]
    if any(len(p) != len(prompts[0]) for p in prompts):
        raise ShapeError("every prompt in a batch must have the same length")
    too_long = [i for i, (p, t) in enumerate(zip(prompts, texts, strict=True)) if len(p) + len(t) + 1 > dims.n_text_ctx]
    if too_long:
        raise TranscriptTooLongError(
            f"utterances {too_long} have transcripts of {[len(texts[i]) for i in too_long]} tokens; with the "
            f"prompt and end-of-text they exceed the decoder's {dims.n_text_ctx} positions"
        )
    words = _align(whisper, xa, n_frames, texts, prompts, languages, config)
    if frames <= N_ENCODER_FRAMES or not batch:
        return words
    return _align_by_window(whisper, xa, n_frames, words, prompts, languages, config)


def _align(whisper, xa, n_frames, texts, prompts, languages, config) -> list[list[Word]]:
    """One teacher-forced decoder pass and one DTW per utterance over all of its frames (checked inputs)."""
    tok = whisper.tokenizer
    batch = xa.shape[0]
    offset = len(prompts[0]) - 1 if prompts else 0  # the row of notimestamps predicts the first text token
    seqs = [p + t + [tok.eot] for p, t in zip(prompts, texts, strict=True)]
    results: list[list[Word]] = [[] for _ in range(batch)]
    todo = [i for i in range(batch) if texts[i]]
    if not todo:
        return results
    t = _bucket(max(len(s) for s in seqs), whisper.dims.n_text_ctx)
    tokens = np.full((batch, t), tok.eot, np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    n_tokens = np.array([len(s) for s in seqs], np.int32)
    heads = np.asarray(whisper.alignment_heads(), np.int32)
    graphdef, state = whisper._split
    cost, probs = _alignment_cost(
        graphdef,
        state,
        xa,
        jnp.asarray(tokens),
        jnp.asarray(n_tokens),
        jnp.asarray(n_frames),
        jnp.asarray(heads),
        eot=tok.eot,
        width=config.median_filter_width,
        offset=offset,
    )
    n_rows = np.array([len(x) + 1 for x in texts], np.int32)
    path = dtw_batch(cost[np.array(todo)], jnp.asarray(n_rows[todo]), jnp.asarray(n_frames[todo]))
    token_idx, frame_idx, length = (np.asarray(a) for a in (path.token_idx, path.frame_idx, path.length))
    probs = np.asarray(probs)
    multilingual = whisper.dims.is_multilingual
    for k, i in enumerate(todo):
        n = length[k]
        words = _words_from_path(
            tok, texts[i], token_idx[k, :n], frame_idx[k, :n], probs[i], languages[i] if multilingual else None
        )
        results[i] = merge_punctuations(words, config.prepend_punctuations, config.append_punctuations)
    return results


@functools.partial(jax.jit, static_argnames=("graphdef", "eot", "offset"))
def _text_logprob(graphdef, state, xa, tokens, n_tokens, *, eot, offset):
    """f32[b]: log-probability of each sequence's text and eot given its window, the softmax over text tokens
    and eot (``tokens`` as ``_alignment_cost``'s)."""
    dec = nnx.merge(graphdef, state).decoder
    logits, _, _ = dec(tokens, dec.cross_kv(xa))
    logp = jax.nn.log_softmax(logits[:, :-1, : eot + 1], axis=-1)
    picked = jnp.take_along_axis(logp, jnp.minimum(tokens[:, 1:], eot)[..., None], -1)[..., 0]
    pos = jnp.arange(tokens.shape[1] - 1)[None, :]
    return jnp.sum(jnp.where((pos >= offset) & (pos < n_tokens[:, None] - 1), picked, 0.0), axis=1)


def _window_splits(whisper, xa, n_frames, words, prompts, config) -> list[list[int]]:
    """Per utterance, the index of the first word of each of its windows (then the word count).

    Boundary b (30 b s) is placed after pass 1's words whose midpoint precedes it, then moved by up to
    ``config.boundary_words`` words to where the decoder finds the two windows' texts most likely (each window's
    text and eot given that window alone): pass 1 is least reliable just there. Boundaries are settled in order,
    each with the previous one fixed and the next one at pass 1's guess.
    """
    tok = whisper.tokenizer
    cands = 2 * config.boundary_words + 1
    n_windows = -(-n_frames // N_ENCODER_FRAMES)
    mids = [np.array([(w.start + w.end) / 2 for w in ws]) for ws in words]
    guess = [[0] + [int(np.sum(m < 30.0 * b)) for b in range(1, n_windows[i])] + [len(m)] for i, m in enumerate(mids)]
    splits = [[0] for _ in words]
    for b in range(1, int(n_windows.max(initial=1))):
        rows = [i for i in range(len(words)) if n_windows[i] > b]
        seqs, windows, choices = [], [], []
        for i in rows:
            low, high = splits[i][-1], guess[i][b + 1]
            ks = np.clip(np.arange(cands) - config.boundary_words + guess[i][b], low, high)
            choices.append(ks)
            for k in ks:
                left = [x for w in words[i][low:k] for x in w.tokens]
                right = [x for w in words[i][k:high] for x in w.tokens]
                seqs += [prompts[i] + left + [tok.eot], prompts[i] + right + [tok.eot]]
                windows += [xa[i, (b - 1 + j) * N_ENCODER_FRAMES : (b + j) * N_ENCODER_FRAMES] for j in (0, 1)]
        tokens = np.full((len(seqs), _bucket(max(map(len, seqs)), whisper.dims.n_text_ctx)), tok.eot, np.int32)
        for j, s in enumerate(seqs):
            tokens[j, : len(s)] = s
        n_tokens = jnp.asarray([len(s) for s in seqs], jnp.int32)
        graphdef, state = whisper._split
        logp = _text_logprob(
            graphdef, state, jnp.stack(windows), jnp.asarray(tokens), n_tokens, eot=tok.eot, offset=len(prompts[0]) - 1
        )
        score = np.asarray(logp).reshape(len(rows), cands, 2).sum(axis=2)
        for i, ks, s in zip(rows, choices, score, strict=True):
            splits[i].append(int(ks[np.argmax(s)]))
    return [s + [len(ws)] for s, ws in zip(splits, words, strict=True)]


def _align_by_window(whisper, xa, n_frames, words, prompts, languages, config) -> list[list[Word]]:
    """Pass 2 over utterances of several windows: each window's words aligned against that window alone, as
    Whisper aligns each 30 s window with its own text; times shifted by the window's start."""
    splits = _window_splits(whisper, xa, n_frames, words, prompts, config)
    pieces = [(i, w) for i, s in enumerate(splits) for w in range(len(s) - 1)]
    texts = [[x for word in words[i][splits[i][w] : splits[i][w + 1]] for x in word.tokens] for i, w in pieces]
    windows = jnp.stack([xa[i, w * N_ENCODER_FRAMES : (w + 1) * N_ENCODER_FRAMES] for i, w in pieces])
    valid = np.array([min(int(n_frames[i]) - w * N_ENCODER_FRAMES, N_ENCODER_FRAMES) for i, w in pieces], np.int32)
    aligned = _align(
        whisper, windows, valid, texts, [prompts[i] for i, _ in pieces], [languages[i] for i, _ in pieces], config
    )
    results: list[list[Word]] = [[] for _ in words]
    for (i, w), ws in zip(pieces, aligned, strict=True):
        shift = w * N_ENCODER_FRAMES / ENCODER_FRAMES_PER_SECOND
        results[i] += [dataclasses.replace(x, start=x.start + shift, end=x.end + shift) for x in ws]
    return results


def prompt_tokens(whisper, language: str | None, task: str = "transcribe") -> list[int]:
    """What ``align_words`` puts before a transcript: sot[, language, task], notimestamps."""
    tok = whisper.tokenizer
    return list(tok.sot_sequence(language, task) if whisper.dims.is_multilingual else tok.sot_sequence())


def fits_text_context(whisper, text_tokens: Sequence[int], language: str | None, task: str = "transcribe") -> bool:
    """Whether prompt + transcript + end-of-text fit the decoder's text context (else TranscriptTooLongError)."""
    return len(prompt_tokens(whisper, language, task)) + len(text_tokens) + 1 <= whisper.dims.n_text_ctx


def _words_from_path(tok, text: list[int], token_idx, frame_idx, probs, language) -> list[Word]:
    """Whisper's ``find_alignment`` after the DTW: a word starts where the path first enters its first token."""
    words, word_tokens = tok.split_to_word_tokens(text + [tok.eot], language)
    if len(word_tokens) <= 1:
        return []
    boundaries = np.concatenate([[0], np.cumsum([len(w) for w in word_tokens[:-1]])])
    jumps = np.concatenate([[True], np.diff(token_idx) != 0])
    jump_times = frame_idx[jumps] / ENCODER_FRAMES_PER_SECOND
    return [
        Word(
            text=word,
            start=float(jump_times[a]),
            end=float(jump_times[b]),
            probability=float(np.mean(probs[a:b])),
            tokens=tuple(wt),
        )
        for word, wt, a, b in zip(words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:], strict=True)
    ]


def merge_punctuations(words: list[Word], prepended: str, appended: str) -> list[Word]:
    """Whisper's ``merge_punctuations``: a space-led prepended mark joins the next word, an appended mark the
    previous one (keeping that word's times and probability); the emptied entries are dropped."""
    text = [w.text for w in words]
    toks = [list(w.tokens) for w in words]
    i, j = len(words) - 2, len(words) - 1
    while i >= 0:
        if text[i].startswith(" ") and text[i].strip() in prepended:
            text[j] = text[i] + text[j]
            toks[j] = toks[i] + toks[j]
            text[i], toks[i] = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(words):
        if not text[i].endswith(" ") and text[j] in appended:
            text[i] = text[i] + text[j]
            toks[i] = toks[i] + toks[j]
            text[j], toks[j] = "", []
        else:
            i = j
        j += 1
    return [dataclasses.replace(w, text=s, tokens=tuple(k)) for w, s, k in zip(words, text, toks, strict=True) if s]


@functools.lru_cache(maxsize=4)
def silence_states(whisper) -> np.ndarray:
    """``f32[1500, embed]``: the decoder's input for a window of pure padding (30 s of zero samples)."""
    mel = log_mel_spectrogram(np.zeros((1, N_SAMPLES), np.float32), whisper.dims.n_mels)
    return np.asarray(whisper.audio_features(np.asarray(mel)), np.float32)[0]


def fill_padding(xa: np.ndarray, n_frames, silence: np.ndarray, frames: int | None = None) -> np.ndarray:
    """f[batch, frames, embed]: each utterance's first ``n_frames`` from xa, the frames past them the silent
    window's, at the same window positions.

    xa: f[batch, frame, embed] (only the valid frames are read, e.g. a layer store's); n_frames: i32[batch];
    silence: ``silence_states``; frames: the length to return, whole 1500-frame windows (default: xa's).
    A layer store keeps valid frames only, but Whisper's decoder also attends to the encoder's output over the
    padding of the last window, and depends on it, so leaving those frames out (or zero) changes its output. The
    silent window's states are a stand-in; how close the words come to full-window alignment is checked in
    ``tests/models/whisper/test_timing.py::test_store_alignment_with_silence_padding_is_close_to_faster_whisper``.
    """
    frames = xa.shape[1] if frames is None else int(frames)
    if frames % N_ENCODER_FRAMES:
        raise ShapeError(f"xa must hold whole 30 s windows ({N_ENCODER_FRAMES} frames each), got {frames} frames")
    n_frames = np.asarray(n_frames).reshape(-1)
    if n_frames.size and n_frames.max() > min(frames, xa.shape[1]):
        raise ShapeError(f"n_frames must be at most {min(frames, xa.shape[1])}, got {n_frames.max()}")
    out = np.empty((xa.shape[0], frames, xa.shape[2]), xa.dtype)
    out[:] = np.tile(silence, (frames // N_ENCODER_FRAMES, 1)).astype(xa.dtype)
    for i, n in enumerate(n_frames):
        out[i, : int(n)] = xa[i, : int(n)]
    return out


def concatenate_windows(states: np.ndarray, valid: Sequence[int]) -> tuple[np.ndarray, int]:
    """Windows of one utterance ``f[window, 1500, embed]`` -> (``f[window * 1500, embed]``, valid frames).

    Every window but the last is full (30 s), so the valid frames stay contiguous from frame 0.
    """
    states = np.asarray(states)
    valid = [int(v) for v in valid]
    if states.ndim != 3 or states.shape[1] != N_ENCODER_FRAMES or len(valid) != states.shape[0]:
        raise ShapeError(f"states must be f[window, {N_ENCODER_FRAMES}, embed] with one valid count per window")
    if any(v != N_ENCODER_FRAMES for v in valid[:-1]):
        raise ShapeError(f"only the last window of an utterance may be partial, got valid frames {valid}")
    return states.reshape(-1, states.shape[2]), sum(valid)
