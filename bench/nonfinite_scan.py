"""What verify's NaN/inf scan of a layer store costs (issue 82, F8): the whole ``babelgrid verify`` of a store, and
``np.isfinite`` over every done shard it reads, in interleaved rounds; the scan's share of verify's time.

The shards are read once (as verify reads them: every layer of every done utterance) and held in memory; each round
times a full verify of the store (which includes the scan) and then the scan alone over the held shards.

Usage: python bench/nonfinite_scan.py [--store out/demo/store] [--rounds 5] [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="out/demo/store", help="a layer store (make demo writes out/demo/store)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()

    import numpy as np
    import tensorstore as ts

    from engine.axes import UTTERANCE
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify
    from engine.runtime.options import configure
    from engine.stores.reader import open_store

    store = open_store(args.store)
    shards = []
    for lang in store.languages:
        arrays = store.arrays(lang)
        for u in np.flatnonzero(arrays.lengths() >= 0):
            shards.append(arrays.states_store[ts.d[UTTERANCE][int(u)]].read().result())
    nbytes = sum(s.nbytes for s in shards)
    config = configure(VerifyConfig, location=args.store, progress=False)
    load_before = os.getloadavg()[0]
    verify_s, scan_s = [], []
    run_verify(config)  # warm-up: imports, the page cache
    for _ in range(args.rounds):
        start = time.perf_counter()
        summary = run_verify(config)
        verify_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        assert all(np.isfinite(s).all() for s in shards)
        scan_s.append(time.perf_counter() - start)
    load_after = os.getloadavg()[0]
    v, s = statistics.median(verify_s), statistics.median(scan_s)
    lines = [
        f"`python bench/nonfinite_scan.py --store {args.store} --rounds {args.rounds}`, "
        f"{datetime.date.today().isoformat()}; {machine()}; load average {load_before:.2f} before, "
        f"{load_after:.2f} after.",
        "",
        f"{len(shards)} shards ({nbytes / 2**20:.0f} MiB as read, every layer of every done utterance), "
        f"{summary.checked.get('shards', 0)} verified per round; medians of {args.rounds} interleaved rounds.",
        "",
        "| verify of the store (s) | the NaN/inf scan alone (s) | scan's share | scan rate (GB/s) |",
        "| ---: | ---: | ---: | ---: |",
        f"| {v:.2f} | {s:.3f} | {s / v:.1%} | {nbytes / s / 1e9:.1f} |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "verify's NaN/inf scan (bench/nonfinite_scan.py)", text)


if __name__ == "__main__":
    main()
