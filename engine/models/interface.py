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
  records and compares), ``features`` (the front end's settings), ``name`` and ``sha256`` of the checkpoint, and
  ``heads``: the optional heads (``DECODER``, ``CROSS_ATTENTION``, ``CTC``);
- ``cost(samples)``: the ``EncoderCost`` of one window of ``samples`` samples, for ``encode --plan`` (each family
  counts its own matmuls in its ``cost.py``; Whisper's is ``engine.models.whisper.cost``'s 30 s window model);
- ``languages_without_token(langs)``: the store languages its decoder has no language token for (encode warns of
  them: decode and align skip them unless told which token to use); none for a family without such a decoder.

A model with a CTC head offers decode's per-layer logit lens as a ``CTCLens`` (``ctc_lens()`` of the model the
registry's ``ctc=`` loader returns): the head on one layer's states and the text of the frames' best ids, so that the
decode job reads no family's specifics.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

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
    heads: frozenset[str]
    features: dict

    @property
    def store_dims(self): ...

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]: ...

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]: ...

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, ...]: ...

    def sharded(self, mesh, layers: Sequence[int], out_dtype) -> Callable: ...

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


class LoadedEncoder:
    """What an ``Encoder`` reads off its loaded model the same way in every family: a dataclass encoder with a
    ``loaded`` field (``checkpoint.name``, ``checkpoint.sha256``, ``config.width``, ``config.to_dict()``,
    ``n_layers_out``, ``seconds_per_frame``) inherits these; a family that stores something else overrides them."""

    loaded: Any

    @property
    def name(self) -> str:
        return self.loaded.checkpoint.name

    @property
    def sha256(self) -> str:
        return self.loaded.checkpoint.sha256

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
