"""LAPE, language activation probability entropy (Tang et al. 2024, "Language-Specific Neurons: The Key to
Multilingual Capabilities in Large Language Models", arXiv 2402.16438), from per-language activation counts.

For unit j of layer l and language i, the activation rate ``p[i, l, j]`` = frames at which the unit's activation
after the nonlinearity is > 0, over the language's valid frames. Normalised over languages, ``q = p / sum_i p``, and

    LAPE[l, j] = - sum_i q[i, l, j] log q[i, l, j]          (0 log 0 = 0; NaN for a unit never active)

Low LAPE: the unit fires for few languages. As the paper selects them:

1. the threshold ``tau`` = the ``rate_quantile`` (0.95) quantile of every rate ``p`` (every language, layer, unit);
2. candidates: units whose rate reaches ``tau`` in at least one language;
3. selected: the ``lape_share`` (1%) of all units with the lowest LAPE among the candidates;
4. a selected unit belongs to every language whose rate reaches ``tau`` (usually one, sometimes a few).

``reference_lape`` is the NumPy twin with a loop per unit.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Lape:
    languages: tuple[str, ...]
    rates: np.ndarray  # f64[language, layer, unit]
    entropy: np.ndarray  # f64[layer, unit], NaN where never active
    threshold: float  # tau
    selected: np.ndarray  # bool[layer, unit]
    belongs: np.ndarray  # bool[language, layer, unit]: selected and the language's rate reaches tau


def rates(counts: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """f64[language, layer, unit] activation rates from counts ``i64[language, layer, unit]`` and valid frames
    ``[language]``."""
    frames = np.asarray(frames, np.float64)
    if np.any(frames <= 0):
        raise ValueError("every language needs at least one valid frame to have a rate")
    return np.asarray(counts, np.float64) / frames[:, None, None]


def entropy(p: np.ndarray) -> np.ndarray:
    """f64[layer, unit]: LAPE over axis 0 (languages); NaN for units with no activation in any language."""
    total = p.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = p / total
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return np.where(total > 0, -terms.sum(axis=0), np.nan)


def lape(languages, counts: np.ndarray, frames: np.ndarray, rate_quantile: float = 0.95, share: float = 0.01) -> Lape:
    """The module docstring's selection from per-language counts ``i64[language, layer, unit]``."""
    p = rates(counts, frames)
    h = entropy(p)
    tau = float(np.quantile(p, rate_quantile))
    candidate = (p.max(axis=0) >= tau) & np.isfinite(h)
    n = int(np.floor(share * h.size))
    selected = np.zeros(h.shape, bool)
    if n and candidate.any():
        order = np.argsort(np.where(candidate, h, np.inf), axis=None, kind="stable")[: min(n, int(candidate.sum()))]
        selected.flat[order] = True
    return Lape(tuple(languages), p, h, tau, selected, selected[None] & (p >= tau))


def reference_lape(counts, frames, rate_quantile: float = 0.95, share: float = 0.01):
    """(entropy f64[layer, unit], tau, selected bool[layer, unit]) by a loop over units, float64."""
    counts = np.asarray(counts, np.float64)
    n_lang, n_layer, n_unit = counts.shape
    p = counts / np.asarray(frames, np.float64)[:, None, None]
    h = np.full((n_layer, n_unit), np.nan)
    for layer in range(n_layer):
        for unit in range(n_unit):
            col = p[:, layer, unit]
            if col.sum() > 0:
                q = col / col.sum()
                h[layer, unit] = -sum(x * np.log(x) for x in q if x > 0)
    tau = float(np.quantile(p.ravel(), rate_quantile))
    ranked = sorted(
        ((h[layer, unit], layer * n_unit + unit) for layer in range(n_layer) for unit in range(n_unit)
         if p[:, layer, unit].max() >= tau and not np.isnan(h[layer, unit])),
    )  # fmt: skip
    selected = np.zeros((n_layer, n_unit), bool)
    for _, flat in ranked[: int(np.floor(share * n_layer * n_unit))]:
        selected.flat[flat] = True
    return h, tau, selected
