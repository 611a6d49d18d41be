"""The outliers job's tables, from its per-layer parts: ``outliers.csv`` (one row per layer and language) and
``dimensions.csv`` (its outlier dimensions). ``NA``: not measured (no translation pair, fewer than two frames)."""

from __future__ import annotations

import numpy as np

from engine.stores.records import csv_bytes
from kernels import outliers

OUTLIERS_CSV = "outliers.csv"
DIMENSIONS_CSV = "dimensions.csv"
OUTLIER_COLUMNS = (
    "layer", "lang", "k", "frames", "utterances", "embed", "median_magnitude", "outliers", "top_dimension",
    "top_ratio", "top_norm_share", "outlier_norm_share", "translation_pairs", "translation_cosine",
    "top_cosine_share", "outlier_cosine_share", "translation_seqsim", "top_seqsim_share", "outlier_seqsim_share",
    "anisotropy", "anisotropy_pairs", "effective_rank",
)  # fmt: skip
DIMENSION_COLUMNS = ("layer", "lang", "k", "rank", "dimension", "magnitude", "ratio", "mean", "norm_share",
                     "cosine_share", "seqsim_share")  # fmt: skip


def shares(sums: np.ndarray, pairs: int) -> np.ndarray:
    """f64[d]: each dimension's share of the summed cosine (``sums``: its terms summed over ``pairs`` pairs); NaN
    without a pair (never 0: not measured)."""
    sums = np.asarray(sums, np.float64)
    total = sums.sum()
    return sums / total if pairs and total != 0 else np.full(sums.shape, np.nan)


def rows(parts: dict[int, dict], k: float, top: int) -> tuple[list[dict], list[dict]]:
    """(``OUTLIER_COLUMNS`` rows, ``DIMENSION_COLUMNS`` rows) as dicts, by layer then the part's language order."""
    layer_rows, dimension_rows = [], []
    for layer in sorted(parts):
        part = parts[layer]
        for n, lang in enumerate(str(x) for x in part["languages"]):
            magnitude = part["magnitude"][n]
            flagged, median = outliers.outlier_dimensions(magnitude, k)
            top_dim = int(outliers.top_dimensions(magnitude, 1)[0])
            pairs = int(part["translation_pairs"][n])
            norm = part["norm_share"][n]
            cosine, seqsim = shares(part["pooled_sum"][n], pairs), shares(part["seqsim_sum"][n], pairs)
            ratio = magnitude / median if median > 0 else np.full(magnitude.shape, np.inf)
            layer_rows.append({
                "layer": int(layer), "lang": lang, "k": float(k), "frames": int(part["frames"][n]),
                "utterances": int(part["utterances"][n]), "embed": len(magnitude), "median_magnitude": median,
                "outliers": len(flagged), "top_dimension": top_dim, "top_ratio": float(ratio[top_dim]),
                "top_norm_share": float(norm[top_dim]), "outlier_norm_share": float(norm[flagged].sum()),
                "translation_pairs": pairs,
                "translation_cosine": float(part["pooled_sum"][n].sum() / pairs) if pairs else np.nan,
                "top_cosine_share": float(cosine[top_dim]),
                "outlier_cosine_share": float(cosine[flagged].sum()) if pairs else np.nan,
                "translation_seqsim": float(part["seqsim_sum"][n].sum() / pairs) if pairs else np.nan,
                "top_seqsim_share": float(seqsim[top_dim]),
                "outlier_seqsim_share": float(seqsim[flagged].sum()) if pairs else np.nan,
                "anisotropy": float(part["anisotropy"][n]), "anisotropy_pairs": int(part["anisotropy_pairs"][n]),
                "effective_rank": outliers.effective_rank(part["spectrum"][n]),
            })  # fmt: skip
            for rank, dim in enumerate(flagged[:top], start=1):
                dimension_rows.append({
                    "layer": int(layer), "lang": lang, "k": float(k), "rank": rank, "dimension": int(dim),
                    "magnitude": float(magnitude[dim]), "ratio": float(ratio[dim]),
                    "mean": float(part["mean"][n][dim]), "norm_share": float(norm[dim]),
                    "cosine_share": float(cosine[dim]), "seqsim_share": float(seqsim[dim]),
                })  # fmt: skip
    return layer_rows, dimension_rows


def _cell(x):
    return "NA" if isinstance(x, float) and np.isnan(x) else x


def table_csv(table: list[dict], columns) -> bytes:
    return csv_bytes(columns, [[_cell(r[c]) for c in columns] for r in table])
