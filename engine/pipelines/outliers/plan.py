"""``--plan`` for the outliers job: what a run reads and computes per layer, and its time here from a calibration.

Reads the store's lengths and utterance tables (no states), and draws the run's sample (``measure.sampling``: the
translation pairs and frame pairs it will measure). Per layer a run reads every done frame of every language once
(the sums and the d x d scatter: ``2 d^2`` FLOPs a frame), takes each language's covariance spectrum (``d^3``), and
for each translation pair one frame-cosine matrix (``2 m n d``). Calibration, a second or two: the scatter of one
block of random frames, one eigendecomposition at the store's width, one pair's matched contributions at the median
sampled lengths (both cosines of one pair).
"""

from __future__ import annotations

import collections

import numpy as np

from engine.pipelines.outliers.config import OutliersConfig
from engine.pipelines.outliers.measure import HOLD_BYTES, sampling
from engine.pipelines.outliers.run import checked
from engine.runtime.devices import Device
from engine.runtime.plan import READ_RATE, Plan, Stage, timed
from engine.stores.reader import open_store
from kernels import outliers

CALIBRATION_FRAMES = 4096


def plan_outliers_run(config: OutliersConfig, device: Device | None = None) -> Plan:
    """The plan of ``run_outliers(config)`` (module docstring); ``device`` is not modelled (host work)."""
    reader = open_store(config.store)
    langs, layers = checked(config, reader)
    s = sampling(reader, langs, config.translations, config.frame_pairs, config.seed)
    d, n_layers = reader.info.embed, len(layers)
    frames = int(sum(v.sum() for v in s.lengths.values()))
    # translation pairs: every reading of a drawn id in one language with every reading in another
    lengths = {lang: dict(zip(s.done[lang].tolist(), s.lengths[lang].tolist(), strict=True)) for lang in langs}
    pair_cells, pairs, sample_frames = 0, 0, 0
    by_id = {lang: collections.defaultdict(list) for lang in langs}
    for lang in langs:
        for u, uid in zip(s.sample[lang].tolist(), s.sample_ids[lang], strict=True):
            by_id[lang][uid].append(lengths[lang][u])
            sample_frames += lengths[lang][u]
    for n, a in enumerate(langs):
        for b in langs[n + 1 :]:
            for uid in set(by_id[a]) & set(by_id[b]):
                for m in by_id[a][uid]:
                    for k in by_id[b][uid]:
                        pair_cells += m * k
                        pairs += 1
    # the sampled frames are read once if they fit HOLD_BYTES, else once per language they are paired with
    rereads = 1 if sample_frames * d * 4 <= HOLD_BYTES else max(len(langs) - 1, 1)
    read = (frames + sample_frames * rereads) * d * 4 * n_layers

    rng = np.random.default_rng(0)
    block = rng.standard_normal((CALIBRATION_FRAMES, d)).astype(np.float32)
    scatter_seconds = timed(lambda: outliers.Moments().add(block, scatter=True)) / CALIBRATION_FRAMES
    cov = np.cov(block.T.astype(np.float64))
    eig_seconds = timed(lambda: outliers.spectrum(cov))
    mid = [x for v in by_id.values() for ls in v.values() for x in ls] or [100]
    m = max(1, int(np.median(mid)))
    a, b = rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((m, d)).astype(np.float32)

    def pair():  # what the job does for one pair of the median length: both cosines split
        outliers.pooled_contributions(a.mean(0, dtype=np.float64), b.mean(0, dtype=np.float64))
        return outliers.matched_contributions(a, b)

    with outliers.one_lapack_thread():  # as the job runs them
        cell_seconds = timed(pair) / (m * m)

    def stage(name: str, flops: float, read: float, seconds: float) -> Stage:
        return Stage(name, float(flops), float(read), 0.0, seconds)

    stages = [
        stage("read states", 0.0, read, read / READ_RATE),
        stage("sums, scatter", 2.0 * d * d * frames * n_layers, 0.0, scatter_seconds * frames * n_layers),
        stage("spectra", float(d) ** 3 * len(langs) * n_layers, 0.0, eig_seconds * len(langs) * n_layers),
        stage("translations", 2.0 * d * pair_cells * n_layers, 0.0, cell_seconds * pair_cells * n_layers),
    ]
    counts = [
        ("languages", str(len(langs))),
        ("layers", str(n_layers)),
        ("utterances", str(sum(len(v) for v in s.done.values()))),
        ("frames", str(frames)),
        ("translation pairs per layer", f"{pairs} ({s.drawn} of {s.shared} shared ids drawn)"),
        ("frame pairs per layer", str(sum(len(i) for i, _ in s.pairs.values()))),
    ]
    peak = d * d * 8 + config.block * max((int(v.max()) for v in s.lengths.values()), default=0) * d * 4 * 2
    peak += min(sample_frames * d * 4, HOLD_BYTES)
    return Plan(
        "outliers", counts, stages, float(peak),
        [f"a d x d float64 scatter, a block of {config.block} utterances as float32, the sampled translations' frames "
         f"(at most {HOLD_BYTES / 2**30:g} GiB held)"],
        None,
        f"scatter {scatter_seconds * 1e6:.2f} us a frame, spectrum {eig_seconds * 1e3:.1f} ms, matched cosines "
        f"{cell_seconds * 1e9:.2f} ns a frame pair",
        [f"reads at {READ_RATE / 1e6:.0f} MB/s (a local zarr store)",
         "--plan_device is not modelled: the job runs on the host's CPU in float64 (NumPy) on any machine"],
    )  # fmt: skip
