"""What every model family offers and what they share, with no family behind it: the head names, the ``Encoder``
protocol, ``EncoderCost``, ``FamilyDims``, each family's layer meaning and the 30 s windows. The families import this
module and the registry (``engine.models.family``) imports the families, so the arrows run one way.

An ``Encoder`` provides, on host arrays:

- ``windows(samples, long_audio)``: 16 kHz audio ``f32[samples]`` -> the model's input, one item per window of at
  most 30 s, and the valid encoder frames of each window ``i32[window]``. Whisper pads every window to 30 s of
  log-mel; the others take each window as it is (see their ``encoder.py``). Every family cuts audio over 30 s into
  consecutive 30 s windows encoded apart (``long_audio="window"``) or keeps the first 30 s (``"truncate"``), so that
  one utterance's frames mean the same stretch of audio in every family's store;
- ``expected_frames(samples, long_audio)``: ``(frames, windows)`` of an utterance from its length alone (the store's
  utterance table is written from audio headers before any decoding);
- ``collate(inputs, batch_size)``: window inputs -> the arrays of one fixed-size batch (padding rows are empty);
- ``sharded(mesh, layers, out_dtype)``: a callable ``(*batch) -> states f[len(layers), batch, frame, embed]`` on every
  device of ``mesh``; each window's valid frames are the first ``windows(...)[1][w]`` of its row;
- ``frame_rate`` (frames per second), ``layer_meaning``, ``n_layers_out``, ``embed``, ``store_dims`` (what the store
  records and compares), ``features`` (the front end's settings), ``name`` and ``sha256`` of the checkpoint (the
  heads a model has beside its encoder are the registry's to say: ``Family.heads``, ``Family.store_heads``);
- ``cost(samples)``: the ``EncoderCost`` of one window of ``samples`` samples, for ``encode --plan`` (each family
  counts its own matmuls in its ``cost.py``; Whisper's is ``engine.models.whisper.cost``'s 30 s window model);
- ``window_samples``, ``pads_windows``, ``min_samples``: how ``windows`` cuts audio, for a plan and the memory bound
  that never cut it (the samples of a full window; whether every window is padded to a full one, and costs one; the
  fewest samples a last window must hold to be kept, 0: every one is);
- ``languages_without_token(langs)``: the store languages its decoder has no language token for (encode warns of
  them: decode and align skip them unless told which token to use); none for a family without such a decoder;
- ``ffn_counts(batch, frames)`` and ``ffn_scaled_sums(batch, frames, scale)``: the neurons job's feed-forward unit
  counts and its intervention, on a ``collate``d batch; None where the family has no such counts yet (the job then
  refuses it in one line);
- ``head_masked(layers)``: the encoder as a function of a head mask, ``f[blocks, heads]`` or one per row of a batch
  (``engine.models.common.heads.HeadMasked``: the heads job's ablations and gradient importance), every family;
  ``attention_stats``: each head's mean attention distance, entropy and local share per window
  (``engine.models.common.attention_stats.AttentionStats``), None where the family does not offer it yet;
- ``value_zeroing``: its blocks re-run one at a time from their input with chosen frames' value vectors zeroed
  (``engine.models.common.value_zeroing.ValueZeroing``: the value-zeroing job's context mixing), None where the family
  does not offer it (the job refuses it in one line).

A model with a CTC head offers decode's per-layer logit lens as a ``CTCLens`` (``ctc_lens()`` of the model the
registry's ``ctc=`` loader returns): the head on one layer's states and the text of the frames' best ids, so that the
decode job reads no family's specifics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

DECODER = "decoder"  # a text decoder: decode (transcripts per layer) and finetune
CROSS_ATTENTION = "cross-attention"  # a decoder's cross-attention heads: align (word timestamps by DTW)
CTC = "ctc"  # a CTC head (lm_head): decode as the per-layer logit lens
WINDOW_SECONDS = 30  # every family encodes audio in windows of at most this many seconds
# The families the registry (engine.models.family.FAMILIES) holds, by the name a store records; the stores read this
# list rather than the registry, which imports every family's model code.
FAMILY_NAMES = ("whisper", "wav2vec2", "w2vbert", "owsm", "speechllm", "fastconformer")
DEFAULT_FAMILY = "whisper"  # stores written before families were recorded, and sources without a model_type

WHISPER_LAYERS = "0 = conv stem + positions, 1..L = block outputs, L+1 = ln_post output"
WAV2VEC2_LAYERS = "transformers' hidden_states: 0 = input to the first layer, k = output of layer k (1..L)"
W2VBERT_LAYERS = "0 = projected features, k = output of conformer block k (1..L); the adapter output is not stored"
OWSM_LAYERS = "0 = conv2d subsampling + positions, 1..L = E-Branchformer block outputs, L+1 = after_norm output"
OWLS_LAYERS = (
    "0 = conv2d subsampling + positions, 1..L = pre-norm transformer block outputs (the residual stream), "
    "L+1 = after_norm output"
)
OWSM_CTC_LAYERS = (
    "0 = conv2d8 subsampling + positions (encoded after the prefix <nolang> <asr>, whose 2 positions are not stored), "
    "1..L = E-Branchformer block outputs, each before its interior CTC head's self-conditioning, "
    "L+1 = after_norm output"
)
FASTCONFORMER_LAYERS = "0 = 8x conv subsampling output (x sqrt(width) if scale_input), 1..L = conformer block outputs"
SPEECHLLM_LAYERS = (
    "0 = conv stem + positions, 1..L = block outputs (Voxtral: L+1 = the final layer_norm); the pooled tower output "
    "and the projector are not stored yet"
)


class Encoder(Protocol):
    """A loaded model as the encode pipeline uses it (see the module docstring)."""

    family: str
    name: str
    sha256: str
    frame_rate: float  # encoder frames per second
    layer_meaning: str
    n_layers_out: int
    embed: int
    features: dict
    window_samples: int  # samples of a full window (30 s; a test's small OWSM has its own)
    pads_windows: bool  # every window is padded to a full one before the encoder runs, so costs a full one
    min_samples: int  # a last window of fewer samples gives no frame and is dropped (0: every window is kept)
    # (batch, frames i32[batch]) -> i64[L, units]: frames each feed-forward unit fired on; None: not offered
    ffn_counts: Callable[[tuple, np.ndarray], np.ndarray] | None
    # (batch, frames, scale f32[L, units]) -> (sums f32[layer, batch, embed], frames), the units scaled; None likewise
    ffn_scaled_sums: Callable[[tuple, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
    attention_stats: Any | None  # an AttentionStats (engine.models.common.attention_stats), or None: not offered
    value_zeroing: Any | None  # a ValueZeroing (engine.models.common.value_zeroing), or None: not offered

    @property
    def store_dims(self): ...

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]: ...

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]: ...

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, ...]: ...

    def sharded(self, mesh, layers: Sequence[int], out_dtype) -> Callable: ...

    def head_masked(self, layers: Sequence[int]) -> Any: ...  # engine.models.common.heads.HeadMasked

    def cost(self, samples: int) -> EncoderCost: ...

    def languages_without_token(self, langs: Sequence[str]) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class EncoderCost:
    """What one window of a family's encoder computes, for a plan: FLOPs (a multiply-add counts 2) of the matmuls and
    convolutions (norms, activations, softmax and masks are left out, as in Whisper's count), and the weights read.

    ``front``: everything before the first stored layer's block (feature encoder, projection, positional conv);
    ``layer``: one transformer or conformer block; ``frames``: the window's encoder frames the counts are for."""

    front: float
    layer: float
    n_layers: int  # blocks (L): the store holds L + 1 layers
    frames: int
    n_head: int  # attention heads: each holds a f32[frame, frame] score matrix at its peak
    params: int  # encoder parameters (weights and biases of every module run, norms included)
    input_bytes: float = 0.0  # one window's input as the encoder takes it (0: its samples as f32)

    @property
    def flops(self) -> float:
        return self.front + self.n_layers * self.layer


@dataclasses.dataclass(frozen=True, eq=False)
class CTCLens:
    """A CTC head as decode's logit lens reads it (``engine.pipelines.decode.ctc``), whatever the family.

    ``logits(states f[batch, frame, embed]) -> f32[batch, frame, vocab]`` applies the head to one layer's states,
    through the model's final norm where ``ln_post`` (pre-LN wav2vec2: the norm ``*ForCTC`` applies before its head);
    ``text(ids i[frame]) -> str`` turns the best class of each valid frame into the checkpoint's own greedy CTC text
    (repeats collapsed, the blank ``blank_id`` dropped, ids detokenised as transformers' tokenizer decodes them)."""

    name: str  # the checkpoint's name, as the store records it
    sha256: str  # of its weight files, as the store records it
    adapter: str | None  # an MMS language adapter, else None
    ln_post: bool  # the head reads the states through the model's final norm
    blank_id: int | None  # the class text() drops
    logits: Callable = dataclasses.field(repr=False)
    text: Callable[[np.ndarray], str] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class FamilyDims:
    """What a layer store records of a non-Whisper encoder (Whisper's stores keep ``ModelDimensions``): the stored
    layer count and width, and the family's own config as a dict, compared whole when a run appends to a store."""

    n_layers_out: int  # layer indices 0..n_layers_out-1
    embed: int  # width of every layer's states
    config: dict  # the family's config (``Wav2Vec2Dims.to_dict()``, ``EncoderConfig.to_dict()``)

    def to_dict(self) -> dict:
        return {"n_layers_out": self.n_layers_out, "embed": self.embed, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: dict) -> FamilyDims:
        # JSON turns tuples into lists: compare configs as JSON values on both sides.
        return cls(int(d["n_layers_out"]), int(d["embed"]), json.loads(json.dumps(d["config"])))


def split_windows(
    samples: np.ndarray, long_audio: str, min_samples: int, window: int = WINDOW_SECONDS * 16000
) -> list[np.ndarray]:
    """``f32[samples]`` -> consecutive windows of at most ``window`` samples, 30 s (``"truncate"``: the first only). A
    last window shorter than ``min_samples`` (no encoder frame) is dropped; an utterance shorter than that keeps its one
    window, which the family's features refuse, naming it. Only a model trained on another window (a test's OWSM of
    10 s) passes ``window``."""
    n = window
    if long_audio == "truncate":
        samples = samples[:n]
    parts = [samples[i : i + n] for i in range(0, max(len(samples), 1), n)]
    if len(parts) > 1 and len(parts[-1]) < min_samples:
        parts = parts[:-1]
    return parts


def window_frames(
    samples: int, long_audio: str, frames: Callable[[int], int], min_samples: int, window: int = WINDOW_SECONDS * 16000
) -> tuple[int, int]:
    """``(frames, windows)`` of an utterance of ``samples`` 16 kHz samples cut as ``split_windows`` cuts it."""
    n = window
    if long_audio == "truncate":
        samples = min(samples, n)
    full, rest = divmod(int(samples), n)
    total, windows = full * frames(n), full
    if rest and (rest >= min_samples or not full):
        total, windows = total + (frames(rest) if rest >= min_samples else 0), windows + 1
    return total, max(windows, 1)


class Checkpointed:
    """The name and weights' sha256 of a dataclass over a loaded model (its ``loaded`` field, whose ``checkpoint``
    records both), as an ``Encoder``, ``Decoder``, ``Aligner`` or ``Trainer`` reports them."""

    loaded: Any

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def sha256(self) -> str:
        return self.loaded.checkpoint.sha256


class LoadedEncoder(Checkpointed):
    """What an ``Encoder`` reads off its loaded model the same way in every family: a dataclass encoder with a
    ``loaded`` field (``checkpoint.name``, ``checkpoint.sha256``, ``config.width``, ``config.to_dict()``,
    ``n_layers_out``, ``seconds_per_frame``) inherits these; a family that stores something else overrides them."""

    @property
    def store_dims(self) -> FamilyDims:
        c = self.loaded.config
        return FamilyDims.from_dict({"n_layers_out": self.n_layers_out, "embed": self.embed, "config": c.to_dict()})

    @property
    def frame_rate(self) -> float:
        return 1.0 / self.loaded.seconds_per_frame

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out

    @property
    def embed(self) -> int:
        return self.loaded.config.width


# -- text decoders ---------------------------------------------------------------------------------------------------
# The registry's ``Family.decoder`` loader returns a ``Decoder``: decode, the sae job's early exit and the heads job ask
# it (its ``caps`` first) and never a family's name or loader. Whisper, OWSM and Canary implement it in their folders
# (``text_decoder.py``); tests/models/test_interface_conformance.py checks each against this protocol.

# The decode job's tasks: X -> X, X -> English, and speech -> IPA phones (a phone recogniser's: POWSM's <pr>).
TASKS = ("transcribe", "translate", "phones")
TEXT_TASKS = ("transcribe", "translate")  # what a speech-to-text decoder offers


@dataclasses.dataclass(frozen=True)
class DecoderCaps:
    """What a text decoder can do, declared by its family."""

    # capability -> the Decoder members a decoder has exactly when its caps have it (the others every decoder has)
    OPTIONAL: ClassVar[dict] = {"reads_padding": ("windows", "collate", "memories"), "ln_post": ("final_norm",),
                                "ctc": ("ctc",)}  # fmt: skip

    tasks: tuple[str, ...] = TEXT_TASKS  # the tasks it has a prompt for
    beam: bool = True  # decodings beam:N
    # the decode flags its beam search honours besides N ("patience", "length_penalty"); any other is refused when
    # not at its default, rather than ignored
    beam_options: tuple[str, ...] = ()
    detect_language: bool = False  # --language detect: each window's language token from the memory decoded
    # its cross-attention reads a window's frames past the valid ones (Whisper's, OWSM's: the window's padding), so
    # decode recomputes its memory from the audio; else the store's valid frames are all it reads
    reads_padding: bool = True
    ln_post: bool = True  # a final encoder norm the decoder reads through, applied at early layers by --ln_post
    ctc: bool = False  # --decoding ctc: a CTC head beside the decoder, read from the store's states (``ctc``)
    alignment_heads: bool = False  # cross-attention heads that time words (align)
    training: bool = False  # finetune
    plan: bool = False  # decode --plan prices it (``decode_cost``)


@dataclasses.dataclass(frozen=True)
class Search:
    """One decoding's settings, as the decode job passes them to ``Decoder.search``."""

    beam: int  # 1: greedy
    max_new_tokens: int
    patience: float = 1.0
    length_penalty: float | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class DecoderCost:
    """What ``decode --plan`` prices of a family's text decoder from a store's dimensions alone (no weight is read):
    the encoder recomputed from the audio up to each layer, and the decoder over every window. FLOPs count a
    multiply-add as 2 (``EncoderCost``)."""

    top: int  # the top stored layer (read through the final norm already)
    n_blocks: int  # encoder blocks: early exit at layer k runs min(k, n_blocks) of them
    stem: float  # encoder FLOPs of one window before the first block
    block: float  # encoder FLOPs of one block on one window
    window_frames: int  # encoder frames the decoder reads of a window
    per_token: float  # FLOPs of one decoder token of one beam
    cross_kv: float  # FLOPs of the cross-attention keys and values of one window
    weight_count: int  # decoder weights (elements)
    cache_per_row: int  # elements of one row's self- and cross-attention caches
    prompt_tokens: int
    encoder_block: Callable  # compute dtype -> (one encoder block jitted, one window's input) to time here
    decoder_step: Callable  # (rows, compute dtype) -> (a decoder step's matmuls jitted, input, FLOPs) to time here


class Decoder(Protocol):
    """A model's text decoder (tokens from an encoder layer's states), as decode, the sae job's early exit and the heads
    job's ablations use it. ``search`` reads ``memory f[batch, frame, embed]`` (``valid i32[batch]`` frames of each row)
    and gives ``(tokens, avg_logprob, language label)`` per row: a row's language None is detected
    (``caps.detect_language``), the label is the hypotheses' ``language_token``. Optional members, each present exactly
    when the caps have its capability (``DecoderCaps.OPTIONAL``): with ``caps.reads_padding`` (its cross-attention
    reads a whole window, the padding included: Whisper's, OWSM's) the memory is recomputed from audio, ``windows`` (an
    utterance's window inputs), ``collate`` (a batch of them) and ``memories`` (``((layer, ln_post), memory, valid)``
    per variant, the encoder run once); without it (Canary's) decode reads the store's valid frames cut into windows of
    ``window_frames``. ``caps.ln_post``: ``final_norm``, what ``memories`` applies for ``ln_post=True``. ``caps.ctc``:
    ``ctc``, the CTC head over a layer's stored states -> ``(tokens, avg_logprob)`` per row.
    """

    name: str  # the checkpoint's name, as the store records it
    sha256: str  # of its weight files, as the store records it
    caps: DecoderCaps
    n_layers_out: int  # stored layers 0..n_layers_out-1; the top one is the decoder's usual input
    window_frames: int  # encoder frames of a full window
    manifest_extra: tuple  # ((field, value), ...): decode.json's fields past the job's own, which a resume must match

    def same_store(self, info) -> bool: ...  # a layer store's ``StoreInfo`` was written by this model's encoder

    def language(self, lang: str, decode_as: dict[str, str]) -> str | None: ...  # prompt language, None: none

    def score_language(self, language: str) -> str | None: ...  # the ISO code scoring its text; None: the store's

    def prompt(self, task: str, language: str) -> list[int]: ...

    def search(self, memory, valid, task: str, languages: Sequence[str | None], search: Search) -> tuple: ...

    def text(self, ids: Sequence[int]) -> str: ...

    def windows(self, audio: np.ndarray, long_audio: str) -> list: ...  # caps.reads_padding

    def collate(self, inputs: Sequence) -> Any: ...  # caps.reads_padding

    def memories(self, batch, variants: Sequence[tuple[int, bool]]) -> Iterator[tuple]: ...  # caps.reads_padding

    def final_norm(self, states) -> Any: ...  # caps.ln_post

    def ctc(self, states: np.ndarray, lengths: np.ndarray, layer: int, ln_post: bool) -> tuple: ...  # caps.ctc


# -- aligners (align) ------------------------------------------------------------------------------------------------
# The registry's ``Family.cross_attention`` loader, ``(source, dtype=)``, returns an ``Aligner``: the align job asks it
# and never a family's name or loader. Whisper implements it (``engine/models/whisper/aligner.py``).


class Aligner(Protocol):
    """A model whose decoder's cross-attention heads time words, as the align job uses it.

    States are the store's layer ``top`` (the decoder's input), ``f[batch, windows * window_frames, embed]``: an
    utterance's windows concatenated along frames, so that one alignment places every word of it. A store keeps the
    valid frames only: ``fill`` puts what the decoder reads past them (a silent window's states: Whisper's decoder
    attends to the padding of the last window). A prompt language is ``language(lang)``'s; None means the model has
    no token for the store's language, whose utterances align skips. Words have ``text`` (as the tokenizer spells
    them, leading space and punctuation included), ``start`` and ``end`` (seconds from the utterance's start) and
    ``probability`` (the mean of the word's tokens under teacher forcing).
    """

    name: str  # the checkpoint's name, as the store records it
    sha256: str  # of its weight files, as the store records it
    top: int  # the stored layer the decoder reads
    window_frames: int  # encoder frames of a full window

    def same_store(self, info) -> bool: ...  # a layer store's ``StoreInfo`` was written by this model's encoder

    def language(self, lang: str) -> str | None: ...  # the prompt language of a store language; None: no token

    def tokens(self, text: str) -> list[int]: ...  # a transcript's text tokens (no prompt, no end-of-text)

    def fill(self, states: np.ndarray, valid: np.ndarray, frames: int) -> np.ndarray: ...  # f[batch, frames, embed]

    def transcribe(self, states: np.ndarray, valid: np.ndarray, language: str) -> list[list[int]]: ...  # greedy

    def fits(self, tokens: Sequence[int], language: str) -> bool: ...  # prompt + tokens + end fit the text context

    def align(
        self, states: np.ndarray, valid: np.ndarray, tokens: Sequence[list[int]], languages: Sequence[str], width: int
    ) -> list[list]: ...  # the words of each utterance; ``width``: the median filter's, over frames


# -- trainers (finetune) ---------------------------------------------------------------------------------------------
# The registry's ``Family.trainer`` loader, ``(source, dtype=) -> Trainer`` (``source``: a folder, hub id, or the
# family's model already loaded), gives what the finetune job needs of a decoder it trains on a layer store's top
# layer, the encoder never running: finetune asks it and never a family's name or modules.

SILENCE_FILL = "silence_fill_approximate"  # frames past an utterance: a silent window's states (the decoder reads them)
MASKED = "masked"  # frames past an utterance are masked out: the decoder reads the valid frames only, as from audio


class TrainGraph(Protocol):
    """The static half of a decoder split for training (``Trainer.split``): a jit's static argument, so hashable and
    equal by value (a frozen dataclass of an ``nnx.GraphDef``)."""

    def logits(self, params: dict, tokens, memory, valid) -> Any:
        """Teacher forcing: ``params`` the flat dict (in the dtype the caller cast them to), ``tokens i32[batch, t]``,
        ``memory f[batch, frame, embed]`` (``Trainer.memory``), ``valid i32[batch]`` its valid frames ->
        ``f[batch, t, vocab]``, position ``i`` scoring the token after ``tokens[:, :i+1]``."""
        ...


class Trainer(Protocol):
    """A model's text decoder as the finetune job trains it (``engine.pipelines.finetune``).

    Parameters travel as one flat ``{name: array}`` dict in the family's own names (``split``); ``groups`` maps each
    ``--trainable`` group to a regular expression that full-matches the names it selects. Memory: ``memory`` turns a
    store's top-layer states (valid frames only, ``n_frames`` of each) into the decoder's input, filling the frames
    past each utterance as the family's decoder needs (``padding``). Languages: the jobs speak store codes
    (``engine.languages``: ``en_us``, ``eng_Latn``), which ``language(code)`` maps to the family's own prompt
    language (LanguageError where it has none); ``prompt(task, language)`` is the family's prompt with that
    language's token and the task's (``TASKS``), the tokens before the text.
    """

    name: str  # the checkpoint's name, as the store records it
    padding: str  # how ``memory`` fills the frames past an utterance (``SILENCE_FILL``, ``MASKED``): config.json's
    padding_note: str  # the same in words, for the job's report
    eot: int  # the end-of-text token, the last label of every text
    n_text_ctx: int  # token positions the decoder takes (prompt, text and end-of-text)
    memory_frames: int  # frames of a ``memory`` row (one window): longer utterances are skipped
    groups: dict[str, str]  # --trainable group -> regex on the parameter names

    @property
    def store_dims(self) -> dict: ...  # the dims record a layer store of this model's encoder holds (compared whole)

    def language(self, code: str) -> str: ...  # a store code's prompt language (LanguageError where there is none)

    def prompt(self, task: str, language: str) -> list[int]: ...

    def tokens(self, text: str) -> list[int]: ...  # a target text's tokens, as the decoder emits them after a prompt

    def memory(self, states: np.ndarray, n_frames: np.ndarray) -> np.ndarray: ...  # f32[n, memory_frames, embed]

    def split(self) -> tuple[TrainGraph, dict]: ...  # the decoder's graph and its parameters as a flat dict

    def tuned(self, params: dict) -> Trainer: ...  # a copy whose decoder has ``params`` (a subset: the rest kept)

    def greedy(self, memory, valid, prompt: Sequence[int], max_new_tokens: int) -> list[str]: ...  # evaluation

    def export_problem(self) -> str | None: ...  # what would make ``export`` fail and the fix, before training

    def export(self, folder) -> None: ...  # the tuned model, in the layout its family's loader reads
