"""The heads job's attention sinks: ``sinks.csv``, per block, head and language, how much of the attention the most
attended frames receive, and which frames they are (``engine.models.common.attention_stats`` defines the per-window
arrays: ``top_share``, ``top_frame``, ``first_share``; k = ``--sink_frames``).

One row per (block, head, language), ``COLUMNS``:

- ``layer`` (the block, 1..L), ``head`` (0..H-1; NA: the block's heads averaged, the frames they attend to
  together), ``lang`` (NA: every window), ``k``, ``windows`` (the windows averaged), ``keys`` (the mean keys a window
  attends: Whisper's whole 30 s window, padding included; the valid frames elsewhere);
- ``top1_share``, ``top_share``: the mean over windows of the share of the window's attention that its most attended
  frame, and its ``k`` most attended frames, receive; ``uniform_share``: the mean of ``k / keys``, what a head that
  attends evenly would give;
- ``first_share``: the mean share the window's first ``k`` frames receive (equal to ``top_share`` where the first
  frames are the sinks);
- ``top_frame``: the frame that is most often a window's most attended one (ties: the earlier); ``top_frame_windows``:
  the share of windows in which it is; ``common_frames``: the frames among the ``k`` most attended in at least half of
  the windows, ascending, ``;``-joined (NA: none).
"""

from __future__ import annotations

import numpy as np

from engine.stores.records import csv_bytes

CSV = "sinks.csv"
COLUMNS = ("layer", "head", "lang", "k", "windows", "keys", "top1_share", "top_share", "uniform_share", "first_share",
           "top_frame", "top_frame_windows", "common_frames")  # fmt: skip


def summary(top_share: np.ndarray, top_frame: np.ndarray, first_share: np.ndarray, keys: np.ndarray) -> tuple:
    """The numbers of one row (module docstring) over windows: ``top_share f[window, k]``, ``top_frame i[window, k]``,
    ``first_share f[window]``, ``keys i[window]``."""
    n, k = top_share.shape
    top1 = top_frame[:, 0]
    found = top1[top1 >= 0]
    frames, counts = np.unique(found, return_counts=True)
    mode = int(frames[np.argmax(counts)]) if len(frames) else None  # np.unique sorts: ties go to the earlier frame
    seen, often = np.unique(top_frame[top_frame >= 0], return_counts=True)  # a window lists each frame once
    common = ";".join(str(int(f)) for f, c in zip(seen, often, strict=True) if c >= n / 2) or None
    return (k, n, float(np.mean(keys)), float(np.mean(top_share[:, 0])), float(np.mean(top_share.sum(axis=1))),
            float(np.mean(k / np.asarray(keys, np.float64))), float(np.mean(first_share)), mode,
            None if mode is None else float(np.mean(top1 == mode)), common)  # fmt: skip


def rows(attention: dict, langs, lang_of_window: np.ndarray) -> list[tuple]:
    """Every row of ``sinks.csv`` from the attention part's arrays (``engine.pipelines.heads.run``); a language none of
    whose windows was read has no row."""
    top_share, top_frame, first_share, keys = (attention[x] for x in ("top_share", "top_frame", "first_share", "keys"))
    _, blocks, heads_and_all, _ = top_share.shape
    out = []
    for b in range(blocks):
        for h in range(heads_and_all):
            head = h if h < heads_and_all - 1 else None
            groups = [(lang, lang_of_window == i) for i, lang in enumerate(langs)]
            for lang, on in [*groups, (None, np.ones(len(keys), bool))]:
                if on.any():
                    numbers = summary(top_share[on, b, h], top_frame[on, b, h], first_share[on, b, h], keys[on])
                    out.append((b + 1, head, lang, *numbers))
    return out


def sinks_csv(table_rows: list[tuple]) -> bytes:
    return csv_bytes(COLUMNS, [["NA" if x is None else x for x in r] for r in table_rows])


def report_lines(table_rows: list[tuple]) -> list[str]:
    """Over every window: the head whose top k frames take the largest share, and the block whose heads together do."""
    whole = [r for r in table_rows if r[2] is None]
    lines = []
    for heads, what in ((True, "head {head} of block {layer}"), (False, "block {layer}'s heads together")):
        picked = [r for r in whole if (r[1] is not None) == heads]
        if not picked:
            continue
        layer, head, _, k, _, _, _, top, uniform, first, frame, at, _ = max(picked, key=lambda r: (r[7], -r[0]))
        lines.append(f"attention sinks: {what.format(head=head, layer=layer)} give {top:.3f} of their attention to "
                     f"their top {k} frames (uniform {uniform:.4f}; the first {k} frames {first:.3f}), frame {frame} "
                     f"the top one in {at:.0%} of windows")  # fmt: skip
    return lines
