"""OWSM checkpoints in ESPnet's published layout: local folders and hub ids (``espnet/owsm_v3.1_ebf_base``).

A model repository as ESPnet uploads it (``espnet_model_zoo`` / ``run.sh --stage 15``) mirrors the recipe folder::

    meta.yaml                                  yaml_files.s2t_train_config, files.s2t_model_file (paths below)
    exp/s2t_train_.../config.yaml              the training config: frontend, encoder, decoder, token_list, bpemodel
    exp/s2t_train_.../valid...ave.pth          the ESPnetS2TModel state dict, read with torch.load(weights_only=True)
                                               (or the same tensors as a .safetensors file, read with NumPy)
    exp/s2t_stats_.../train/feats_stats.npz    global MVN statistics (config.yaml's normalize_conf.stats_file)
    data/token_list/bpe_.../bpe.model          SentencePiece model (config.yaml's bpemodel); tokens.txt beside it

Paths inside ``config.yaml`` are relative to the repository root. Without ``meta.yaml``, the folder must hold exactly
one ``config.yaml`` with one ``.pth`` (or ``.safetensors``) beside it. A ``.safetensors`` weights file holds the
``.pth``'s tensors by the same names (what ``babelgrid random-model --kind owsm`` writes) and needs no torch.
``token_list`` is the list itself (as OWSM's configs hold it) or a ``tokens.txt`` path. The state dict must hold
every tensor ``encoder_shapes`` and ``decoder_shapes`` (OWSM-CTC: ``ctc_model.ctc_shapes``) name, with those shapes;
the frontend's mel matrix and the normaliser's buffers are recognised and left unread (babelgrid computes both from
``feats_stats.npz`` and librosa, as ESPnet builds them); anything else fails naming it.

OWLS (``espnet/owls_*``) has this layout too; its weights are bfloat16. One step of an OWLS training run
(``espnet/owls_1B_180K_intermediates@step=12``) is read by ``intermediates``: DeepSpeed's file for the weights, the
final model's repository for the rest.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import ml_dtypes
import numpy as np
import yaml

from engine.errors import CheckpointError
from engine.models.common.deepspeed import read_model_states
from engine.models.common.io import file_sha256, folder_or_hub, read_torch_state_dict
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state, read_safetensors
from engine.models.owsm.config import OwsmConfig, config_from_espnet
from engine.models.owsm.ctc_model import ctc_shapes
from engine.models.owsm.decoder import decoder_shapes
from engine.models.owsm.features import Stats, read_stats
from engine.models.owsm.intermediates import config_root, model_states, training_step
from engine.models.owsm.model import encoder_shapes

_UNREAD = re.compile(r"frontend\..*|normalize\.(mean|std)|specaug\..*")
# ESPnet 202611 names the subsampling's output projection ``embed.out`` (earlier: ``embed.out.0`` inside a Sequential
# with the positional encoding) and loads either; the published OWSM checkpoints hold the older names.
_NEW_SUBSAMPLING_OUT = re.compile(r"(encoder\.embed\.out)\.(weight|bias)")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))  # OWLS's are bfloat16
WEIGHT_SUFFIXES = (".pth", ".safetensors")  # ESPnet's torch.save file, or the same tensors as safetensors


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A loaded OWSM checkpoint; equality ignores the arrays (compare ``sha256``)."""

    name: str  # the hub id as given, or the folder's name
    config: OwsmConfig
    stats: Stats = dataclasses.field(repr=False, compare=False)
    state_dict: Mapping[str, np.ndarray] = dataclasses.field(repr=False, compare=False)  # ESPnet names
    sha256: str  # hex, of the .pth (a training step's: of its mp_rank_00_model_states.pt)
    path: pathlib.Path  # the repository root (a training step's: the final model's, which holds its config)
    bpemodel: pathlib.Path | None  # the SentencePiece model, when config.yaml names one that exists
    step: int | None = None  # the training step of an intermediates repository (``intermediates``); None: a model


def load_checkpoint(source: str | os.PathLike, *, dtype=None) -> Checkpoint:
    """Read an ESPnet OWSM folder or a hub id ``org/name[@revision]``, or one training step of an intermediates
    repository (``intermediates``: ``org/name_intermediates@step=N``); ``dtype`` casts the weights (None keeps)."""
    step = training_step(source)
    if step is not None:
        path, name, read = config_root(step, _download_config), step.name, read_model_states
        config_path, weights = config_file(path), model_states(step)
    else:
        path, name = folder_or_hub(source, download, "espnet/owsm_v3.1_ebf_base")
        (config_path, weights), read = find_files(path), read_weights
    conf = _read_yaml(config_path)
    config = config_from_espnet(conf, _token_list(conf, path, config_path), str(config_path))
    stats_file = (conf.get("normalize_conf") or {}).get("stats_file")
    if not stats_file:
        raise CheckpointError(f"{config_path}: normalize_conf.stats_file is not set; OWSM normalises globally")
    stats = read_stats(_inside(path, stats_file, config_path, "normalize_conf.stats_file"), config.n_mels)
    sd = _check(read(weights), config, str(weights))
    if dtype is not None:
        sd = {k: v if v.dtype == np.dtype(dtype) else v.astype(dtype) for k, v in sd.items()}
    bpe = conf.get("bpemodel")
    bpemodel = path / bpe if isinstance(bpe, str) and (path / bpe).is_file() else None
    sha256 = file_sha256([weights])
    return Checkpoint(name, config, stats, sd, sha256, path, bpemodel, None if step is None else step.step)


def read_weights(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The state dict of a ``.safetensors`` file (NumPy, memory-mapped), else of ESPnet's ``.pth`` (torch)."""
    return read_safetensors(path) if path.suffix == ".safetensors" else read_torch_state_dict(path)


def find_files(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """``(config.yaml, weights)`` of a repo: from ``meta.yaml``, else the one config with a ``.pth`` (or
    ``.safetensors``) beside it."""
    if not root.is_dir():
        raise CheckpointError(f"checkpoint '{root}' is not a folder; pass the model repository's root")
    meta = root / "meta.yaml"
    if meta.is_file():
        m = _read_yaml(meta)
        config = (m.get("yaml_files") or {}).get("s2t_train_config")
        weights = (m.get("files") or {}).get("s2t_model_file")
        if not config or not weights:
            raise CheckpointError(
                f"'{meta}' lacks yaml_files.s2t_train_config or files.s2t_model_file; is it an S2T (OWSM) model?"
            )
        return _inside(root, config, meta, "s2t_train_config"), _inside(root, weights, meta, "s2t_model_file")
    pairs = [(c, sorted(w for s in WEIGHT_SUFFIXES for w in c.parent.glob(f"*{s}"))) for c in
             sorted(root.rglob("config.yaml"))]  # fmt: skip
    pairs = [(c, w) for c, w in pairs if w]
    if len(pairs) != 1 or len(pairs[0][1]) != 1:
        raise CheckpointError(
            f"checkpoint '{root}' has no meta.yaml and {len(pairs)} folders with config.yaml and a .pth or "
            f".safetensors ({', '.join(str(c.parent.relative_to(root)) for c, _ in pairs) or 'none'}); it needs "
            "exactly one, with one weights file, or a meta.yaml naming them"
        )
    return pairs[0][0], pairs[0][1][0]


def config_file(root: pathlib.Path) -> pathlib.Path:
    """The training ``config.yaml`` of a repo, whatever weights it holds or lacks: ``meta.yaml``'s, else its one
    ``config.yaml``."""
    meta = root / "meta.yaml"
    if meta.is_file():
        config = (_read_yaml(meta).get("yaml_files") or {}).get("s2t_train_config")
        if not config:
            raise CheckpointError(f"'{meta}' lacks yaml_files.s2t_train_config; is it an S2T (OWSM) model?")
        return _inside(root, config, meta, "s2t_train_config")
    configs = sorted(root.rglob("config.yaml"))
    if len(configs) != 1:
        raise CheckpointError(
            f"'{root}' has no meta.yaml and {len(configs)} config.yaml files; it needs one, or a meta.yaml naming it"
        )
    return configs[0]


def _inside(root: pathlib.Path, relative: str, named_in: pathlib.Path, key: str) -> pathlib.Path:
    path = root / relative
    if not path.is_file():
        raise CheckpointError(f"'{named_in}' names {key} '{relative}', which is not in '{root}'; copy the whole repo")
    return path


def _read_yaml(path: pathlib.Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise CheckpointError(f"'{path}' is not valid YAML ({str(e).splitlines()[0]}); download it again") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"'{path}' holds a YAML {type(out).__name__}, not a mapping")
    return out


def _token_list(conf: Mapping, root: pathlib.Path, config_path: pathlib.Path) -> list[str]:
    tokens = conf.get("token_list")
    if isinstance(tokens, str):
        path = _inside(root, tokens, config_path, "token_list")
        tokens = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
    if not isinstance(tokens, list) or not tokens:
        raise CheckpointError(f"'{config_path}': token_list is neither a list of tokens nor a tokens.txt path")
    return [str(t) for t in tokens]


def _check(stored: Mapping[str, np.ndarray], config: OwsmConfig, source: str) -> dict[str, np.ndarray]:
    what = f"an OWSM model of {config.n_layer} encoder and {config.n_dec_layer} decoder blocks"
    check_layer_claim(stored, "encoder.encoders.", config.n_layer, "encoder block count", source)
    if config.ctc is None:
        check_layer_claim(stored, "decoder.decoders.", config.n_dec_layer, "decoder block count", source)
        heads = decoder_shapes(config)
    else:
        what = f"an OWSM-CTC model of {config.n_layer} encoder blocks"
        check_layer_claim(stored, "prompt_encoder.encoders.", config.ctc.prompt_layers, "prompt block count", source)
        heads = ctc_shapes(config)
    return checked_state(
        stored, encoder_shapes(config) | heads, source=source, what=what, unread=_UNREAD,
        config_file="config.yaml", floats=_FLOATS, local=lambda name: _NEW_SUBSAMPLING_OUT.sub(r"\1.0.\2", name),
    )  # fmt: skip


# --- hub --------------------------------------------------------------------------------------------


def download(repo_id: str, revision: str | None, *, weights: bool = True) -> pathlib.Path:
    """Local copy of a hub repository (``snapshot_download``), from the cache or the hub; a clear error offline.
    ``weights`` False: without its ``.pth`` and ``.safetensors`` (a training step's config repository)."""
    import huggingface_hub  # lazy: only hub ids need it, and it is slow to import

    source = repo_id + (f"@{revision}" if revision else "")
    ignore = None if weights else [f"*{s}" for s in WEIGHT_SUFFIXES]
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(repo_id, revision=revision, ignore_patterns=ignore))
    except Exception as e:  # connection, not-found and validation errors come as several hub and httpx types
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "HFValidationError"):
            raise CheckpointError(f"Hugging Face repo '{source}' cannot be used ({kind}); check the name") from None
        raise CheckpointError(
            f"the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set) and '{source}' is not in the local cache "
            f"({kind}); download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, e.g. "
            f"load('/path/to/{repo_id.rpartition('/')[2]}'); {random_model_hint(_random_kind(repo_id))}"
        ) from None


def _download_config(repo_id: str, revision: str | None) -> pathlib.Path:
    return download(repo_id, revision, weights=False)


def _random_kind(repo_id: str) -> str:
    """The ``random-model`` kind whose layout a hub id's model has (POWSM, OWSM-CTC, OWLS, else v3.1's)."""
    name = repo_id.lower()
    kinds = (("powsm", "powsm"), ("owsm_ctc", "owsm-ctc"), ("owls", "owls"))
    return next((kind for part, kind in kinds if part in name), "owsm")
