"""A similarity store's staged blocks (``engine.stores.similarity_blocks``) as verify sees them: babelgrid's own
files, never "not ours".

- **Left over**: blocks of a pair-layer whose done marker was committed from blocks of their digest. Nothing reads
  them (a process lost the race to commit the pair-layer, or was killed before it deleted them); the next seqsim run's
  end deletes them too. Named in one note; ``--repair`` deletes them. Not damage: the store is whole without them.
- **Work in progress**: blocks of a split pair-layer not committed yet (a run stopped before its last block), or being
  computed again with other settings. Each is read whole (the zip container's CRC-32): a damaged one is damage, which
  the repair deletes and the seqsim rerun computes again; the others are counted in a note (the rerun computes the
  missing blocks and commits the pair-layer).

Any other key under ``staging/`` is left to the files check.
"""

from __future__ import annotations

from engine.pipelines.verify.checks import DELETED, Damage, Findings, _delete, _problem
from engine.stores.integrity import DamageError
from engine.stores.kv import read_json, read_value
from engine.stores.similarity import DONE_DIR
from engine.stores.similarity_blocks import STAGED_KEY, marker_digest, parse_block


def staged_blocks(url: str, keys: list[str], kv, findings: Findings, bar) -> None:
    """Checks the staged blocks among ``keys`` (see the module docstring)."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for key in keys:
        if (found := STAGED_KEY.fullmatch(key)) is not None:
            groups.setdefault(found.group("measure", "pair", "layer", "digest"), []).append(key)
            findings.keys_done.add(key)
    pending: set[tuple[str, str, str]] = set()  # pair-layers with blocks in progress
    read = waiting = 0
    for (measure, pair, layer, digest), staged in sorted(groups.items()):
        if _committed_from(kv, url, f"{measure}/{pair}/{DONE_DIR}{layer}.json", keys) == digest:
            findings.leftover += staged
            bar.update(len(staged))
            continue
        pending.add((measure, pair, layer))
        waiting += len(staged)
        for key in staged:
            found = read_value(kv, key, url)
            if found.state == "value":  # else committed and deleted since the listing
                try:
                    parse_block(key, bytes(found.value), url)
                    read += 1
                except DamageError as e:
                    block = key.rsplit("/", 1)[-1].removesuffix(".npz")
                    what = f"{measure} {pair} layer {layer} staged block {block}"
                    findings.damage.append(Damage(what, key, _problem(e), DELETED.format("seqsim"), _delete(kv, key),
                                                  "seqsim"))  # fmt: skip
            bar.update(1)
    if read:
        findings.count("staged blocks", read)
    if pending:
        findings.notes.append(
            f"{waiting} staged blocks of {len(pending)} split pair-layers not committed yet (a seqsim run stopped "
            "before their last block, or they are being computed again): rerun seqsim with the same flags; it "
            "computes the missing blocks and commits them"
        )


def _committed_from(kv, url: str, marker_key: str, keys: list[str]) -> str | None:
    """The digest of the blocks the pair-layer's done marker was committed from; None when it has none, or a
    damaged one (the pair-layer check names it)."""
    if marker_key not in keys:
        return None
    try:
        marker = read_json(kv, marker_key, url)
    except DamageError:
        return None
    return None if marker is None else marker_digest(marker)
