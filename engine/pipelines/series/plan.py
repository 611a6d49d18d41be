"""``--plan`` for the series job: what it reads and measures per store and layer, and its time here.

Reads the stores' listings (languages, lengths: no states) with the run's own checks (``read.members``) and the
``--retrieval``, ``--centred`` and ``--probes`` folders' tables (what is read is not computed). Work, as the run does
it, for each store and stored layer:

- **read + pool**: the layer's valid frames of every language, and the reference's matched layer (once per reference
  layer);
- **retrieval**: the cosine of every directed pair's pooled states and its ranking, twice where the delta is computed
  (raw, and with the language means removed);
- **language ID**: the probes job's probe (folds x L2 values fits, then a refit per fold), where no probes folder is
  given;
- **CKA**: one linear CKA of the pooled states against the reference's.

Calibration, a few seconds: the first store's first layer read and pooled (timed, and scaled by frames to every
layer), then each measure run on those pooled states (the first call of each compiles: counted once, as one shape
serves every layer of a series whose stores share their width); the language ID on the real states, since L-BFGS
takes several times the iterations on real layers that it takes on noise. The figures are left out: seconds.
"""

from __future__ import annotations

import time

import numpy as np

from engine.pipelines.series import measures, read
from engine.pipelines.series.config import SeriesConfig
from engine.pipelines.series.pool import pooled_layer
from engine.runtime.devices import Device
from engine.runtime.plan import Plan, Stage, duration


def _timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def plan_series_run(config: SeriesConfig, device: Device | None = None) -> Plan:
    """The plan of ``run_series(config)`` (module docstring); ``device`` is not modelled (host work)."""
    series, reference, langs = read.members(config)
    given = {what: list(folders or [""] * len(series))
             for what, folders in (("retrieval", config.retrieval), ("centred", config.centred),
                                   ("probes", config.probes))}  # fmt: skip

    def frames(member) -> float:
        return float(sum(member.reader.lengths(lang)[member.reader.done(lang)].sum() for lang in langs))

    def item(member) -> int:
        return 2 if member.reader.info.dtype == "bfloat16" else np.dtype(member.reader.info.dtype).itemsize

    units = [(i, layer) for i, m in enumerate(series) for layer in m.layers]
    ref_layers = {read.matched_layer(series[i], layer, reference) for i, layer in units}
    read_bytes = sum(frames(m) * m.reader.info.embed * item(m) for m in series for _ in m.layers)
    read_bytes += len(ref_layers) * frames(reference) * reference.reader.info.embed * item(reference)
    n = sum(int(series[0].reader.done(lang).sum()) for lang in langs)

    t0 = time.perf_counter()
    first = series[0]
    read_first, _ = _timed(pooled_layer, first.reader, langs, first.layers[0])  # compiles the pooling
    read_seconds, pooled = _timed(pooled_layer, first.reader, langs, first.layers[0])
    per_byte = read_seconds / max(frames(first) * first.reader.info.embed * item(first), 1.0)
    read_compile = max(read_first - read_seconds, 0.0)
    ref_pooled = pooled_layer(reference.reader, langs, read.matched_layer(first, first.layers[0], reference))
    timings = {}
    for name, fn, args in (
        ("retrieval", measures.retrieval, (pooled,)),
        ("centred", lambda p: measures.retrieval(measures.centred(p)), (pooled,)),
        ("lid", measures.language_id, (first.layers[0], pooled, config.folds, config.seed)),
        ("cka", measures.cka, (pooled, ref_pooled)),
    ):
        compiled, _ = _timed(fn, *args)
        again, _ = _timed(fn, *args)
        timings[name] = (again, max(compiled - again, 0.0))
    calib = time.perf_counter() - t0

    def stage_seconds(name: str, count: int) -> float:
        per, compile_seconds = timings[name]
        return count * per + (compile_seconds if count else 0.0)

    computed = {what: sum(len(series[i].layers) for i, f in enumerate(given[what]) if not f) for what in given}
    d = max(m.reader.info.embed for m in series)
    pairs = len(langs) * (len(langs) - 1)
    stages = [
        Stage("read + pool", 0.0, read_bytes, 0.0, read_bytes * per_byte + read_compile),
        Stage("retrieval", 2.0 * n * n / len(langs) * d * computed["retrieval"], 0.0, 0.0,
              stage_seconds("retrieval", computed["retrieval"])),
        Stage("centred retrieval", 2.0 * n * n / len(langs) * d * computed["centred"], 0.0, 0.0,
              stage_seconds("centred", computed["centred"])),
        Stage("language ID", 0.0, 0.0, 0.0, stage_seconds("lid", computed["probes"])),
        Stage("cka", 2.0 * n * d * d * 3 * len(units), 0.0, 0.0, stage_seconds("cka", len(units))),
    ]  # fmt: skip
    counts = [
        ("series", f"{len(series)} stores ({series[0].name} .. {series[-1].name}); reference {reference.name}"),
        ("layers", f"{len(units)} store layers, {len(ref_layers)} reference layers"),
        ("languages", f"{len(langs)} ({pairs} directed pairs), {n} utterances in the first store"),
        (
            "read from folders",
            ", ".join(f"{what} for {sum(bool(f) for f in folders)} stores" for what, folders in given.items()),
        ),  # fmt: skip
    ]
    calibration = (
        f"{series[0].name} layer {first.layers[0]}: read and pooled in {duration(read_seconds)} (compiled in "
        f"{duration(read_compile)}); retrieval "
        f"{duration(timings['retrieval'][0])}, with the means removed {duration(timings['centred'][0])}, language ID "
        f"{duration(timings['lid'][0])} (compiled in {duration(timings['lid'][1])}), CKA {duration(timings['cka'][0])}"
        f" (calibration took {calib:.1f} s)"
    )
    return Plan(
        job="series",
        counts=counts,
        stages=stages,
        peak_memory=float(2 * n * d * 4 + max(n // len(langs), 1) ** 2 * 4),
        memory_lines=["a layer's pooled states and the reference's, and one pair's similarity matrix"],
        device=None,
        calibration=calibration,
        assumptions=[
            "every layer reads and measures as the first store's first layer does, scaled by its frames; stores of "
            "another width (a size ladder) compile their own shapes, not counted",
            "the figures are not timed: seconds",
        ],
    )
