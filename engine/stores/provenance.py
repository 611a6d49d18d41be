"""Which layer store a derived store was computed from: the path alone does not say.

A layer store deleted and encoded again at the same path (another compute dtype, batch size, dataset revision or
float32 precision) is another store at one URL. A similarity store that recorded only the URL would go on adding the
new store's matrices to the old one's on a resume. So it records the layer store's identity (``identity``), and a
resume, a worker joining and a retrieval baseline compare it (``same_layer_store``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from engine.errors import BabelgridError

# What tells two layer stores at one path apart: when and where the store was created, what it was encoded from, and
# the settings that change its numbers. The creation time alone would do; the rest says what changed.
IDENTITY_FIELDS = ("created", "host", "dataset_revision", "dtype", "compute_dtype", "batch_size", "matmul_precision")


def identity(layer_manifest: dict) -> dict:
    """The identity of the layer store whose ``manifest.json`` is ``layer_manifest`` (absent fields: None)."""
    created = layer_manifest.get("created") or {}
    return {
        "created": created.get("time"),
        "host": created.get("host"),
        "dataset_revision": created.get("dataset_revision"),
        **{name: layer_manifest.get(name) for name in IDENTITY_FIELDS[3:]},
    }


def same_layer_store(stored: dict, manifest: dict, *, what: str, url: str, error: type[BabelgridError]) -> dict:
    """``stored``, the manifest of the ``what`` at ``url``, if the layer store identity it recorded
    (``layer_store_identity``) is that of ``manifest``, the one a run would write now; else ``error``, naming what
    changed. Outputs written before identities were recorded (None) are not compared: nothing can stand for one."""
    then, now = stored.get("layer_store_identity"), manifest.get("layer_store_identity")
    if then is None or now is None or then == now:
        return stored
    names = [name for name in IDENTITY_FIELDS if then.get(name) != now.get(name)]
    differ = "; ".join(f"{name} (then {then.get(name)!r}, now {now.get(name)!r})" for name in names)
    raise error(
        f"{what} {url!r} was computed from another layer store than the one now at {manifest.get('layer_store')!r}: "
        f"it was written again since ({differ}). Its results cannot be extended or compared with the new store's: "
        f"compute into a new --out, or delete {url!r} and compute it again"
    )


# What the finetune job writes beside the model it exports (``OUT/model/``): the checkpoint whose decoder it trained.
FINETUNED_FROM = "babelgrid_finetuned_from.json"


def not_the_stores_model(info, name: str, sha256: str, source=None) -> str:
    """The refusal of a model (``name``, its weights' ``sha256``; ``source``: where it was loaded from) that did not
    write the layer store whose ``StoreInfo`` is ``info``. A model the finetune job exported from the store's own
    (``FINETUNED_FROM`` in its folder) is named as such: its decoder changed, so it is another checkpoint, but its
    encoder is the store's, and a store encoded with it holds the same states."""
    text = (f"the layer store was written by model {info.model_name!r} (sha256 {info.checkpoint_sha256[:12]}), but the "
            f"model given is {name!r} (sha256 {sha256[:12]})")  # fmt: skip
    base = _finetuned_from(source)
    if base is not None and base.get("checkpoint_sha256") == info.checkpoint_sha256:
        return (f"{text}: a model the finetune job trained from the store's. Its decoder changed, so it is another "
                f"checkpoint; its encoder did not. To use it, encode the data with it (`babelgrid encode --model "
                f"{source}`): that store holds the same states, recorded as this model's")  # fmt: skip
    return f"{text}; pass the store's model with --model"


def _finetuned_from(source) -> dict | None:
    """``FINETUNED_FROM``'s record in the local model folder ``source``, or None (no such folder or file, a hub id,
    a model object, an unreadable record)."""
    if not isinstance(source, (str, pathlib.Path)) or "://" in str(source):
        return None
    try:
        record = json.loads((pathlib.Path(source) / FINETUNED_FROM).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def store_inputs(reader, langs) -> dict:
    """What an output folder records of the layer store its job read (``runs.output_run``'s ``inputs``): the store's
    ``identity`` and the utterances done in each language read. A rerun after encoding went on (a job run on a partial
    store), or on a store encoded again at the path, is refused by name rather than keeping the old results."""
    done = {lang: int(np.count_nonzero(np.asarray(reader.lengths(lang)) >= 0)) for lang in langs}
    return {"layer_store": identity(reader.manifest), "utterances_done": done}


def listing_digest(utterances) -> str:
    """sha256 of a dataset listing (``Utterance`` objects): ids, recordings, paths and the audio's size in bytes (a
    file's, or the length of audio held as bytes), so that audio replaced under the same names is another listing.
    Not the files' times: workers on several hosts may read copies staged to each one's local disk."""
    h = hashlib.sha256()
    for u in sorted(utterances, key=lambda u: (u.lang, u.id, u.recording, u.path)):
        h.update(json.dumps([u.lang, u.id, u.recording, u.path, _audio_stamp(u.audio)]).encode())
    return h.hexdigest()


def _audio_stamp(audio):
    if isinstance(audio, (bytes, memoryview)):
        return len(audio)
    if isinstance(audio, str) and os.path.isfile(audio):
        return os.path.getsize(audio)
    return None  # fetched on load: its name stands for it
