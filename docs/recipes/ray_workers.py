"""babelgrid on a Ray cluster: the same command started as N Ray tasks, each an independent --worker on one GPU.

    python docs/recipes/ray_workers.py --workers 16 -- babelgrid seqsim --store gs://b/fleurs-v3 \
        --out gs://b/fleurs-v3-sim --compile_cache /shared/jax-cache --dtype bfloat16
    python docs/recipes/ray_workers.py --address auto --workers 8 --gpus 1 -- babelgrid decode --store ... --out ...

Ray places the tasks as GPUs free up and retries a task whose node died (``--retries``); every task runs the command
with ``--worker`` added, and takes the next unit nobody holds in the output store. Nothing but the store joins them,
so tasks may also be added later (run this again with more workers) or the whole run resumed. Each task's output
goes to the driver's log, prefixed by Ray with its task. Exit status: 0 when every task exited 0.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import ray


class WorkerKilled(RuntimeError):
    """The worker process was killed (preempted, out of memory): Ray retries the task."""


@ray.remote(max_calls=1, retry_exceptions=[WorkerKilled])
def worker(index: int, command: list[str]) -> int:
    """One --worker process of ``command``; its exit status. A worker killed by a signal raises ``WorkerKilled``, which
    Ray retries, as it retries a task whose node died; a worker that fails on its own (exit 1: a wrong flag, another
    run holding the output) is not retried, and its status is returned."""
    env = dict(os.environ, BABELGRID_WORKER_LABEL=f"ray task {index}")
    code = subprocess.run([*command, "--worker"], env=env, check=False).returncode
    if code < 0:
        raise WorkerKilled(f"worker {index} was killed by signal {-code}")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None, help="the Ray cluster (auto, ray://host:10001); default: local")
    parser.add_argument("--workers", type=int, default=4, help="tasks to start")
    parser.add_argument("--gpus", type=float, default=1, help="GPUs per task (0 on a CPU cluster)")
    parser.add_argument("--cpus", type=float, default=1, help="CPUs per task")
    parser.add_argument("--retries", type=int, default=3, help="times Ray retries a task whose node died")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the babelgrid command, without --worker")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, such as: -- babelgrid seqsim --store S --out O")
    ray.init(address=args.address, include_dashboard=False)
    task = worker.options(num_gpus=args.gpus, num_cpus=args.cpus, max_retries=args.retries)
    codes = ray.get([task.remote(i, command) for i in range(args.workers)])
    print(f"ray_workers: {len(codes)} tasks, exit statuses {codes}")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
