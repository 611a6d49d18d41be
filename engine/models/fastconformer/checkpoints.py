"""FastConformer checkpoints (Parakeet, Canary): local folders written by transformers' ``save_pretrained`` and hub
ids, read with NumPy.

Only the encoder's tensors are read, under the prefix of the layout (``config.PREFIX``: none for a bare
``ParakeetEncoder``, ``encoder.`` for Parakeet's CTC, TDT and RNN-T models, ``model.encoder.`` for Canary and Cohere
ASR, whose names ``save_pretrained`` writes in NeMo's form and ``cohere.hf_name`` maps back), with
``ParakeetForCTC``'s ``ctc_head.*`` beside them; of a sharded checkpoint only the shards that hold them
(``engine.models.common.prefixed``), and from the hub only those are downloaded. BatchNorm's ``num_batches_tracked``
(a training counter) is recognised and left unread; any other tensor under the prefix, a missing one or a wrong shape
fails naming it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import SAVE_PRETRAINED, file_sha256, folder_or_hub, read_config, read_json
from engine.models.common.prefixed import download_prefixed, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.fastconformer import cohere
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.config import CTC, FastConformerConfig, config_from_hf
from engine.models.fastconformer.model import state_shapes

_UNREAD = re.compile(r".*\.num_batches_tracked")
PREPROCESSOR = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded encoder checkpoint; equality ignores the arrays (compare ``sha256``)."""

    name: str  # the hub id as given, or the folder's name
    config: FastConformerConfig
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # prefix removed
    sha256: str  # hex, of the weight files read, in order
    path: pathlib.Path


def prefixes(config: FastConformerConfig) -> tuple[str, ...]:
    return (config.prefix, "ctc_head.") if config.model_type == CTC else (config.prefix,)


def load_checkpoint(source: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Read a Parakeet or Canary folder, or a hub id ``org/name[@revision]``; ``dtype``: cast the weights to it."""
    path, name = folder_or_hub(source, download, "nvidia/parakeet-ctc-0.6b")
    config = config_from_hf(read_config(path, SAVE_PRETRAINED), str(path / "config.json"))
    check_preprocessor(path, config)
    files, stored = read_prefixed(path, prefixes(config))
    sd = _check(stored, config, str(path))
    if dtype is not None:
        sd = {k: v if v.dtype == np.dtype(dtype) else v.astype(dtype) for k, v in sd.items()}
    return Checkpoint(name=name, config=config, state_dict=sd, sha256=file_sha256(files), path=path)


def check_preprocessor(folder: pathlib.Path, config: FastConformerConfig) -> None:
    """A ``preprocessor_config.json`` beside the weights must describe the features ``features`` computes: the
    extractor's defaults and ``feature_size`` equal to the encoder's mel bins."""
    file = folder / PREPROCESSOR
    if not file.is_file():
        return
    given = read_json(file)
    wrong = {k: given[k] for k, v in feats.EXTRACTOR.items() if k in given and given[k] != v}
    if given.get("feature_size", config.n_mels) != config.n_mels:
        wrong["feature_size"] = given["feature_size"]
    if wrong:
        raise CheckpointError(
            f"'{file}' asks for features babelgrid's FastConformer front end does not compute: {wrong}; it computes "
            f"ParakeetFeatureExtractor's {feats.EXTRACTOR} with feature_size = num_mel_bins = {config.n_mels}"
        )


def _check(stored: Mapping[str, np.ndarray], config: FastConformerConfig, source: str) -> dict[str, np.ndarray]:
    renamed = config.model_type == cohere.COHERE  # NeMo's names, as save_pretrained writes them (or transformers')

    def local(name):
        if renamed:
            return cohere.hf_name(name).removeprefix(config.prefix)
        return name if name.startswith("ctc_head.") else name.removeprefix(config.prefix)

    def stored_name(k):
        if renamed:
            return cohere.stored_name(config.prefix + k)
        return k if k.startswith("ctc_head.") else config.prefix + k

    what = f"a {config.model_type} encoder of {config.n_layer} blocks"
    check_layer_claim(stored, f"{config.prefix}layers.", config.n_layer, "block count", source)
    return checked_state(stored, state_shapes(config), source=source, what=what, local=local, stored_name=stored_name,
                         unread=_UNREAD)  # fmt: skip


def download(repo_id: str, revision: str | None) -> pathlib.Path:
    """Local folder of a hub repo's config and encoder weights (for Canary, the shards of its encoder only)."""

    def prefixes_of(config: dict, where: str) -> tuple[str, ...]:
        return prefixes(config_from_hf(config, where))

    name = repo_id.lower()
    kind, folder = (("canary", "canary-1b-v2") if "canary" in name else
                    ("cohere-asr", "cohere-transcribe-03-2026") if re.search(cohere.HUB_NAMES, name) else
                    ("parakeet", "parakeet-ctc-0.6b"))  # fmt: skip
    local = f"load('/path/to/{folder}') with config.json + model.safetensors; {random_model_hint(kind)}"
    return download_prefixed(repo_id, revision, prefixes_of, local)
