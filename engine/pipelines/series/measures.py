"""What the series job measures at one layer of one store, from its mean-pooled states (``pool``).

- ``retrieval``: R@1 of every directed language pair, cosine of mean-pooled states (the ``mean`` measure of
  ``jobs.seqsim`` + ``jobs.retrieval``; ``kernels.metrics.retrieval_metrics``, optimistic ties);
- ``centred``: the same after each language's mean pooled state is subtracted from its utterances (the mean over the
  language's pooled utterances of this store and layer: ``kernels.subspace.reference_means``, each utterance weighing
  the same; seqsim's ``--remove_language mean`` weighs every frame the same instead);
- ``lid``: the language-ID probe of ``engine.pipelines.stages.lid`` (the probes job's), out-of-fold by utterance id;
- ``cka``: linear CKA (``kernels.cka.linear_cka``, biased, Kornblith et al. 2019) of this layer's pooled states with
  the reference store's at its matched layer, on the utterances both hold, every language pooled into one set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from engine.pipelines.series.pool import Pooled
from engine.pipelines.stages import lid
from kernels.cka import linear_cka
from kernels.metrics import retrieval_metrics
from kernels.pooling import cosine_matrix
from kernels.subspace import reference_means


@dataclasses.dataclass(frozen=True)
class Directed:
    """R@1 of ``lang_a``'s queries among ``lang_b``'s utterances."""

    lang_a: str
    lang_b: str
    r1: float
    random: float
    queries: int


def retrieval(pooled: Mapping[str, Pooled]) -> list[Directed]:
    """Every directed pair of ``pooled``'s languages that has queries (an id shared by both)."""
    out = []
    for a, qa in pooled.items():
        for b, qb in pooled.items():
            if a == b:
                continue
            m = retrieval_metrics(np.asarray(cosine_matrix(qa.states, qb.states)), qa.ids, qb.ids, ks=(1,))
            if m.queries:
                out.append(Directed(a, b, float(m.recall[1]), float(m.random_recall[1]), int(m.queries)))
    return out


def centred(pooled: Mapping[str, Pooled]) -> dict[str, Pooled]:
    """``pooled`` with each language's mean pooled state subtracted (module docstring)."""
    means = reference_means({lang: p.states for lang, p in pooled.items()})
    return {lang: dataclasses.replace(p, states=(p.states - means[lang]).astype(np.float32))
            for lang, p in pooled.items()}  # fmt: skip


def language_id(layer: int, pooled: Mapping[str, Pooled], folds: int, seed: int) -> lid.LidScore:
    """The probe over every language's utterances (labels: the languages in ``pooled``'s order)."""
    langs = list(pooled)
    x = np.concatenate([pooled[lang].states for lang in langs])
    y = np.concatenate([np.full(len(pooled[lang].ids), i, np.int32) for i, lang in enumerate(langs)])
    groups = [i for lang in langs for i in pooled[lang].ids]
    return lid.lid_layer(layer, x, y, groups, folds=folds, seed=seed)


def cka(pooled: Mapping[str, Pooled], reference: Mapping[str, Pooled]) -> tuple[float, int]:
    """(linear CKA, n) of the utterances held by both, matched by (language, id, recording); NaN below 2."""
    xs, ys = [], []
    for lang, p in pooled.items():
        r = reference.get(lang)
        if r is None:
            continue
        at = {key: i for i, key in enumerate(r.keys)}
        pairs = [(i, at[key]) for i, key in enumerate(p.keys) if key in at]
        xs += [p.states[i] for i, _ in pairs]
        ys += [r.states[j] for _, j in pairs]
    if len(xs) < 2:
        return float("nan"), len(xs)
    return float(linear_cka(np.stack(xs), np.stack(ys))), len(xs)
