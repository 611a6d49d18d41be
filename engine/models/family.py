"""One interface for every model family: what the encode pipeline and the stores need of a speech encoder.

A family is one registry entry (``FAMILIES``): its name, the ``model_type`` values of the ``config.json`` it reads (or,
for a layout without one, the function that recognises it: OWSM's ESPnet folders), the heads it offers, and the
function that loads a checkpoint as an ``Encoder``. Adding a family means adding its ``encoder.py`` and one entry here.

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
  counts its own matmuls in its ``cost.py``; Whisper's is ``engine.models.whisper.cost``'s 30 s window model).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from engine.errors import CheckpointError

DECODER = "decoder"  # a text decoder: decode (transcripts per layer) and finetune
CROSS_ATTENTION = "cross-attention"  # a decoder's cross-attention heads: align (word timestamps by DTW)
CTC = "ctc"  # a CTC head (lm_head): decode as the per-layer logit lens
WINDOW_SECONDS = 30  # every family encodes audio in windows of at most this many seconds


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

    @property
    def flops(self) -> float:
        return self.front + self.n_layers * self.layer


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


@dataclasses.dataclass(frozen=True)
class Family:
    """One registry entry: a family's name, the ``config.json`` model types it reads, its heads and its loader."""

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this family loads
    loader: str  # "module:function", called as function(source, adapter=, dtype=) -> Encoder
    heads: frozenset[str]  # the heads every checkpoint of the family has (CTC: only *ForCTC ones, see Encoder.heads)
    layer_meaning: str
    hub_ids: tuple[str, ...] = ()  # examples, for the docs and messages
    layout: str = ""  # "module:function" (source -> bool): recognises a layout with no config.json (ESPnet's)

    def load(self, source, *, adapter: str | None = None, dtype=None) -> Encoder:
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(source, adapter=adapter, dtype=dtype)


WHISPER_LAYERS = "0 = conv stem + positions, 1..L = block outputs, L+1 = ln_post output"
WAV2VEC2_LAYERS = "transformers' hidden_states: 0 = input to the first layer, k = output of layer k (1..L)"
W2VBERT_LAYERS = "0 = projected features, k = output of conformer block k (1..L); the adapter output is not stored"
OWSM_LAYERS = "0 = conv2d subsampling + positions, 1..L = E-Branchformer block outputs, L+1 = after_norm output"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "whisper", ("whisper",), "engine.models.whisper.encoder:load", frozenset({DECODER, CROSS_ATTENTION}),
            WHISPER_LAYERS, ("openai/whisper-base", "openai/whisper-large-v3"),
        ),
        Family(
            "wav2vec2", ("wav2vec2", "hubert"), "engine.models.wav2vec2.encoder:load", frozenset(), WAV2VEC2_LAYERS,
            ("facebook/wav2vec2-xls-r-300m", "facebook/mms-1b-all", "facebook/hubert-large-ll60k"),
        ),
        Family(
            "w2vbert", ("wav2vec2-bert", "seamless_m4t_v2"), "engine.models.w2vbert.encoder:load", frozenset(),
            W2VBERT_LAYERS, ("facebook/w2v-bert-2.0", "facebook/seamless-m4t-v2-large"),
        ),
        Family(
            "owsm", (), "engine.models.owsm.encoder:load", frozenset({DECODER, CTC}), OWSM_LAYERS,
            ("espnet/owsm_v3.1_ebf_base", "espnet/owsm_v3.1_ebf_small", "espnet/owsm_v3.1_ebf"),
            layout="engine.models.owsm.layout:is_espnet_s2t",
        ),
    )
}  # fmt: skip
DEFAULT_FAMILY = "whisper"  # stores written before families were recorded, and sources without a model_type


def _call(target: str, *args):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(*args)


def family_of_model_type(model_type: str, source) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise CheckpointError(
        f"model {str(source)!r} has model_type {model_type!r} in its config.json, which no babelgrid family loads; "
        f"supported model types: {', '.join(known)} (BUILD.md#models)"
    )


def detect_family(source: str | os.PathLike | None) -> Family:
    """The family of a checkpoint, from its ``config.json`` ``model_type`` without loading weights.

    Whisper's every layout (HF, OpenAI ``.pt``, CTranslate2, the packaged default) reads as Whisper: OpenAI files and
    CTranslate2 folders carry no ``model_type``. A source without ``config.json`` is first offered to the families
    that recognise a layout of their own (``Family.layout``: OWSM's ESPnet repositories). A hub id is looked up in the
    local hub cache only (a cached ``config.json``); an id not cached there is taken for Whisper, as babelgrid always
    did, unless a layout claims it.
    """
    if source is None:
        return FAMILIES[DEFAULT_FAMILY]
    config = _config_json(source)
    if config is None:
        for family in FAMILIES.values():
            if family.layout and _call(family.layout, source):
                return family
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        return FAMILIES[DEFAULT_FAMILY]
    return family_of_model_type(str(model_type), source)


def _config_json(source) -> dict | None:
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        file = path / "config.json"
    elif path.exists():
        return None  # a file: OpenAI .pt
    else:
        file = _cached_hub_config(str(source))
    if file is None or not pathlib.Path(file).is_file():
        return None
    try:
        return json.loads(pathlib.Path(file).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"config.json of model {str(source)!r} cannot be read ({e}); restore it") from None


def _cached_hub_config(repo: str) -> str | None:
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
    except Exception:  # noqa: BLE001 - no cache or a malformed id: not a family we can tell, so Whisper as before
        return None
    return found if isinstance(found, str) else None


def load_encoder(source, *, adapter: str | None = None, dtype=None) -> Encoder:
    """Load ``source`` (folder, file or hub id) with its family's loader; ``adapter``: an MMS language."""
    family = detect_family(source)
    if adapter is not None and family.name != "wav2vec2":
        raise CheckpointError(
            f"--adapter {adapter!r} loads an MMS language adapter, but model {str(source)!r} is a {family.name} "
            "model; adapters exist only for wav2vec2-family models (facebook/mms-1b-all)"
        )
    return family.load(source, adapter=adapter, dtype=dtype)


def require_head(source, head: str, job: str, hint: str = "") -> Family:
    """The family of ``source`` if it has ``head``, else a CheckpointError naming the model and what it lacks,
    raised before any weight is read."""
    family = detect_family(source)
    if head in family.heads or (head == CTC and _has_ctc_head(source)):
        return family
    name = "the packaged whisper-base" if source is None else repr(str(source))
    raise CheckpointError(
        f"{job} needs a model with a {head} head; model {name} is a {family.name} model without one. {hint}".rstrip()
    )


def refuse_without_head(job: str, head: str, source, store_info=None, hint: str = "") -> None:
    """Refuses ``job`` at once, before any weight is read or output written, when the store's model (``store_info``:
    a layer store's ``StoreInfo``) or the model given (``source``) lacks ``head``, naming the model and what it
    lacks; ``hint`` says what to do instead."""
    if store_info is not None and head not in FAMILIES[store_info.family].heads:
        raise CheckpointError(
            f"{job} needs a model with a {head} head; the layer store was written by {store_info.model_name!r}, a "
            f"{store_info.family} model without one. {hint}".rstrip()
        )
    require_head(source, head, job, hint)


def _has_ctc_head(source) -> bool:
    """Whether a wav2vec2-family config names a *ForCTC architecture (the CTC head's weights come with it). No model
    given (``None``: the packaged whisper-base) has none."""
    config = (_config_json(source) if source is not None else None) or {}
    return any(str(a).endswith("ForCTC") for a in config.get("architectures") or ())


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
