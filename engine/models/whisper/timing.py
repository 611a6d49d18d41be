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

Long utterances: the windows' encoder outputs are concatenated along frames (window ``w`` holds
seconds ``30 w .. 30 (w + 1)``), so the decoder attends over the whole utterance and one DTW
places every word. Whisper itself aligns window by window with transcript segments it decoded;
given one transcript for the whole utterance, the concatenation is what needs no segmentation.

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
    encoder layer, L+1), one 30 s window (1500 frames) or several concatenated along frames.
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
    offset = len(prompts[0]) - 1 if prompts else 0  # the row of notimestamps predicts the first text token
    if any(len(p) != offset + 1 for p in prompts):
        raise ShapeError("every prompt in a batch must have the same length")
    seqs = [p + t + [tok.eot] for p, t in zip(prompts, texts, strict=True)]
    too_long = [i for i, s in enumerate(seqs) if len(s) > dims.n_text_ctx]
    if too_long:
        raise TranscriptTooLongError(
            f"utterances {too_long} have transcripts of {[len(texts[i]) for i in too_long]} tokens; with the "
            f"prompt and end-of-text they exceed the decoder's {dims.n_text_ctx} positions"
        )
    results: list[list[Word]] = [[] for _ in range(batch)]
    todo = [i for i in range(batch) if texts[i]]
    if not todo:
        return results
    t = _bucket(max(len(s) for s in seqs), dims.n_text_ctx)
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
    for k, i in enumerate(todo):
        n = length[k]
        words = _words_from_path(
            tok, texts[i], token_idx[k, :n], frame_idx[k, :n], probs[i], languages[i] if dims.is_multilingual else None
        )
        results[i] = merge_punctuations(words, config.prepend_punctuations, config.append_punctuations)
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
