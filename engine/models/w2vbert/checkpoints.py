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

import numpy as np

from engine.models.common.io import SAVE_PRETRAINED, file_sha256, folder_or_hub, read_config
from engine.models.common.prefixed import download_prefixed, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.w2vbert.config import SEAMLESS_M4T_V2, W2V_BERT, EncoderConfig, config_from_hf
from engine.models.w2vbert.model import state_shapes

_PREFIX = {W2V_BERT: "", SEAMLESS_M4T_V2: "speech_encoder."}
# Tensors of each layout that are not the conformer layers: known, deliberately not read.
_UNREAD = {
    W2V_BERT: re.compile(r"masked_spec_embed|adapter\..*|intermediate_ffn\..*"),
    SEAMLESS_M4T_V2: re.compile(r"encoder\.layer_norm\..*|intermediate_ffn\..*|adapter\..*|inner_layer_norm\..*"),
}


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
    path, name = folder_or_hub(source, download, "facebook/w2v-bert-2.0")
    config = config_from_hf(read_config(path, SAVE_PRETRAINED), str(path / "config.json"))
    files, sd = read_encoder_weights(path, config)
    if dtype is not None:
        sd = {k: v if v.dtype == np.dtype(dtype) else v.astype(dtype) for k, v in sd.items()}
    return Checkpoint(name=name, config=config, state_dict=sd, sha256=file_sha256(files), path=path)


def read_encoder_weights(folder: pathlib.Path, config: EncoderConfig) -> tuple[list[pathlib.Path], dict]:
    """The weight files read and the encoder's state dict (``model.state_shapes`` names), checked."""
    files, stored = read_prefixed(folder, (_PREFIX[config.family],))
    return files, _check(stored, config, str(folder))


def _check(stored: Mapping[str, np.ndarray], config: EncoderConfig, source: str) -> dict[str, np.ndarray]:
    prefix = _PREFIX[config.family]
    check_layer_claim(stored, "encoder.layers.", config.n_layer, "layer count", source)
    return checked_state(
        stored, state_shapes(config), source=source, what=f"a {config.family} encoder of {config.n_layer} layers",
        local=lambda name: name.removeprefix(prefix), stored_name=lambda k: prefix + k, unread=_UNREAD[config.family],
    )  # fmt: skip


# --- hub --------------------------------------------------------------------------------------------


def download(repo_id: str, revision: str | None) -> pathlib.Path:
    """Local folder of a hub repo's config and encoder weights, from the cache or the hub: for
    ``facebook/seamless-m4t-v2-large`` only the shards of its speech encoder, not the text and speech-unit models'
    (``engine.models.common.prefixed.download_prefixed``)."""

    def prefixes(config: dict, where: str) -> tuple[str]:
        return (_PREFIX[config_from_hf(config, where).family],)

    seamless = "seamless" in repo_id.lower()
    folder = "seamless-m4t-v2-large" if seamless else "w2v-bert-2.0"
    hint = random_model_hint("seamless" if seamless else "w2v-bert")
    local = f"load('/path/to/{folder}') with config.json + model.safetensors; {hint}"
    return download_prefixed(repo_id, revision, prefixes, local)
