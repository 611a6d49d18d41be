"""The seqsim job as ``jax.distributed`` processes pinned one to a core, for ``bench/scale.py`` (its docstring says
how they are run and measured): ``launch`` starts them and reads each one's summary line and peak RSS (``summary``),
``Bench`` writes the grids' stores once and runs the interleaved rounds, and ``work``, ``net`` and ``median_run`` read
a run's times.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from bench.grid import write_random_store

REPO = pathlib.Path(__file__).resolve().parents[1]
# A process's peak RSS, printed when it exits (absl's app.run ends by sys.exit, which runs atexit handlers).
WRAPPER = (
    "import atexit, resource, runpy, sys\n"
    "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
    "atexit.register(lambda: print('@@maxrss', rss(), flush=True))\n"
    "sys.argv = ['jobs.seqsim', *sys.argv[1:]]\n"
    "runpy.run_module('jobs.seqsim', run_name='__main__', alter_sys=True)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(store: str, out: str, n: int, budget: str, env: dict, langs: str = "all") -> dict:
    """The seqsim job as ``n`` processes, one core each; their summaries and RSS, and the wall time. A process that
    fails stops the others (they would wait for it)."""
    cores = sorted(os.sched_getaffinity(0))
    args = ["--store", store, "--out", out, "--langs", langs, "--memory_budget", budget, "--progress=false"]
    dist = [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={n}"] if n > 1 else []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        procs, logs = [], []
        for i in range(n):
            argv = [sys.executable, "-c", WRAPPER, *args, *dist, *([f"--process_id={i}"] if n > 1 else [])]
            pin = functools.partial(os.sched_setaffinity, 0, {cores[i % len(cores)]})
            logs.append(open(pathlib.Path(tmp) / f"{i}.log", "w+"))  # noqa: SIM115 - closed below
            procs.append(subprocess.Popen(argv, env=env, cwd=tmp, stdout=logs[-1], stderr=subprocess.STDOUT,
                                          preexec_fn=pin))  # fmt: skip
        failed = None  # the first process to fail: the others are stopped, and their exit (-9) is not the cause
        while any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            if failed is not None:
                for p in procs:
                    p.kill()
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode), None)
        wall = time.perf_counter() - t0
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
    if failed is not None:
        sys.exit(f"the seqsim job's process {failed} of {n} failed (exit {procs[failed].returncode}):\n"
                 f"{outputs[failed][-4000:]}")  # fmt: skip
    return {"wall": wall, "processes": [summary(o) for o in outputs]}


def parse_size(text: str) -> int:
    from engine.runtime.options import parse_size as parse

    return parse(text)


def summary(output: str) -> dict:
    """The numbers of a process's summary line and its RSS."""
    line = next(x for x in output.splitlines() if x.startswith("computed "))
    reads = re.search(r"read ([0-9.]+) times on average \(at most ([0-9.]+)\)", line)
    return {
        "pair_layers": int(re.search(r"computed (\d+) pair-layers", line).group(1)),
        "busy": float(re.search(r"busy ([0-9.]+) s", line).group(1)),
        "units": int(re.search(r"(\d+) units", line).group(1)),
        "peak_held": parse_size(re.search(r"peak (\S+ \S+) of a", line).group(1)),
        "reads": float(reads.group(1)) if reads else 0.0,
        "reads_max": float(reads.group(2)) if reads else 0.0,
        "compile": float(kernels.group(1)) if (kernels := re.search(r"kernels: ([0-9.]+) s", line)) else 0.0,
        "compiles": int(re.search(r"compiling (\d+)", line).group(1)) if kernels else 0,
        "rss": int(re.search(r"@@maxrss (\d+)", output).group(1)),
    }


class Bench:
    """One benchmark's runs: its flags, its ``bench.scale.Sizes``, and the folder its stores and outputs go in."""

    def __init__(self, args, sizes, root: pathlib.Path):
        self.args, self.sizes, self.root = args, sizes, root
        self.env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                        JAX_COMPILATION_CACHE_DIR=args.jax_cache or str(root / "jax-cache"),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")  # fmt: skip
        self.stores: dict[str, tuple[str, dict]] = {}

    def store(self, name: str, lengths: dict) -> str:
        if name not in self.stores:
            url = str(self.root / name)
            t = time.perf_counter()
            write_random_store(url, lengths, self.sizes.d, self.sizes.layers)
            frames = sum(int(n.sum()) for n in lengths.values())
            print(f"store {name}: {len(lengths)} languages, {sum(map(len, lengths.values()))} utterances, {frames} "
                  f"frames, written in {time.perf_counter() - t:.1f} s", flush=True)  # fmt: skip
            self.stores[name] = (url, lengths)
        return self.stores[name][0]

    def run(self, store: str, n: int, langs: str = "all") -> dict:
        out = self.root / f"sim-{time.monotonic_ns()}"
        result = launch(store, str(out), n, self.sizes.budget, self.env, langs)
        shutil.rmtree(out, ignore_errors=True)
        return result

    def rounds(self, configs: dict) -> dict:
        """``configs[name] = (store, processes, langs)``: a warm-up (compilation cache), then interleaved rounds."""
        for store, n, langs in configs.values() if self.args.warmup else ():
            self.run(store, n, langs)
        results = {name: [] for name in configs}
        for r in range(self.sizes.rounds):
            for name in list(configs)[:: 1 if r % 2 == 0 else -1]:
                results[name].append(self.run(*configs[name]))
                work = max(p["busy"] for p in results[name][-1]["processes"])
                print(f"round {r + 1} {name}: work {work:.1f} s, wall {results[name][-1]['wall']:.1f} s", flush=True)
        return results


def work(result: dict) -> float:
    return max(p["busy"] for p in result["processes"])


def net(result: dict) -> float:
    """The work time less kernel preparation: the longest of each process's busy time less its tracing and compiling
    (``engine.runtime.compiles``), the part that more processes can share."""
    return max(p["busy"] - p["compile"] for p in result["processes"])


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=work)[len(runs) // 2]
