"""One module of a larger checkpoint: the tensors under some name prefixes, from a folder or the hub, and only the
shards that hold them.

A speech encoder often ships inside a bigger model: SeamlessM4T v2's ``speech_encoder.*`` beside its text and unit
models, a speech LLM's ``audio_tower.*`` and ``multi_modal_projector.*`` beside a 7B language model. ``read_prefixed``
reads a ``save_pretrained`` folder's tensors under the prefixes (safetensors first, memory-mapped; else
``pytorch_model.bin`` through ``torch.load(weights_only=True)``); with a shard index, only the shards that hold them.
``download_prefixed`` fetches a hub repo's config, its index and those shards only.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence

from engine.errors import CheckpointError
from engine.models.common.io import read_json, read_torch_state_dict, some
from engine.models.common.weights import read_safetensors

# Weight files of a folder, in order of preference: (single file, index of shards, reader).
WEIGHTS = (
    ("model.safetensors", "model.safetensors.index.json", read_safetensors),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", read_torch_state_dict),
)


def _held(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def prefixed_files(folder: pathlib.Path, prefixes: Sequence[str]):
    """(the files holding tensors under ``prefixes`` in the preferred format, that format's reader)."""
    for single, index, read in WEIGHTS:
        if (folder / single).is_file():
            return [folder / single], read
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"'{folder / index}' has no weight_map; download it again")
            files = [folder / f for f in sorted({f for k, f in weight_map.items() if _held(k, prefixes)})]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"checkpoint dir '{folder}' lacks shards {some(missing)} listed in {index}")
            return files, read
    raise CheckpointError(
        f"checkpoint dir '{folder}' has config.json but none of "
        f"{', '.join(name for pair in WEIGHTS for name in pair[:2])}; copy the weights too"
    )


def read_prefixed(folder: pathlib.Path, prefixes: Sequence[str]) -> tuple[list[pathlib.Path], dict]:
    """(the weight files read, their tensors under ``prefixes`` by their stored names)."""
    files, read = prefixed_files(folder, prefixes)
    stored = {}
    for f in files:
        stored.update({k: v for k, v in read(f).items() if _held(k, prefixes)})
    return files, stored


def hub_offline() -> bool:
    from huggingface_hub import constants  # lazy: only hub ids need it

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def snapshot(repo_id: str, revision: str | None, local: str, **patterns) -> pathlib.Path:
    """``huggingface_hub.snapshot_download(repo_id, revision=revision, **patterns)`` (``allow_patterns``, from the
    cache or the hub), each failure a one-line ``CheckpointError``: a repo not found, gated or at an unknown revision,
    an id that is not one, HF_HUB_OFFLINE with the files not cached, a hub out of reach. ``local``: how to pass a
    downloaded folder instead, ending the last two."""
    import huggingface_hub  # lazy: only hub ids need it, and it is slow to import

    source = repo_id + (f"@{revision}" if revision else "")
    try:
        return pathlib.Path(huggingface_hub.snapshot_download(repo_id, revision=revision, **patterns))
    except Exception as e:  # connection, not-found and validation errors come as several hub and httpx types
        kind, first = type(e).__name__, (str(e).splitlines() or [""])[0]
        if kind in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"):
            raise CheckpointError(
                f"Hugging Face repo '{source}' was not found or is gated ({kind}); check the name, or log in with "
                "`hf auth login` for private and gated models"
            ) from None
        if kind == "HFValidationError":
            raise CheckpointError(f"'{source}' is not a valid Hugging Face repo id: {first}") from None
        if hub_offline():
            raise CheckpointError(
                f"HF_HUB_OFFLINE is set and '{source}' is not in the local Hugging Face cache; unset HF_HUB_OFFLINE, "
                f"or {local}"
            ) from None
        raise CheckpointError(
            f"the Hugging Face hub is unreachable and '{source}' is not in the local cache ({kind}: {first}); {local}"
        ) from None


def download_prefixed(
    repo_id: str, revision: str | None, prefixes_of: Callable[[dict, str], Sequence[str]], local: str
) -> pathlib.Path:
    """Local folder of a hub repo's ``config.json`` and the weights under the prefixes ``prefixes_of(config,
    where)`` names, from the cache or the hub. The config and the shard indexes come first; with an index, only the
    shards holding those tensors follow; without one, ``model.safetensors``, and ``pytorch_model.bin`` only when there
    is no safetensors file. ``local``: how to pass a downloaded folder instead (for the error messages)."""
    source = repo_id + (f"@{revision}" if revision else "")
    local = f"download it where the hub is reachable (`hf download {repo_id}`) and pass the folder, e.g. {local}"

    def get(patterns: list[str]) -> pathlib.Path:
        return snapshot(repo_id, revision, local, allow_patterns=patterns)

    folder = get(["config.json", *(index for _, index, _ in WEIGHTS)])
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"Hugging Face repo '{source}' has no config.json; is it a transformers checkpoint?")
    prefixes = tuple(prefixes_of(read_json(folder / "config.json"), f"{source}: config.json"))
    for single, index, _ in WEIGHTS:
        if (folder / index).is_file():
            weight_map = read_json(folder / index).get("weight_map") or {}
            shards = sorted({f for k, f in weight_map.items() if _held(k, prefixes)})
            return get(["config.json", index, *shards])
        folder = get(["config.json", single])
        if (folder / single).is_file():
            return folder
    return folder
