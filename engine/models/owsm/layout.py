"""Whether a model source is ESPnet's S2T layout (OWSM), told from its files alone: no weights read, no JAX.

ESPnet's model repositories carry no ``config.json``; they carry a ``meta.yaml`` naming ``yaml_files.
s2t_train_config`` (what ``espnet_model_zoo`` uploads), or, in a recipe folder, a ``config.yaml`` of an S2T model
(``encoder:`` and ``decoder:`` keys, ``preprocessor: s2t`` or an ``e_branchformer`` encoder; OWSM-CTC's ``model:
espnet_ctc`` with an ``e_branchformer_ctc`` encoder). A hub id is looked up in the local hub cache; an id not cached
there is taken for OWSM when it names an ``espnet/owsm``, ``espnet/powsm`` or ``espnet/owls`` repository (loading it
then downloads it, or says how to). A training step (``intermediates``: ``<repository>@step=N``, or a step's folder
holding DeepSpeed's ``mp_rank_00_model_states.pt``) is ESPnet's too; its loader names what is wrong with it.
"""

from __future__ import annotations

import os
import pathlib

import yaml

from engine.errors import CheckpointError
from engine.models.owsm.intermediates import training_step

MAX_DEPTH = 4  # exp/s2t_train_.../config.yaml sits two folders down; a recipe root one more


def is_espnet_s2t(source: str | os.PathLike) -> bool:
    try:
        if training_step(source) is not None:
            return True
    except CheckpointError:  # a misspelt step: the OWSM loader says what is wrong
        return True
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        return _folder_is_s2t(path)
    if path.exists():
        return False  # a file: not a repository
    repo_id = str(source).partition("@")[0]
    if repo_id.count("/") != 1:
        return False
    meta = _cached(str(source), "meta.yaml")
    if meta is not None:
        return _meta_is_s2t(pathlib.Path(meta))
    return repo_id.lower().startswith(("espnet/owsm", "espnet/powsm", "espnet/owls"))


def _folder_is_s2t(root: pathlib.Path) -> bool:
    if (root / "config.json").is_file():
        return False
    if (root / "meta.yaml").is_file():
        return _meta_is_s2t(root / "meta.yaml")
    for config in sorted(root.rglob("config.yaml")):
        if len(config.relative_to(root).parts) <= MAX_DEPTH and _config_is_s2t(config):
            return True
    return False


def _meta_is_s2t(meta: pathlib.Path) -> bool:
    try:
        m = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(m, dict) and bool((m.get("yaml_files") or {}).get("s2t_train_config"))


def _config_is_s2t(config: pathlib.Path) -> bool:
    """A config.yaml whose top-level keys say S2T; read line by line (OWSM's holds a 50k-token list)."""
    keys = {}
    try:
        with open(config, encoding="utf-8") as f:
            for line in f:
                if line[:1].isalpha() and ":" in line:
                    key, _, value = line.partition(":")
                    keys[key.strip()] = value.strip()
    except (OSError, UnicodeDecodeError):
        return False
    if keys.get("model") == "espnet_ctc":  # OWSM-CTC: no decoder
        return keys.get("encoder") == "e_branchformer_ctc"
    has_model = "encoder" in keys and "decoder" in keys
    return has_model and (keys.get("preprocessor") == "s2t" or keys.get("encoder") == "e_branchformer")


def _cached(repo: str, filename: str) -> str | None:
    repo_id, _, revision = repo.partition("@")
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
    except Exception:  # noqa: BLE001 - no cache or a malformed id: not cached
        return None
    return found if isinstance(found, str) else None
