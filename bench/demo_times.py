"""The README's demo times, reproduced: `make demo` on a fresh clone, stage by stage, with the machine and its load.

Clones this repository's HEAD into a temporary folder (a fresh clone, as a newcomer has), then runs the demo study
(`babelgrid run demo`: encode, seqsim, retrieval, align) there with this environment's Python, twice: the first
run does the work, the second must skip every stage. Prints each stage's seconds as the jobs report them, the wall
time of both runs, and the 1-minute load average before, during (sampled every 5 s) and after. The espeak-ng clips of
the demo set are taken from the cache when present (say so with --fresh_cache to synthesise them again).

The seqsim stage's rate on SeqSim's FLOPs (its summary line: "seqsim X GFLOP at Y GFLOP/s", kernel calls timed,
compilation included) is set against the machine's 2048^3 float32 matmul, timed just before and right after the
first run in this process (``bench/seqsim_lengths.py``'s ``matmul_rate``), the mean of the two: issue 34's goal is at
least 0.5x. Both matmul rates are printed: when they differ much, the load changed during the run and the ratio is
not to be trusted (``bench/seqsim_lengths.py --store`` interleaves them in rounds).

Usage: python bench/demo_times.py [--record bench/RESULTS.md] [--fresh_cache]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record  # noqa: E402
from bench.seqsim_lengths import matmul_rate  # noqa: E402

STAGE_LINES = {
    "encode": re.compile(r"encoded \d+ utterances .* in ([\d.]+) s"),
    "seqsim": re.compile(r"computed \d+ pair-layers .* in ([\d.]+) s"),
    "align": re.compile(r"aligned \d+ utterances .* in ([\d.]+) s"),
}
SEQSIM_RATE = re.compile(r"seqsim ([\d.]+) GFLOP at ([\d.]+) GFLOP/s")


def timed_run(clone: pathlib.Path, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", "demo", "--set", f"out={clone / 'out' / 'demo'}"],
        cwd=clone, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"the demo failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--fresh_cache", action="store_true", help="synthesise the demo clips again (new cache)")
    args = parser.parse_args()
    loads, stop = [], threading.Event()

    def sample():
        while not stop.wait(5.0):
            loads.append(os.getloadavg()[0])

    with tempfile.TemporaryDirectory(prefix="babelgrid-demo-") as tmp:
        clone = pathlib.Path(tmp) / "babelgrid"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = dict(os.environ, PYTHONPATH=str(clone))
        if args.fresh_cache:
            env["BABELGRID_CACHE"] = str(pathlib.Path(tmp) / "cache")
        before = os.getloadavg()[0]
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        matmul_before = matmul_rate() / 1e9
        first, log = timed_run(clone, env)
        matmul_after = matmul_rate() / 1e9
        matmul = 0.5 * (matmul_before + matmul_after)
        second, log2 = timed_run(clone, env)
        stop.set()
        after = os.getloadavg()[0]
    stages = {name: float(m.group(1)) for name, rx in STAGE_LINES.items() if (m := rx.search(log))}
    skipped = log2.count("skipped")
    during = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Machine: {machine()}",
        f"Date: {when}; 1-minute load average {before:.1f} before, {during} during, {after:.1f} after",
        "Command: `python bench/demo_times.py` (a fresh clone of HEAD, `babelgrid run demo` twice; demo clips "
        + ("synthesised afresh)" if args.fresh_cache else "from the espeak-ng cache)"),
        "",
        "| stage | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in stages.items()),
        f"| whole first run (wall, job start-up and retrieval included) | {first:.1f} |",
        f"| second run (every stage skipped: {skipped} of 4) | {second:.1f} |",
    ]
    if rate := SEQSIM_RATE.search(log):
        gflop, gflops = float(rate.group(1)), float(rate.group(2))
        lines += [
            "",
            f"- seqsim stage: {gflop:.0f} GFLOP of SeqSim (valid frames) at {gflops:.1f} GFLOP/s in its kernel calls, "
            f"**{gflops / matmul:.2f}x** the 2048^3 float32 matmul's {matmul:.0f} GFLOP/s (mean of {matmul_before:.0f} "
            f"just before and {matmul_after:.0f} right after the first run; "
            f"{'meets' if gflops / matmul >= 0.5 else 'misses'} issue 34's 0.5x).",
        ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "Demo stage times (make demo on a fresh clone)", text)


if __name__ == "__main__":
    main()
