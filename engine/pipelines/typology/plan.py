"""``--plan`` for the typology job: the matrices it reads and scores, URIEL's lookups and the Mantel tests, and their
time here.

Reads the similarity store's listings (pairs, done layers, each pair's ids; no matrix) and lang2vec's list of
languages, with the run's own refusals (``engine.pipelines.typology.run.checked``). Work, as the run does it:

- **read + score**: every stored matrix of a kept pair at each layer asked, read once and scored both ways (R@1 and
  the parallel gap, ``geometry.directed_scores``): its cells;
- **URIEL**: lang2vec's distances of the languages (``uriel.uriel_distances``), mostly the loading of its feature
  sets, whatever the languages: timed whole on three of them;
- **Mantel tests**: per measure, kind and URIEL distance one test over the layers with ``--permutations``, and a
  partial one (geography held fixed) for every distance but geography: each permutation gathers the ``n(n-1)/2``
  distances of ``n`` languages and correlates them with every layer's.

Calibration, a few seconds: ``directed_scores`` on a random matrix of the store's median pair shape (after a first
call, which compiles the retrieval kernels: once per pair shape in the run), and ``mantel``
and ``partial_mantel`` on random distances of the run's languages and layers with at most ``CALIBRATION_PERMUTATIONS``
permutations, scaled to ``--permutations``. The figures, the dendrogram and the meeting layer's curves are left out:
seconds.
"""

from __future__ import annotations

import time

import numpy as np

from engine.pipelines.typology import uriel
from engine.pipelines.typology.config import TypologyConfig
from engine.pipelines.typology.geometry import directed_scores
from engine.pipelines.typology.mantel import mantel, partial_mantel
from engine.pipelines.typology.run import CONTROL, checked
from engine.runtime.devices import Device
from engine.runtime.plan import Plan, Stage, duration
from engine.stores.similarity import SimilarityError, open_similarity

CALIBRATION_PERMUTATIONS = 999  # the Mantel calibration's permutations: its time is linear in them


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def plan_typology_run(config: TypologyConfig, device: Device | None = None) -> Plan:
    """The plan of ``run_typology(config)`` (module docstring); ``device`` is not modelled (host work)."""
    reader = open_similarity(config.similarity)
    started = time.perf_counter()
    measures, layers, languages, kept, missing = checked(config, reader)
    resolve_seconds = time.perf_counter() - started
    wanted = set(layers)
    index = set(languages)
    matrices, cells, shapes = 0, 0.0, []
    for measure in measures:
        for a, b in reader.pairs(measure):
            if a not in index or b not in index:
                continue
            try:
                done = wanted & set(reader.done(measure, a, b))
                ids = reader.ids(measure, a, b)
            except SimilarityError:
                continue
            n, m = len(ids["row_ids"]), len(ids["col_ids"])
            matrices += len(done)
            cells += float(n * m * len(done))
            shapes.append((n, m))
    n_lang = len(kept)
    tests = len(measures) * len(config.kinds) * len(config.distances)
    partials = len(measures) * len(config.kinds) * sum(d != CONTROL for d in config.distances)

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n, m = (int(np.median([s[i] for s in shapes])) for i in (0, 1)) if shapes else (2, 2)
    ids = [f"u{i}" for i in range(max(n, m))]
    matrix = rng.random((n, m), dtype=np.float32)
    first = _timed(directed_scores, matrix, ids[:n], ids[:m], None, measures[0])  # compiles the metrics' kernels
    per_matrix = _timed(directed_scores, matrix, ids[:n], ids[:m], None, measures[0])
    compile_seconds = max(first - per_matrix, 0.0) * len(set(shapes))  # once per pair shape
    x = _distances(rng, n_lang)
    ys = np.stack([_distances(rng, n_lang) for _ in layers])
    permutations = min(config.permutations, CALIBRATION_PERMUTATIONS)
    scale = (config.permutations + 1) / (permutations + 1)
    options = dict(permutations=permutations, seed=0, method=config.method)
    mantel_seconds = _timed(lambda: mantel(x, ys, **options)) * scale
    partial_seconds = _timed(lambda: partial_mantel(x, ys, _distances(rng, n_lang), **options)) * scale
    uriel_seconds = _timed(uriel.uriel_distances, kept[:3], tuple(dict.fromkeys((*config.distances, CONTROL,
                                                                                   "genetic"))))  # fmt: skip
    calib = time.perf_counter() - t0

    pairs_of = n_lang * (n_lang - 1) // 2
    mantel_flops = 2.0 * (config.permutations + 1) * pairs_of * len(layers)
    stages = [
        Stage("read + score", 0.0, cells * 4, 0.0, 2 * matrices * per_matrix + compile_seconds),
        Stage("uriel (lang2vec)", 0.0, 0.0, 0.0, resolve_seconds + uriel_seconds),
        Stage("mantel tests", mantel_flops * (tests + 2 * partials), 0.0, 0.0,
              tests * mantel_seconds + partials * partial_seconds),
    ]  # fmt: skip
    left = ", ".join(f"{lang} ({why})" for lang, why in sorted(missing.items())) or "none"
    counts = [
        ("similarity store", config.similarity),
        ("measures", f"{', '.join(measures)} x kinds {', '.join(config.kinds)}"),
        ("layers", f"{len(layers)} ({', '.join(str(la) for la in layers)})"),
        ("languages", f"{n_lang} of {len(languages)} in URIEL; left out: {left}"),
        ("matrices", f"{matrices} read and scored both ways ({cells:,.0f} cells; median pair {n} x {m})"),
        ("Mantel tests", f"{tests} over the layers, {partials} partial (geography held fixed); {config.permutations} "
                         f"permutations of {pairs_of} language pairs each"),
    ]  # fmt: skip
    calibration = (
        f"scoring a {n} x {m} matrix one way in {duration(per_matrix)} (compiled in {duration(first - per_matrix)}, "
        f"once per pair shape: {len(set(shapes))}), a Mantel test of {n_lang} "
        f"languages over {len(layers)} layers with {permutations} permutations in "
        f"{duration(mantel_seconds / scale)} (partial {duration(partial_seconds / scale)}), lang2vec's distances of "
        f"{min(3, n_lang)} languages in {duration(uriel_seconds)} (calibration took {calib:.1f} s)"
    )
    return Plan(
        job="typology",
        counts=counts,
        stages=stages,
        peak_memory=float(max((a * b for a, b in shapes), default=0) * 4 * 2 + 512 * pairs_of * 8 * 2),
        memory_lines=["one matrix as read and scored, and a block of 512 permutations' gathered distances"],
        device=None,
        calibration=calibration,
        assumptions=[
            "reading the matrices at local-disk speed is not timed; lang2vec's time is its feature sets' loading, "
            "whatever the languages (timed on three)",
            "the figures, the dendrogram and the meeting layer's curves are not timed: seconds",
        ],
    )


def _distances(rng, n: int) -> np.ndarray:
    """A random symmetric distance matrix of ``n`` languages."""
    points = rng.standard_normal((n, 3))
    return np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
