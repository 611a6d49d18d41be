"""Training checkpoints as models: one step of an ESPnet intermediates repository (OWLS's
``espnet/owls_1B_180K_intermediates``, 45 steps of the 1B model's training; ``espnet/owls_05B_180K_intermediates``).

Spelling (``--model``):

- ``espnet/owls_1B_180K_intermediates@step=12``: a hub id (a revision goes before the step:
  ``org/name@rev@step=12``); only the step's file is downloaded;
- ``/data/owls_1B_180K_intermediates@step=12``: a local copy of the repository;
- ``/data/owls_1B_180K_intermediates/12``: the step's own folder.

Layout: one folder per saved step, named by its number, holding DeepSpeed's ``mp_rank_00_model_states.pt``, whose
``module`` is the ``ESPnetS2TModel`` state dict (``engine.models.common.deepspeed`` reads it safely). The folder holds
no ``config.yaml``: the architecture, token list, BPE model and global MVN statistics are the final model's, read from
its repository, the name without ``_intermediates`` (``espnet/owls_1B_180K``; a local ``owls_1B_180K`` folder beside
the intermediates folder), unless the intermediates folder itself carries a ``meta.yaml`` or ``config.yaml``. The
final model's weights are not read (nor downloaded). The model's name is ``<repository>@step=<N>`` whichever spelling
named it, and its sha256 is the step file's: a store records both, and its config the step (``training_step``), so a
resume from another step is refused as a resume with another model is.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from engine.errors import CheckpointError
from engine.models.common.deepspeed import MODEL_STATES
from engine.models.common.io import REPO_ID

_STEP = re.compile(r"(?P<root>.+)@step=(?P<step>\d+)")
SUFFIX = "_intermediates"  # the repository's name is the final model's with this suffix


@dataclasses.dataclass(frozen=True)
class TrainingStep:
    """One step of an intermediates repository: where its files are, or will be fetched from."""

    root: str  # the repository: a local folder or a hub id org/name[@revision]
    step: int

    @property
    def local(self) -> bool:
        return pathlib.Path(self.root).expanduser().is_dir()

    @property
    def name(self) -> str:
        """``<repository>@step=<N>``: the folder's name or the hub id (revision kept)."""
        root = pathlib.Path(self.root).expanduser().resolve().name if self.local else self.root
        return f"{root}@step={self.step}"


def training_step(source: str | os.PathLike) -> TrainingStep | None:
    """The training step a ``--model`` names (the module docstring's spellings), else None (a model folder or id)."""
    text = str(source)
    path = pathlib.Path(text).expanduser()
    if path.is_dir() and (path / MODEL_STATES).is_file():
        if not path.name.isdigit():
            raise CheckpointError(
                f"'{path}' holds {MODEL_STATES} in a folder not named by its step number; pass "
                f"'<repository>@step=N' or the step's folder '<repository>/N'"
            )
        return TrainingStep(str(path.parent), int(path.name))
    if path.is_dir() and not (path / "meta.yaml").is_file() and (have := steps(path)):
        raise CheckpointError(
            f"'{path}' holds training steps ({_listed(have)}), not one model: name one, e.g. '{path}@step={have[-1]}'"
        )
    if path.exists():
        return None
    m = _STEP.fullmatch(text)
    if m is None:
        return None
    root = m["root"]
    if not pathlib.Path(root).expanduser().is_dir() and not REPO_ID.fullmatch(root):
        raise CheckpointError(
            f"model '{text}': '{root}' is neither a folder nor a Hugging Face repo id like "
            "espnet/owls_1B_180K_intermediates"
        )
    return TrainingStep(root, int(m["step"]))


def model_states(step: TrainingStep) -> pathlib.Path:
    """The step's ``mp_rank_00_model_states.pt``: in the local folder, else fetched alone from the hub."""
    relative = f"{step.step}/{MODEL_STATES}"
    if step.local:
        root = pathlib.Path(step.root).expanduser()
        file = root / relative
        if not file.is_file():
            raise CheckpointError(f"'{root}' has no step {step.step} ({relative}); its steps: {_listed(steps(root))}")
        return file
    return _hub_file(step.root, relative)


def steps(root: pathlib.Path) -> list[int]:
    """The steps a local intermediates folder holds (folders named by a number with DeepSpeed's file), in order."""
    return sorted(int(p.parent.name) for p in root.glob(f"*/{MODEL_STATES}") if p.parent.name.isdigit())


def _listed(have: list[int]) -> str:
    return ", ".join(map(str, have[:12])) + (" ..." if len(have) > 12 else "") if have else "none"


def config_root(step: TrainingStep, download) -> pathlib.Path:
    """The folder whose ``meta.yaml`` / ``config.yaml`` (and the files they name) describe the step's model: the
    intermediates folder when it has them, else the final model's (the module docstring). ``download(repo_id,
    revision)`` fetches a hub repository without its weights."""
    if step.local:
        root = pathlib.Path(step.root).expanduser().resolve()
        if (root / "meta.yaml").is_file() or any(root.glob("*/config.yaml")) or any(root.glob("*/*/config.yaml")):
            return root
        final = root.with_name(_final_name(root.name, step.root))
        if not final.is_dir():
            raise CheckpointError(
                f"'{root}' holds training steps but no config.yaml, and the final model's folder '{final}' is not "
                f"there: download the final model (hub id {final.name}) beside it, for its config, token list and "
                "statistics"
            )
        return final
    org, _, name = step.root.partition("@")[0].partition("/")
    return download(f"{org}/{_final_name(name, step.root)}", None)  # a revision names the intermediates' commit


def _final_name(name: str, source: str) -> str:
    if not name.lower().endswith(SUFFIX):
        raise CheckpointError(
            f"'{source}' holds training steps but no config.yaml, and its name does not end in {SUFFIX}, which would "
            "name the final model whose config it shares; copy the final model's meta.yaml and exp/ folder into it"
        )
    return name[: -len(SUFFIX)]


def _hub_file(root: str, relative: str) -> pathlib.Path:
    import huggingface_hub  # lazy: only hub ids need it

    repo_id, _, revision = root.partition("@")
    try:
        return pathlib.Path(huggingface_hub.hf_hub_download(repo_id, relative, revision=revision or None))
    except Exception as e:  # connection, not-found and validation errors come as several hub and httpx types
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "HFValidationError"):
            raise CheckpointError(f"Hugging Face repo '{root}' cannot be used ({kind}); check the name") from None
        if kind == "EntryNotFoundError":
            raise CheckpointError(f"'{root}' has no {relative}: no such step; see the repository's folders") from None
        raise CheckpointError(
            f"the Hugging Face hub is unreachable (or HF_HUB_OFFLINE is set) and '{root}/{relative}' is not in the "
            f"local cache ({kind}); download it where the hub is reachable (`hf download {repo_id} --include "
            f"'{relative}'`), with the final model beside it, and pass the folder"
        ) from None
