"""Independent ``--worker`` processes of the seqsim job on one grid (``python bench/scale.py --sweeps workers``).

Three runs of the same grid, each process pinned to one core as ``bench/scale.py``'s processes table pins them, all
sharing one ``--compile_cache`` that an unmeasured warm-up run filled:

- **1 process**: the job alone, without ``--worker``;
- **2 workers, 20 s apart**: worker B starts ``GAP`` seconds after worker A, as a SLURM array's second task starts when
  a GPU frees up;
- **2 workers, one killed halfway, a third later**: A and B start together; B is SIGKILLed once half the run's units
  are done (by the workers' records, ``engine.runtime.status``); C starts ``GAP`` seconds after the kill.

For each: the wall time (the first start to the last end), the units each worker did, and its kernels loaded from the
cache; for the kill, the work lost (the units B held when it died, which another worker redid) and the time from the
kill until every one of them was taken over (claims expire ``--claim_ttl`` after B's last renewal; ``CLAIM_TTL`` here,
not the default 60 s, to keep the run short).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import tensorstore as ts

from engine.runtime.status import run_status

GAP = 20.0  # seconds between a worker and the next
CLAIM_TTL = 20.0  # --claim_ttl of the kill scenario


class Worker:
    """One seqsim process, pinned to a core, its output in a file."""

    def __init__(self, wrapper: str, args: list[str], env: dict, core: int, label: str, folder: pathlib.Path):
        self.label, self.started = label, time.monotonic()
        self.log = open(folder / f"{label}.log", "w+")  # noqa: SIM115 - closed in output()
        pin = functools.partial(os.sched_setaffinity, 0, {core})
        env = {**env, "BABELGRID_WORKER_LABEL": label}
        self.proc = subprocess.Popen([sys.executable, "-c", wrapper, *args], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=pin)  # fmt: skip
        self.ended: float | None = None

    def poll(self) -> bool:
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.monotonic()
        return self.ended is not None

    def output(self) -> str:
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def _records(out: str) -> dict:
    try:
        kv = ts.KvStore.open({"driver": "file", "path": out + "/"}).result()
        return {"status": run_status(kv, out, "seqsim"), "kv": kv}
    except ValueError:
        return {}


def _claims_of(out: str, owner: str) -> set[str]:
    """The units whose claim ``owner`` holds now."""
    status = _records(out).get("status")
    return set() if status is None else {c.get("unit") for c in status.claims if c.get("owner") == owner}


def scenario(name: str, store: str, out: str, wrapper: str, env: dict, base: list[str], cores: list[int],
             folder: pathlib.Path, summary) -> dict:  # fmt: skip
    """One of the module docstring's runs; its timings and each worker's summary (``summary(output)``)."""
    t0 = time.monotonic()
    args = ["--store", store, "--out", out, *base]
    worker_args = [*args, "--worker"]
    workers: list[Worker] = []
    lost: dict = {}
    if name == "1 process":
        workers.append(Worker(wrapper, args, env, cores[0], "single", folder))
    elif name == "2 workers 20 s apart":
        workers.append(Worker(wrapper, worker_args, env, cores[0], "A", folder))
        time.sleep(GAP)
        workers.append(Worker(wrapper, worker_args, env, cores[1 % len(cores)], "B", folder))
    else:
        killed_args = [*worker_args, "--claim_ttl", str(CLAIM_TTL)]
        workers += [Worker(wrapper, killed_args, env, cores[i % len(cores)], label, folder) for i, label in
                    enumerate("AB")]  # fmt: skip
        while True:  # until half the units are done
            status = _records(out).get("status")
            if status is not None and status.units and (status.done or 0) >= status.units / 2:
                break
            if any(w.poll() for w in workers):
                raise SystemExit(f"a worker ended before half the run was done:\n{workers[0].output()[-3000:]}")
            time.sleep(0.2)
        owner = next(w["owner"] for w in status.workers if w.get("label") == "B")
        held = _claims_of(out, owner)
        workers[1].proc.send_signal(signal.SIGKILL)
        workers[1].proc.wait()
        workers[1].poll()
        killed = time.monotonic()
        lost = {"units": len(held), "killed_at": killed - t0}
        time.sleep(GAP)
        workers.append(Worker(wrapper, killed_args, env, cores[1 % len(cores)], "C", folder))
        while _claims_of(out, owner) and not all(w.poll() for w in workers if w.label != "B"):
            time.sleep(0.2)
        lost["taken_over_after"] = time.monotonic() - killed
    while not all(w.poll() for w in workers):
        time.sleep(0.1)
    result = {"name": name, "wall": max(w.ended for w in workers) - t0, "workers": []}
    for w in workers:
        text = w.output()
        entry = {"label": w.label, "start": w.started - t0, "end": w.ended - t0, "exit": w.proc.returncode}
        if w.proc.returncode == 0:
            entry |= summary(text)
            hits = re.search(r"\((\d+) from the compilation cache\)", text)
            entry["cache_hits"] = int(hits.group(1)) if hits else 0
        elif w.label != "B":
            raise SystemExit(f"worker {w.label} failed (exit {w.proc.returncode}):\n{text[-3000:]}")
        result["workers"].append(entry)
    result["lost"] = lost
    return result


def workers_table(bench, store: str, pairs: int, wrapper: str, summary) -> list[str]:
    """The three runs of the module docstring on ``store`` (``bench``: ``bench/scale.py``'s ``Bench``), warm-up first;
    the RESULTS.md lines."""
    cores = sorted(os.sched_getaffinity(0))
    cache = bench.root / "worker-cache"
    env = {k: v for k, v in bench.env.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    base = ["--memory_budget", bench.sizes.budget, "--progress=false", "--compile_cache", str(cache)]
    names = ("1 process", "2 workers 20 s apart", "2 workers, one killed halfway, a third later")
    results = {}
    with tempfile.TemporaryDirectory(dir=bench.root) as folder:
        folder = pathlib.Path(folder)
        for name in ("1 process", *names):  # the first: an unmeasured warm-up that fills the cache
            out = str(bench.root / f"workers-{time.monotonic_ns()}")
            results[name] = scenario(name, store, out, wrapper, env, base, cores, folder, summary)
            print(f"{name}: wall {results[name]['wall']:.1f} s", flush=True)
    lines = [
        "",
        f"Independent workers (`--worker`, `--sweeps workers`): the same grid ({pairs} pair-layers), each process "
        f"pinned to one core, kernels from one shared `--compile_cache` filled by an unmeasured warm-up run. A "
        f"worker's units are the job's (about equal FLOPs, planned as for 64 workers); the kill scenario's claims "
        f"expire after {CLAIM_TTL:.0f} s (default 60 s).",
        "",
        "| run | wall s | worker: start-end s, units, pair-layers, kernels from the cache | work lost to the kill | "
        "kill to taken over |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for name in names:
        r = results[name]
        each = "; ".join(
            f"{w['label']}: {w['start']:.0f}-{w['end']:.0f}" + (
                f", {w['units']} units, {w['pair_layers']} pair-layers, {w['cache_hits']} of {w['compiles']} cached"
                if w["exit"] == 0 else " (killed)")
            for w in r["workers"]
        )  # fmt: skip
        lost = r["lost"]
        lost_text = f"{lost['units']} unit(s) held by B when killed at {lost['killed_at']:.0f} s" if lost else "-"
        taken = f"{lost['taken_over_after']:.0f}" if lost else "-"
        lines.append(f"| {name} | {r['wall']:.1f} | {each} | {lost_text} | {taken} |")
    one = results[names[0]]["wall"]
    lines += [
        "",
        f"- 2 workers started {GAP:.0f} s apart: {one / results[names[1]]['wall']:.2f}x the wall time of one process "
        f"(the ideal, one core each from their starts: {2 * one / (one + GAP):.2f}x).",
        f"- One of 2 killed halfway, a third {GAP:.0f} s later: {results[names[2]]['wall']:.1f} s against "
        f"{one:.1f} s for one process.",
    ]
    return lines
