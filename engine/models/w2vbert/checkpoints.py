"""w2v-BERT 2.0 and SeamlessM4T v2 speech-encoder checkpoints: local folders and hub ids, read with NumPy.

A folder written by transformers' ``save_pretrained`` holds ``config.json`` and the weights: ``model.safetensors``
first, else sharded safetensors with ``model.safetensors.index.json``, else ``pytorch_model.bin`` (or sharded, with
its index), read only through ``torch.load(weights_only=True)``.

- ``Wav2Vec2BertModel`` (``facebook/w2v-bert-2.0``): the conformer's tensors by their own names.
- ``SeamlessM4Tv2Model`` (``facebook/seamless-m4t-v2-large``): only the ``speech_encoder.*`` tensors are read (the
  prefix dropped); of a sharded checkpoint, only the shards that hold them, and from the hub only those are downloaded.

Both layouts end in one state dict with ``Wav2Vec2BertModel``'s names (``model.state_shapes``). Tensors after the
conformer layers (the adapter, the intermediate feed-forward, the Seamless encoder's final norms, ``masked_spec_embed``
for pre-training) are recognised and left unread (see ``model`` on why they are not stored); any other tensor, a
missing one or a wrong shape fails naming it.

Safetensors files are memory-mapped (``engine.models.common.weights.read_safetensors``) and the shared file
helpers come from ``engine.models.common.io``: format code, not Whisper's, reused rather than copied.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import file_sha256, read_json, read_torch_state_dict, some
from engine.models.common.weights import read_safetensors
from engine.models.w2vbert.config import SEAMLESS_M4T_V2, W2V_BERT, EncoderConfig, config_from_hf
from engine.models.w2vbert.model import state_shapes

# Weight files of a folder, in order of preference: (single file, index of shards, reader).
_WEIGHTS = (
    ("model.safetensors", "model.safetensors.index.json", read_safetensors),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", read_torch_state_dict),
)
_PREFIX = {W2V_BERT: "", SEAMLESS_M4T_V2: "speech_encoder."}
# Tensors of each layout that are not the conformer layers: known, deliberately not read.
_UNREAD = {
    W2V_BERT: re.compile(r"masked_spec_embed|adapter\..*|intermediate_ffn\..*"),
    SEAMLESS_M4T_V2: re.compile(r"encoder\.layer_norm\..*|intermediate_ffn\..*|adapter\..*|inner_layer_norm\..*"),
}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded encoder checkpoint; equality ignores the arrays (compare ``sha256``)."""

    name: str  # the hub id as given, or the folder's name
    config: EncoderConfig
    # Wav2Vec2BertModel names, PyTorch layouts; arrays may be read-only views of a memory-mapped file.
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)
    sha256: str  # hex, of the weight files read, in order (a Seamless checkpoint: the speech encoder's shards)
    path: pathlib.Path


def load_checkpoint(source: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Read a ``Wav2Vec2BertModel`` or ``SeamlessM4Tv2Model`` folder, or a hub id ``org/name[@revision]``.

    ``dtype``: cast the weights to it (e.g. ``np.float32``); ``None`` keeps the stored dtype.
    """
    path = pathlib.Path(source).expanduser()
    if path.exists():
        name = path.resolve().name
    elif isinstance(source, str) and _REPO_ID.fullmatch(source):
        repo_id, _, revision = source.partition("@")
        path, name = download(repo_id, revision or None), source
    else:
        raise CheckpointError(
            f"checkpoint '{source}' is neither a folder nor a Hugging Face repo id like facebook/w2v-bert-2.0"
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(
            f"checkpoint '{path}' is not a folder with config.json; pass the folder save_pretrained wrote "
            "(config.json + model.safetensors)"
        )
    config = config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
    files, sd = read_encoder_weights(path, config)
    if dtype is not None:
        sd = {k: v if v.dtype == np.dtype(dtype) else v.astype(dtype) for k, v in sd.items()}
    return Checkpoint(name=name, config=config, state_dict=sd, sha256=file_sha256(files), path=path)


def read_encoder_weights(folder: pathlib.Path, config: EncoderConfig) -> tuple[list[pathlib.Path], dict]:
    """The weight files read and the encoder's state dict (``model.state_shapes`` names), checked."""
    prefix = _PREFIX[config.family]
    files, read = _weight_files(folder, prefix)
    stored = {}
    for f in files:
        stored.update({k: v for k, v in read(f).items() if k.startswith(prefix)})
    return files, _check(stored, config, str(folder))


def _weight_files(folder: pathlib.Path, prefix: str):
    """The files holding tensors named ``prefix*`` in the preferred format, and that format's reader."""
    for single, index, read in _WEIGHTS:
        if (folder / single).is_file():
            return [folder / single], read
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"'{folder / index}' has no weight_map; download it again")
            # Only the shards that hold the encoder: a Seamless checkpoint's text and speech-unit weights stay unread.
            files = [folder / f for f in sorted({f for k, f in weight_map.items() if k.startswith(prefix)})]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"checkpoint dir '{folder}' lacks shards {some(missing)} listed in {index}")
            return files, read
    raise CheckpointError(
        f"checkpoint dir '{folder}' has config.json but none of "
        f"{', '.join(name for pair in _WEIGHTS for name in pair[:2])}; copy the weights too"
    )


def _check(stored: Mapping[str, np.ndarray], config: EncoderConfig, source: str) -> dict[str, np.ndarray]:
    prefix = _PREFIX[config.family]
    shapes = state_shapes(config)
    sd, unknown = {}, []
    for stored_name, value in stored.items():
        name = stored_name.removeprefix(prefix)
        if name in shapes:
            sd[name] = np.asarray(value)
        elif not _UNREAD[config.family].fullmatch(name):
            unknown.append(stored_name)
    if unknown:
        raise CheckpointError(
            f"checkpoint '{source}' has tensors a {config.family} encoder of {config.n_layer} layers does not: "
            f"{some(unknown)}; is config.json the one saved with these weights?"
        )
    missing = [prefix + k for k in shapes if k not in sd]
    if missing:
        raise CheckpointError(
            f"checkpoint '{source}' lacks {len(missing)} tensors its config.json ({config.family}, "
            f"{config.n_layer} layers) requires: {some(missing)}"
        )
    for k, want in shapes.items():
        if tuple(sd[k].shape) != want:
            raise CheckpointError(
                f"checkpoint '{source}': tensor '{prefix}{k}' has shape {tuple(sd[k].shape)}, but its config.json "
                f"requires {want}"
            )
        if sd[k].dtype not in _FLOATS:
            raise CheckpointError(
                f"checkpoint '{source}': tensor '{prefix}{k}' is {sd[k].dtype}; weights must be float32, float16 or "
                "bfloat16"
            )
    return sd


# --- hub --------------------------------------------------------------------------------------------


def download(repo_id: str, revision: str | None) -> pathlib.Path:
    """Local folder of a hub repo's config and encoder weights, from the cache or the hub.

    The config and the shard indexes come first; with an index, only the shards holding the encoder follow (for
    ``facebook/seamless-m4t-v2-large``: its speech encoder's, not the text and speech-unit models'). Without one,
    ``model.safetensors``, and ``pytorch_model.bin`` only when there is no safetensors file.
    """
    import huggingface_hub  # lazy: only hub ids need it, and it is slow to import

    source = repo_id + (f"@{revision}" if revision else "")
    local = (
        f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, e.g. "
        "load('/path/to/w2v-bert-2.0') with config.json + model.safetensors"
    )

    def get(patterns: list[str]) -> pathlib.Path:
        try:
            return pathlib.Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        except Exception as e:  # connection, not-found and validation errors come as several hub and httpx types
            kind = type(e).__name__
            if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "HFValidationError"):
                raise CheckpointError(
                    f"Hugging Face repo '{source}' cannot be used ({kind}); check the name, or log in with "
                    "`hf auth login` for gated models"
                ) from None
            if _hub_offline():
                raise CheckpointError(
                    f"HF_HUB_OFFLINE is set and '{source}' is not in the local Hugging Face cache; unset "
                    f"HF_HUB_OFFLINE, or {local}"
                ) from None
            raise CheckpointError(
                f"the Hugging Face hub is unreachable and '{source}' is not in the local cache "
                f"({kind}: {str(e).splitlines()[0] if str(e) else ''}); {local}"
            ) from None

    folder = get(["config.json", *(index for _, index, _ in _WEIGHTS)])
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"Hugging Face repo '{source}' has no config.json; is it a transformers checkpoint?")
    config = config_from_hf(read_json(folder / "config.json"), f"{source}: config.json")
    prefix = _PREFIX[config.family]
    for single, index, _ in _WEIGHTS:
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map") or {}
            shards = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
            return get(["config.json", index, *shards])
        folder = get(["config.json", single])
        if (folder / single).is_file():
            return folder
    return folder


def _hub_offline() -> bool:
    from huggingface_hub import constants  # lazy: as in download

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
