"""``--baseline``: retrieval of a transformed similarity store against the same grid without the transform.

A seqsim run with ``--remove_language mean`` or ``lda:K`` (``engine.pipelines.seqsim.transform``), or with
``--dimensions standardise`` or ``drop:K`` (the same module), scores the same utterances as
one without it. With ``--baseline OTHER`` (the other similarity store of the same layer store), retrieval scores
both and writes, per measure and layer, the R@1 of each, mean over the directed pairs both measured, and their
difference::

    OUT/baseline_delta.csv                 DELTA_COLUMNS, one row per (measure, layer), then per directed pair
    OUT/figures/baseline_by_layer.png      R@1 against layer: this store solid, the baseline dashed, the delta below

A positive delta: the transform raised retrieval at that layer. The two stores must come from the same layer store
(model and checkpoint); their transforms are named in the CSV and the figure.
"""

from __future__ import annotations

import numpy as np

from engine.figures import Figure, _png, set_title
from engine.pipelines.retrieval.config import RetrievalError
from engine.pipelines.stages.retrieval import DirectedScore
from engine.stores import provenance
from engine.stores.records import csv_bytes

DELTA_CSV = "baseline_delta.csv"
DELTA_FIGURE = "figures/baseline_by_layer.png"
DELTA_COLUMNS = ("measure", "layer", "lang_a", "lang_b", "transform", "baseline_transform", "r1", "baseline_r1",
                 "delta", "queries")  # fmt: skip


def settings_label(manifest: dict) -> str:
    """What a similarity store changed on the layer store's states: its ``--remove_language`` transform, its
    ``--dimensions`` transform where it has one (``; dimensions standardise``), then its SeqSim precision where it is
    not the store's dtype (``fp8 x<scale>``): the delta's ``transform`` columns."""
    label = str(manifest.get("remove_language", "none"))
    if manifest.get("dimensions", "none") != "none":
        label += f"; dimensions {manifest['dimensions']}"
    if manifest.get("seqsim_precision", "dtype") != "dtype":
        label += f"; seqsim {manifest['seqsim_precision']} x{manifest.get('seqsim_fp8_scale')}"
    return label


def check_baseline(manifest: dict, baseline: dict, url: str, baseline_url: str) -> None:
    """The two similarity stores must score the same layer store's states, and differ in the transform or in SeqSim's
    precision, not both: a delta that mixed the two effects could be read as either's."""
    for field in ("layer_store", "model_name", "checkpoint_sha256"):
        if manifest.get(field) != baseline.get(field):
            raise RetrievalError(
                f"--baseline {baseline_url!r} was computed from another {field} ({baseline.get(field)!r}) than "
                f"{url!r} ({manifest.get(field)!r}): a baseline is the same grid without the transform"
            )
    provenance.same_layer_store(baseline, manifest, what="--baseline", url=baseline_url, error=RetrievalError)
    transform = any(manifest.get(f, "none") != baseline.get(f, "none") for f in ("remove_language", "dimensions"))
    precision = any(manifest.get(f) != baseline.get(f) for f in ("seqsim_precision", "seqsim_fp8_scale"))
    if transform and precision:
        raise RetrievalError(
            f"--baseline {baseline_url!r} ({settings_label(baseline)}) differs from {url!r} "
            f"({settings_label(manifest)}) in both the transform and SeqSim's precision: its R@1 change would mix "
            "the two; compare against a baseline that differs in one of them"
        )


def _r1(score: DirectedScore) -> float:
    return next(v for name, v, _ in score.values() if name == "R@1")


def delta_rows(scores, baseline_scores, transform: str, baseline_transform: str) -> list[tuple]:
    """DELTA_COLUMNS rows: per (measure, layer) the mean over directed pairs measured in both ('all', 'all'), then
    each pair. A pair with no queries in either is left out of the mean; a layer with none is NA."""
    base = {(s.measure, s.layer, s.lang_a, s.lang_b): s for s in baseline_scores}
    pairs: dict[tuple, list[tuple]] = {}
    for s in scores:
        other = base.get((s.measure, s.layer, s.lang_a, s.lang_b))
        if other is None or not s.metrics.queries or not other.metrics.queries:
            continue
        row = (s.measure, s.layer, s.lang_a, s.lang_b, transform, baseline_transform, _r1(s), _r1(other),
               _r1(s) - _r1(other), s.metrics.queries)  # fmt: skip
        pairs.setdefault((s.measure, s.layer), []).append(row)
    rows = []
    for (measure, layer), own in sorted(pairs.items()):
        r1, base_r1 = float(np.mean([r[6] for r in own])), float(np.mean([r[7] for r in own]))
        rows.append((measure, layer, "all", "all", transform, baseline_transform, r1, base_r1, r1 - base_r1,
                     sum(r[9] for r in own)))  # fmt: skip
    return rows + [r for own in pairs.values() for r in own]


def delta_csv(rows) -> bytes:
    return csv_bytes(DELTA_COLUMNS, rows)


def delta_figure(rows, subtitle: str) -> bytes:
    """R@1 against layer per measure (this store solid, the baseline dashed) over the delta, pooled rows only."""
    pooled = [r for r in rows if r[2] == "all"]
    measures = list(dict.fromkeys(r[0] for r in pooled))
    fig = Figure(figsize=(5.5 * len(measures), 6.0), layout="constrained")
    axes = fig.subplots(2, len(measures), squeeze=False, sharex="col", height_ratios=[2, 1])
    for col, measure in enumerate(measures):
        own = sorted((r for r in pooled if r[0] == measure), key=lambda r: r[1])
        layers = [r[1] for r in own]
        top, bottom = axes[0, col], axes[1, col]
        top.plot(layers, [r[6] for r in own], "o-", color="tab:red", label=f"this store: --remove_language {own[0][4]}")
        top.plot(layers, [r[7] for r in own], "o--", color="0.4", label=f"baseline: --remove_language {own[0][5]}")
        top.set_ylabel("R@1, mean over directed pairs")
        top.set_title(f"measure: {measure}", fontsize=9)
        top.grid(alpha=0.3)
        top.legend(fontsize=7)
        delta = [r[8] for r in own]
        bottom.bar(layers, delta, color=["tab:green" if d >= 0 else "tab:purple" for d in delta])
        bottom.axhline(0.0, color="k", lw=0.8)
        bottom.set_ylabel("R@1 change")
        bottom.set_xlabel("layer (0 = conv stem, L+1 = ln_post)")
        bottom.grid(alpha=0.3)
    set_title(fig, "cross-lingual retrieval with and without the states' transform (--remove_language, --dimensions)",
              subtitle)  # fmt: skip
    return _png(fig)


def delta_report(rows) -> str:
    pooled = [r for r in rows if r[2] == "all"]
    if not pooled:
        return "baseline: no directed pair measured in both stores"
    lines = [f"R@1 against the baseline ({pooled[0][4]} against {pooled[0][5]}), mean over directed pairs:"]
    for r in pooled:
        lines.append(f"  {r[0]:<10} layer {r[1]:>2}  {r[6]:.3f} against {r[7]:.3f}  change {r[8]:+.3f}  n {r[9]}")
    return "\n".join(lines)
