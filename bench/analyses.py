"""What the analyses of issue 48 cost, on the demo's stores: the seqsim job with and without ``--remove_language``,
and the compare job with and without its permutation null.

Each contender is the job itself as a user runs it (a subprocess, into a fresh output folder each time, so that no
run resumes another), timed by wall clock, in interleaved rounds after one unmeasured warm-up run of each (the
persistent compilation cache then serves every round alike). Prints the median seconds of each and the ratios
against the plain run, with the machine and the load average before and after. Goals (issue 48): the transform adds
at most 10% to the seqsim job; the null (200 permutations) costs at most 2x the raw compare.

Usage:
    python bench/analyses.py --store /tmp/demo/store --tiny_store /tmp/demo-tiny [--rounds 3] [--jobs seqsim,compare]
        [--record FILE]

``--store``: the demo's whisper-base store (``babelgrid run demo``); ``--tiny_store``: the demo set encoded with
Whisper tiny.en (docs/compare.md). Run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record  # noqa: E402


def job(args: list[str], out: pathlib.Path, env: dict) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args, "--out", str(out), "--progress=false"], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--tiny_store", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lda", type=int, default=7, help="K of the lda contender (the demo has 8 languages)")
    parser.add_argument("--jobs", default="seqsim,compare", help="which of seqsim, compare to time")
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()
    jobs = args.jobs.split(",")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="bench-analyses-"))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(scratch / "jax-cache")}
    seqsim = ["jobs.seqsim", "--store", args.store]
    compare = ["jobs.compare", "--stores", f"{args.store},{args.tiny_store}"]
    contenders = {}
    if "seqsim" in jobs:
        contenders["seqsim"] = seqsim
        contenders["seqsim --remove_language mean"] = [*seqsim, "--remove_language", "mean"]
        contenders[f"seqsim --remove_language lda:{args.lda}"] = [*seqsim, "--remove_language", f"lda:{args.lda}"]
    if "compare" in jobs:
        contenders["compare --null_permutations 0"] = [*compare, "--null_permutations", "0"]
        contenders["compare (null: 200 permutations, utterance level)"] = compare
    started, before = datetime.datetime.now(datetime.timezone.utc), load()
    t0 = time.perf_counter()
    for argv in contenders.values():  # warm-up: the compilation cache, the page cache
        job(argv, scratch / "warm", env)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name in list(contenders)[:: 1 if r % 2 == 0 else -1]:
            times[name].append(job(contenders[name], scratch / "out", env))
            print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    shutil.rmtree(scratch, ignore_errors=True)
    lines = [
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC; the program took "
        f"{(time.perf_counter() - t0) / 60:.1f} min. Load average (1, 5, 15 min) {before} before, {load()} after.",
        "",
        f"Command: `python bench/analyses.py --store {args.store} --tiny_store {args.tiny_store} --rounds "
        f"{args.rounds} --jobs {args.jobs}`; each job a subprocess into a fresh folder, wall clock, medians of "
        f"{args.rounds} interleaved rounds after one warm-up run of each.",
        "",
        "| job | seconds (median) | rounds | against the plain run | goal |",
        "| --- | ---: | --- | ---: | --- |",
    ]
    plain = {name.split()[0]: median[name] for name in ("seqsim", "compare --null_permutations 0") if name in median}
    for name, seconds in median.items():
        base = plain[name.split()[0]]
        ratio = seconds / base
        goal = ""
        if "remove_language" in name:
            goal = f"<= 1.10: {'met' if ratio <= 1.10 else 'not met'}"
        elif "null: 200" in name:
            goal = f"<= 2.0: {'met' if ratio <= 2.0 else 'not met'}"
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        lines.append(f"| `{name}` | {seconds:.1f} | {rounds} | {ratio:.2f} | {goal} |")
    text = "\n".join(lines)
    print(text)
    if args.record:
        what = {"seqsim": "the language transform", "compare": "the permutation null"}
        section = " and ".join(what[j] for j in jobs)
        record(args.record, f"analyses: {section} (bench/analyses.py)", text)


if __name__ == "__main__":
    main()
