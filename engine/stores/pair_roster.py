"""The similarity store's roster of pairs (format version 4, ``pairs.json``): every pair folder a run created, per
measure, so that a pair folder deleted whole is damage to every reader and to verify, never a pair silently missing
from retrieval's tables. Added before the pair's ``ids.json`` by a read-modify-write (several processes add theirs).
"""

from __future__ import annotations

import tensorstore as ts

from engine.errors import DamageError
from engine.stores.kv import keys_under, read_json, refuse_lost_manifest, update_json

ROSTER = "pairs.json"


def read_roster(kv: ts.KvStore, url: str, fix: str) -> dict[str, list[str]] | None:
    """measure -> the pair folders (``<a>__<b>``) ever created; None when there is no roster."""
    found = read_json(kv, ROSTER, url, sealed=True, fix=fix)
    return None if found is None else found.get("pairs", {})


def enrol(kv: ts.KvStore, url: str, fix: str, measure: str, folder: str) -> None:
    """Adds the pair ``folder`` of ``measure`` to the roster."""

    def add(roster: dict | None) -> dict | None:
        pairs = {} if roster is None else dict(roster.get("pairs", {}))
        if folder in pairs.get(measure, ()):
            return None
        pairs[measure] = sorted({*pairs.get(measure, ()), folder})
        return {"pairs": dict(sorted(pairs.items()))}

    update_json(kv, ROSTER, url, add, fix=fix)


def check_listed(kv: ts.KvStore, url: str, fix: str, measure: str, seen: set[str], has_pairs: bool) -> None:
    """A DamageError when the roster lists a pair of ``measure`` whose folder is not among ``seen`` (every folder with
    any key: one a run began to create counts, as the run completes it), or when the roster is gone though the store
    has pairs (``has_pairs``)."""
    listed = read_roster(kv, url, fix)
    if listed is None and has_pairs:
        raise DamageError(f"similarity store {url!r} has pairs but no {ROSTER}: deleted. {fix}", "missing")
    gone = sorted(set((listed or {}).get(measure, ())) - seen)
    if gone:
        named = ", ".join(f"{measure}/{folder}" for folder in gone)
        raise DamageError(
            f"similarity store {url!r} lists pairs {named} in {ROSTER}, but their folders are missing: deleted. Rerun "
            "the seqsim job into it: it computes them again",
            "missing",
        )


def refuse_lost_pairs(kv: ts.KvStore, url: str, manifest: str, measures) -> None:
    """A similarity store whose ``manifest`` is gone but which holds pairs (its roster, a folder of one of
    ``measures``) is refused (``kv.refuse_lost_manifest``): a run of another model or dtype would adopt them."""
    folders = {"/".join(k.split("/")[:2]) for m in measures for k in keys_under(kv, f"{m}/", url)}
    held = sorted(folders) or keys_under(kv, ROSTER, url)
    fix = "Restore the manifest from a copy, or compute into a new --out (or delete this one and compute it again)"
    refuse_lost_manifest(kv, manifest, url, held, what="similarity store", fix=fix)
