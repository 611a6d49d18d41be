"""The layer store's format, version ``FORMAT_VERSION``: names, array specs, manifest and utterance table.

``engine.stores.layers`` writes and opens stores with these pieces; ``docs/store.md`` describes the format for
analysts::

    OUT/manifest.json               StoreInfo + creation info; written once, never rewritten
    OUT/languages/<lang>.json       per-language index: one small key per language, written once
    OUT/<lang>/utterances.parquet   one row per utterance index (UtteranceRow)
    OUT/<lang>/states/              zarr3 f[layer, utterance, frame, embed]: one shard per utterance,
                                    inside it one inner chunk per layer
    OUT/<lang>/lengths/             zarr3 i32[utterance]: valid frames of each utterance, -1 = not done

Every chunk carries a crc32c digest and every Parquet page a CRC (version 2; ``engine.stores.integrity``).

``OUT`` is any TensorStore kvstore location: a local path, ``file://``, ``gs://``, ``s3://``, ``memory://``. Keys
are written with ``ts.KvStore`` so that one code path serves every backend.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import re
import socket
import sys

import numpy as np
import tensorstore as ts

from engine.axes import EMBED, FRAME, LAYER, UTTERANCE
from engine.data.audio import LONG_AUDIO_MODES
from engine.dtypes import DTYPES as ALL_DTYPES
from engine.errors import StoreError
from engine.stores.integrity import CHECKED_READS, CRC32C, warn_unchecked
from engine.stores.records import where_instead

# 2: crc32c on every chunk, page CRCs in utterances.parquet; 3: a digest in every JSON object (records.json_bytes) and
# the language roster
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # 1 and 2 read, with one warning naming the checks they lack (integrity.UNCHECKED)
SEALED_VERSION = 3  # from this version on, every JSON object of the store must carry its digest
FORMAT_NAME = "babelgrid-layer-store"
LENGTHS_CHUNK = 256  # utterances per `lengths` chunk: processes write ranges aligned to it
NOT_DONE = -1  # `lengths` fill value: the utterance has no committed states yet
DTYPES = tuple(ALL_DTYPES)  # storage dtypes: every dtype babelgrid names
# What a manifest written before these fields were recorded means: those stores are all Whisper's. Written out here,
# not taken from engine.models.whisper (the stores import no model), because they describe stores already written:
# tests/engine/test_store.py checks they still equal Whisper's own (engine.models.whisper.features).
DEFAULT_FAMILY = "whisper"  # manifests before families were recorded
WHISPER_LAYERS = "0 = conv stem + positions, 1..L = block outputs, L+1 = ln_post output"  # their layer_meaning
FRAME_RATE = 50.0  # their encoder frames per second of audio (20 ms each)
FEATURES = {  # their front end: what turned audio into the encoder's input
    "sample_rate": 16000,
    "n_fft": 400,
    "hop_length": 160,
    "window_samples": 480000,
    "padding": "audio to 30 s, then log-mel (OpenAI / Hugging Face)",
}
FAMILY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a family's name as engine.models.family.FAMILIES spells it
# StoreInfo fields that a run appending to a store must share with it: everything that changes the stored numbers.
INFO_FIELDS = (
    "family",
    "model_name",
    "checkpoint_sha256",
    "dims",
    "layers",
    "dtype",
    "frame_rate",
    "compute_dtype",
    "long_audio",
    "features",
    "layer_meaning",
    "batch_size",
    "matmul_precision",
)
UNRECORDED_FIELDS = ("batch_size", "matmul_precision")  # stores written before them, and other writers, lack them

MANIFEST = "manifest.json"
LANGUAGES_DIR = "languages/"
# Every language created, in one sealed list (version 3): a deleted or lost languages/<lang>.json is then damage the
# readers name, never a language that silently is not there.
ROSTER = "languages.json"
STATES = "states/"
LENGTHS = "lengths/"
UTTERANCES = "utterances.parquet"
# What the encode job could not encode, and why (sealed JSON, per language): {"utterances": [{"utterance", "id",
# "reason", "message"}]}. Rewritten as each work unit ends, so that it names what is skipped now; an entry whose
# utterance is done (a later run encoded it) is stale and ignored by every reader.
SKIPPED = "skipped.json"

# Inner-chunk codecs of `states`: zstd level 1 writes 2.7x (float32) to 3.3x (bfloat16) fewer bytes than raw
# chunks padded to max_frames (padding frames vanish, hidden states shrink a little), wrote fastest or tied, and read
# layers within ~2x of the fastest layout measured; docs/store.md has the table. crc32c last: the digest of the
# bytes as stored, checked before zstd sees them.
STATES_CODECS = (
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd", "configuration": {"level": 1}},
    CRC32C,
)

LANG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_LANGS = ("languages",)


@dataclasses.dataclass(frozen=True)
class StoreDims:
    """What a layer store records of its model's dimensions, one type for every family.

    ``record`` is the manifest's ``dims`` object, kept whole: written back byte for byte, and compared key by key
    when a run appends to the store. A Whisper store records OpenAI's ``ModelDimensions`` fields (``n_audio_layer``
    blocks of width ``n_audio_state``, among others); every other family records ``{n_layers_out, embed, config}``
    (``config``: the family's own, as JSON). The store reads from either what it needs itself: the layer count,
    the width, and the blocks L.
    """

    record: dict
    n_layers_out: int  # layer indices 0..n_layers_out-1
    embed: int  # width of every layer's states
    n_blocks: int  # the model's encoder blocks, L (Whisper's layers 1..L; the others' last layer is L)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.record))

    @classmethod
    def from_dict(cls, d: dict) -> StoreDims:
        """The dims of a store from its record (a manifest's ``dims``, or a model's ``to_dict()``), either layout:
        told apart by ``config``, which only the second holds, so that the family's name decides nothing here.
        KeyError, TypeError or ValueError when a field the record needs is missing or not a positive int."""
        if "config" not in d:  # OpenAI's ModelDimensions, as Whisper's stores have always recorded them
            record = {str(k): _positive(k, v) for k, v in d.items()}
            blocks = record["n_audio_layer"]
            return cls(record, n_layers_out=blocks + 2, embed=record["n_audio_state"], n_blocks=blocks)
        # JSON turns tuples into lists: compare configs as JSON values on both sides.
        layers, embed = _positive("n_layers_out", d["n_layers_out"]), _positive("embed", d["embed"])
        record = {"n_layers_out": layers, "embed": embed, "config": json.loads(json.dumps(d["config"]))}
        return cls(record, n_layers_out=layers, embed=embed, n_blocks=layers - 1)


def _positive(name, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) <= 0:
        raise ValueError(f"dims.{name} must be a positive int, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class StoreInfo:
    """What must match to append to a store: the model, its dimensions, the stored layers and their dtype.

    ``family`` names the model family (``engine.models.family.FAMILIES``); ``dims`` is a ``StoreDims`` (given a
    model's dims record instead, anything with ``to_dict()`` or a dict, the store reads it as one). ``layers``
    indexes the family's layers as ``layer_meaning`` says (Whisper: 0 = conv stem + positions, 1..L = block outputs,
    L+1 = ``ln_post`` output). States are stored in ``layers`` order; ``frame_rate`` is the family's encoder frames
    per second.
    """

    model_name: str
    checkpoint_sha256: str
    dims: StoreDims
    layers: tuple[int, ...]
    dtype: str  # "float32" | "bfloat16" | "float16"
    frame_rate: float = FRAME_RATE  # frames per second
    # Manifests written before these were recorded read as the only defaults those versions' jobs had.
    compute_dtype: str = "float32"  # the model's dtype on the device
    long_audio: str = "window"  # audio over 30 s: "window" (consecutive windows) or "truncate"
    features: dict = dataclasses.field(default_factory=lambda: dict(FEATURES))  # the front end's settings
    family: str = DEFAULT_FAMILY  # manifests before families were recorded are Whisper's
    layer_meaning: str = WHISPER_LAYERS  # what layer 0, 1..L and the last layer are, in words
    # The encode job's windows per encoder step: another batch shape compiles another kernel, whose sums may differ
    # in their last bits, so a store holds one. None: not recorded (stores before it, writers other than encode).
    batch_size: int | None = None
    # The float32 products' precision (--matmul_precision: "highest" or "default", TF32 on NVIDIA GPUs, 1-3% away).
    # None: not recorded, as batch_size.
    matmul_precision: str | None = None

    def __post_init__(self):
        for name in ("model_name", "checkpoint_sha256"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise StoreError(f"StoreInfo.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.family, str) or not FAMILY.fullmatch(self.family):
            raise StoreError(f"StoreInfo.family must name a model family (such as whisper), got {self.family!r}")
        if not isinstance(self.dims, StoreDims):
            record = self.dims if isinstance(self.dims, dict) else getattr(self.dims, "to_dict", lambda: None)()
            if not isinstance(record, dict):
                raise StoreError(f"StoreInfo.dims must be a StoreDims or a model's dims record, got {self.dims!r}")
            try:
                object.__setattr__(self, "dims", StoreDims.from_dict(record))
            except (KeyError, TypeError, ValueError) as e:
                raise StoreError(f"StoreInfo.dims of a {self.family} store lacks or misstates {e}") from None
        layers = tuple(int(i) for i in self.layers)
        top = self.n_layers_out - 1
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0 or layers[-1] > top:
            raise StoreError(
                f"StoreInfo.layers must be increasing, distinct layer indices in 0..{top} ({self.layer_meaning}), "
                f"got {self.layers!r}"
            )
        object.__setattr__(self, "layers", layers)
        for name in ("dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise StoreError(f"StoreInfo.{name} must be one of {', '.join(DTYPES)}, got {getattr(self, name)!r}")
        if self.long_audio not in LONG_AUDIO_MODES:
            raise StoreError(f"StoreInfo.long_audio must be one of {LONG_AUDIO_MODES}, got {self.long_audio!r}")
        if not self.frame_rate > 0:
            raise StoreError(f"StoreInfo.frame_rate must be positive (frames per second), got {self.frame_rate!r}")
        object.__setattr__(self, "frame_rate", float(self.frame_rate))
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise StoreError(f"StoreInfo.batch_size must be a positive int or None, got {self.batch_size!r}")
        if self.matmul_precision is not None and not isinstance(self.matmul_precision, str):
            raise StoreError(f"StoreInfo.matmul_precision must be a string or None, got {self.matmul_precision!r}")

    @property
    def numpy_dtype(self) -> np.dtype:
        return ts.dtype(self.dtype).numpy_dtype

    @property
    def n_layers_out(self) -> int:
        """Layer indices the model has: 0..n_layers_out-1 (a store may hold a subset, ``layers``)."""
        return self.dims.n_layers_out

    @property
    def embed(self) -> int:
        """Width of the stored states."""
        return self.dims.embed

    @property
    def n_blocks(self) -> int:
        """The model's encoder blocks, L (Whisper's layers 1..L; the others' last layer is L)."""
        return self.dims.n_blocks

    def to_dict(self) -> dict:
        return {
            "model_name": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "dims": self.dims.to_dict(),
            "layers": list(self.layers),
            "dtype": self.dtype,
            "frame_rate": self.frame_rate,
            "compute_dtype": self.compute_dtype,
            "long_audio": self.long_audio,
            "features": dict(self.features),
            "family": self.family,
            "layer_meaning": self.layer_meaning,
            "batch_size": self.batch_size,
            "matmul_precision": self.matmul_precision,
        }

    @classmethod
    def from_dict(cls, d: dict) -> StoreInfo:
        family = d.get("family", DEFAULT_FAMILY)
        return cls(
            model_name=d["model_name"],
            checkpoint_sha256=d["checkpoint_sha256"],
            dims=StoreDims.from_dict(d["dims"]),
            layers=tuple(d["layers"]),
            dtype=d["dtype"],
            frame_rate=d.get("frame_rate", FRAME_RATE),
            compute_dtype=d.get("compute_dtype", "float32"),
            long_audio=d.get("long_audio", "window"),
            features=d.get("features", FEATURES),
            family=family,
            layer_meaning=d.get("layer_meaning", WHISPER_LAYERS),
            batch_size=d.get("batch_size"),
            matmul_precision=d.get("matmul_precision"),
        )


def states_spec(kvstore: dict, *, n_layers: int, n_utterances: int, max_frames: int, embed: int, dtype: str) -> dict:
    """TensorStore spec of ``states``: f[layer, utterance, frame, embed], one shard per utterance.

    A shard holds all layers of one utterance, so writing an utterance writes one whole key and reads nothing back;
    inside it each layer is one inner chunk, so reading a layer fetches one byte range per utterance via the shard
    index. Chunk keys use "." separators: one flat folder per language, no folder per utterance.
    """
    return {
        "driver": "zarr3",
        "kvstore": kvstore,
        **CHECKED_READS,
        "metadata": {
            "shape": [n_layers, n_utterances, max_frames, embed],
            "data_type": dtype,
            "fill_value": 0,
            "dimension_names": [LAYER, UTTERANCE, FRAME, EMBED],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [n_layers, 1, max_frames, embed]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [1, 1, max_frames, embed],
                        "codecs": [dict(c) for c in STATES_CODECS],
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            dict(CRC32C),
                        ],
                        "index_location": "end",
                    },
                }
            ],
        },
    }


def lengths_spec(kvstore: dict, *, n_utterances: int) -> dict:
    """TensorStore spec of ``lengths``: i32[utterance], valid frames per utterance, ``NOT_DONE`` (-1) until done."""
    return {
        "driver": "zarr3",
        "kvstore": kvstore,
        "metadata": {
            "shape": [n_utterances],
            "data_type": "int32",
            "fill_value": NOT_DONE,
            "dimension_names": [UTTERANCE],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [LENGTHS_CHUNK]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, dict(CRC32C)],
        },
    }


def is_done(lengths) -> np.ndarray:
    """``bool[utterance]`` from ``i32[utterance]`` lengths: the one definition of an utterance being done (its states
    committed). Not done is ``NOT_DONE`` (-1); a done utterance has at least one frame (``write_utterance`` refuses 0).
    """
    return np.asarray(lengths) >= 0


def check_language_code(lang: str) -> str:
    """``lang`` if it is a safe folder name (letters, digits, ``_``, ``-``), else a StoreError."""
    if not isinstance(lang, str) or not LANG.fullmatch(lang) or lang in RESERVED_LANGS:
        raise StoreError(
            f"language code {lang!r} cannot name a store folder: use 1-64 letters, digits, '_' or '-', starting with "
            f"a letter or digit (no '/', '.', spaces), and not {', '.join(map(repr, RESERVED_LANGS))}"
        )
    return lang


def language_index(lang: str, n_utterances: int, max_frames: int) -> dict:
    """``languages/<lang>.json``: what the key listing a language holds (written by encode, rebuilt by verify)."""
    return {
        "lang": lang,
        "n_utterances": int(n_utterances),
        "max_frames": int(max_frames),
        "states": f"{lang}/{STATES}",
        "lengths": f"{lang}/{LENGTHS}",
        "utterances": f"{lang}/{UTTERANCES}",
    }


def new_manifest(info: StoreInfo, creation: dict | None) -> dict:
    created = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "babelgrid_version": _version("babelgrid"),
        "jax_version": _version("jax"),
        "tensorstore_version": _version("tensorstore"),
        "python_version": sys.version.split()[0],
    }
    created.update(creation or {})
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **info.to_dict(),
        "created": created,
        "layout": {
            "languages": f"{LANGUAGES_DIR}<lang>.json",
            "roster": ROSTER,
            "utterances": f"<lang>/{UTTERANCES}",
            "skipped": f"<lang>/{SKIPPED}",
            "states": f"<lang>/{STATES}",
            "lengths": f"<lang>/{LENGTHS}",
            "axes": {"states": [LAYER, UTTERANCE, FRAME, EMBED], "lengths": [UTTERANCE]},
            "lengths_chunk": LENGTHS_CHUNK,
            "not_done": NOT_DONE,
        },
    }
    try:
        json.dumps(manifest)
    except TypeError as e:
        raise StoreError(f"creation info must be JSON values (str, numbers, lists, dicts): {e}") from None
    return manifest


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def info_from_manifest(manifest: dict, url: str) -> StoreInfo:
    if manifest.get("format") != FORMAT_NAME:
        raise StoreError(
            f"{MANIFEST} in {url!r} is not a babelgrid layer store manifest (format {manifest.get('format')!r})"
            + where_instead(url, FORMAT_NAME, manifest)
        )
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"store {url!r} has format version {version!r}; this babelgrid reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Use the babelgrid version that wrote it, or encode again"
        )
    if version < FORMAT_VERSION:
        warn_unchecked(url, "layer store", version)
    try:
        return StoreInfo.from_dict(manifest)
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"{MANIFEST} in {url!r} is incomplete or damaged ({e!r}); encode again") from None
