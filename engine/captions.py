"""What a figure says it rests on: the model, the dataset and n, as one line under its title.

Plain strings from a layer store's manifest (its ``model_name`` and the ``created`` block the encode job records),
without matplotlib, so that a job names its data before it decides to draw. A dataset is named by its spec, never by
a machine's path: a folder or manifest by its last path component (``/data/my-clips`` is ``folder my-clips``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping

SYNTHETIC_DATASETS = ("demo", "words-demo")  # the bundled sets, spoken by espeak-ng
UNSPLIT_DATASETS = ("folder",)  # a folder of clips has no splits: the encode job records its --split all the same


def dataset_label(created: Mapping | None) -> str:
    """``dataset <name>`` from a layer store manifest's ``created`` block (``dataset``, ``split``): the bundled sets
    marked as synthetic speech, the split named for the others that have splits (not a folder), ``dataset unknown``
    when nothing was recorded."""
    spec = str((created or {}).get("dataset") or "").strip()
    if not spec:
        return "dataset unknown"
    kind, sep, path = spec.partition(":")
    if kind in SYNTHETIC_DATASETS:  # demo or demo:<cache folder>: the same bundled sentences
        return f"dataset {kind}: synthetic espeak-ng speech"
    if kind == "fleurs":  # fleurs:<local copy>: FLEURS wherever it was copied to
        name = kind
    else:
        name = f"{kind} {posixpath.basename(path.rstrip('/')) or path}" if sep and path else spec
    split = None if kind in UNSPLIT_DATASETS else (created or {}).get("split")
    return f"dataset {name}" + (f" ({split})" if split else "")


def source_line(model: str, created: Mapping | None, n: str = "") -> str:
    """``<model>; dataset <name>[; <n>]``: a figure's subtitle (``n``: what the figure's numbers rest on, e.g.
    ``n = 40 utterances per language``)."""
    return "; ".join(part for part in (model, dataset_label(created), n) if part)


def count_range(counts: Iterable[int], what: str) -> str:
    """``5 <what>`` or ``3-5 <what>`` over ``counts`` (``0 <what>`` when there are none): a subtitle's n is
    ``"n = " + count_range(...)``."""
    counts = [int(c) for c in counts]
    if not counts:
        return f"0 {what}"
    low, high = min(counts), max(counts)
    return f"{low if low == high else f'{low}-{high}'} {what}"
