"""The layer where cross-lingual alignment and language separability meet ("Multilingual Steering by Design",
2605.23036, picks it a priori): the rule, as the typology job and the series job apply it.

Per model and layer, two curves on one scale, each its share of the way from chance to perfect:

- alignment: retrieval R@1 (mean over directed pairs), ``(R@1 - random) / (1 - random)``;
- separability: language-ID accuracy (``stages.lid``), ``(accuracy - chance) / (1 - chance)``.

The rule: the layer that maximises the smaller of the two (``min(alignment, separability)``; ties to the shallower
layer). A layer where either is missing is not a candidate. Depth is ``layer / (L + 1)`` (0 = conv stem, 1 =
ln_post) so that models of different depths share one axis.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MEET_COLUMNS = ("model", "layer", "depth", "retrieval", "retrieval_random", "lid_accuracy", "lid_chance",
                "alignment", "separability", "score", "chosen")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Curve:
    """One model's two curves, by layer."""

    model: str
    layers: tuple[int, ...]
    depth: tuple[float, ...]
    retrieval: tuple[float, ...]  # mean R@1 over directed pairs (NaN: not measured)
    retrieval_random: tuple[float, ...]
    lid: tuple[float, ...]  # LID accuracy (NaN: not probed at this layer)
    lid_chance: tuple[float, ...]

    def shares(self) -> tuple[np.ndarray, np.ndarray]:
        r, rr = np.asarray(self.retrieval), np.asarray(self.retrieval_random)
        lid, lc = np.asarray(self.lid), np.asarray(self.lid_chance)
        return (r - rr) / (1 - rr), (lid - lc) / (1 - lc)

    def chosen(self) -> int | None:
        """Index of the layer the rule picks (module docstring), None if no layer has both curves."""
        alignment, separability = self.shares()
        score = np.minimum(alignment, separability)
        if np.isnan(score).all():
            return None
        return int(np.nanargmax(score))  # the first maximum: the shallower layer on ties

    def rows(self) -> list[tuple]:
        alignment, separability = self.shares()
        score = np.minimum(alignment, separability)  # NaN where either curve is (Python's min kept the other one)
        pick = self.chosen()
        return [
            (self.model, layer, self.depth[i], self.retrieval[i], self.retrieval_random[i], self.lid[i],
             self.lid_chance[i], alignment[i], separability[i], float(score[i]), i == pick)
            for i, layer in enumerate(self.layers)
        ]  # fmt: skip


def curve(model: str, layers, depth, retrieval, random, lid: dict) -> Curve:
    at = [lid.get(layer, (np.nan, np.nan)) for layer in layers]
    return Curve(model, tuple(layers), tuple(depth), tuple(retrieval), tuple(random),
                 tuple(a for a, _ in at), tuple(c for _, c in at))  # fmt: skip
