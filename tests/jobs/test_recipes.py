"""The launch recipes of docs/recipes, run as a user would run them, against stand-ins for the schedulers:

- the SLURM array script, under a stand-in for ``sbatch --array``: each task a local process with the environment a
  SLURM array task gets, some started late, one SIGKILLed by the "scheduler" (as a preemption does) and requeued;
- the Kubernetes indexed Job: the manifest parsed, each pod's command line built as the kubelet builds it
  (``$(VAR)`` from the container's env, ``JOB_COMPLETION_INDEX`` set) and run;
- the Ray recipe, on a local Ray (a test-only dependency).

Each output must equal a 1-process run's and be clean.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest
import yaml

from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from tests.jobs.conftest import REPO
from tests.jobs.test_scaleout import assert_same_store
from tests.jobs.test_workers import TINY_UNITS, assert_clean
from tests.jobs.workers import kill_group, start_worker, units_done, wait_for
from tests.waits import patient

RECIPES = REPO / "docs" / "recipes"
BABELGRID = f"{sys.executable} -m jobs.cli"  # `babelgrid`, from this checkout


def sbatch_array(script: pathlib.Path) -> tuple[int, int]:
    """The ``#SBATCH --array=A-B`` range the script asks for."""
    found = re.search(r"^#SBATCH --array=(\d+)-(\d+)", script.read_text(), re.M)
    return int(found.group(1)), int(found.group(2))


def slurm_task(script: pathlib.Path, index: int, env: dict, *, job_id: int = 4242, restart: int = 0,
               count: int = 3):  # fmt: skip
    """Array task ``index`` of ``script`` as SLURM starts one (``bash script`` with the variables sbatch sets)."""
    slurm = {
        "SLURM_JOB_ID": str(job_id + 1 + index), "SLURM_ARRAY_JOB_ID": str(job_id),
        "SLURM_ARRAY_TASK_ID": str(index), "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": str(count - 1),
        "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_RESTART_COUNT": str(restart), "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "babelgrid", "SLURMD_NODENAME": f"node{index}",
        "SLURM_SUBMIT_DIR": str(REPO),
    }  # fmt: skip
    return subprocess.Popen(
        ["bash", str(script)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
                                              **slurm, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


@pytest.mark.slow
def test_the_slurm_array_recipe_runs_its_tasks_late_killed_and_requeued(worker_store, tmp_path):
    store = worker_store
    script = RECIPES / "slurm_array.sbatch"
    assert sbatch_array(script)[1] > 0  # an array, not one task
    out = tmp_path / "sim"
    env = {"JOB": "seqsim", "STORE": str(store), "OUT": str(out), "CACHE": str(tmp_path / "jax-cache"),
           "ARGS": f"--unit_gflops {TINY_UNITS} --claim_ttl 3", "BABELGRID": BABELGRID,
           "BABELGRID_FAULT_DELAY": "after_matrix:0.3"}  # fmt: skip
    first = slurm_task(script, 0, env)
    wait_for(lambda: units_done(out, "seqsim") >= 1, "array task 0's first unit", procs=[first])
    second = slurm_task(script, 1, env)  # a GPU freed up: the next task starts late
    time.sleep(1)
    kill_group(first)  # preempted
    assert first.wait(timeout=patient(60)) == -9
    third = slurm_task(script, 2, env)
    requeued = slurm_task(script, 0, env, restart=1)  # --requeue: task 0 again, alone
    outputs = [p.communicate(timeout=patient(300))[0] for p in (second, third, requeued)]
    for p, o in zip((second, third, requeued), outputs, strict=True):
        assert p.returncode == 0, o
    assert "array task 0 of job 4242" in outputs[2] and "restart 1" in outputs[2], outputs[2]
    one = tmp_path / "one"
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(one), progress=False))
    assert_same_store(out, one)
    assert_clean(out)
    assert any((tmp_path / "jax-cache").iterdir()), "the tasks shared no compilation cache"


def slurm_command_line(script: pathlib.Path, env: dict) -> list[str]:
    """The command line array task 0 of ``script`` execs, with ``echo`` standing in for babelgrid."""
    proc = slurm_task(script, 0, {"BABELGRID": "echo", **env})
    output = proc.communicate(timeout=patient(30))[0]
    assert proc.returncode == 0, output
    return shlex.split(output.splitlines()[-1])


def test_the_slurm_recipe_keeps_an_empty_args_empty(tmp_path):
    """An empty (or unset) ARGS adds no flags: the recipe once turned ``ARGS=`` into ``--dtype bfloat16
    --memory_budget 40GiB``, so its result differed from the float32 run of the same command."""
    script = RECIPES / "slurm_array.sbatch"
    where = {"STORE": str(tmp_path / "store"), "OUT": str(tmp_path / "out"), "CACHE": str(tmp_path / "cache")}
    plain = ["seqsim", "--store", where["STORE"], "--out", where["OUT"], "--worker", "--compile_cache",
             where["CACHE"], "--progress=false"]  # fmt: skip
    assert slurm_command_line(script, {**where, "ARGS": ""}) == plain
    unset = {k: v for k, v in os.environ.items() if k != "ARGS"}
    proc = subprocess.run(["bash", str(script)], cwd=REPO, env={**unset, **where, "BABELGRID": "echo"},
                          capture_output=True, text=True, timeout=patient(30))  # fmt: skip
    assert proc.returncode == 0 and shlex.split(proc.stdout.splitlines()[-1]) == plain, proc.stdout + proc.stderr
    assert slurm_command_line(script, {**where, "ARGS": "--dtype bfloat16"}) == [*plain, "--dtype", "bfloat16"]


def kubelet_command(manifest: dict, overrides: dict) -> tuple[list[str], dict]:
    """The pod's command line as the kubelet builds it: ``command`` + ``args``, ``$(VAR)`` expanded from the
    container's env (``overrides`` winning); and that env."""
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container.get("env", [])} | overrides
    line = [*container["command"], *container.get("args", [])]
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), part) for part in line], env


@pytest.mark.slow
def test_the_kubernetes_indexed_job_manifest_runs_as_its_pods(worker_store, tmp_path):
    store = worker_store
    manifest = yaml.safe_load((RECIPES / "kubernetes_indexed_job.yaml").read_text())
    spec = manifest["spec"]
    assert manifest["kind"] == "Job" and spec["completionMode"] == "Indexed" and spec["completions"] > 1
    out = tmp_path / "sim"
    line, env = kubelet_command(manifest, {"STORE": str(store), "OUT": str(out), "CACHE": str(tmp_path / "cache")})
    assert line[:2] == ["babelgrid", "seqsim"] and "--worker" in line, line
    command = ["-m", "jobs.cli", *line[1:]]
    pods = [start_worker(command, {**env, "JOB_COMPLETION_INDEX": str(i), "HOSTNAME": f"babelgrid-seqsim-{i}"})
            for i in range(2)]  # fmt: skip
    for pod in pods:
        output = pod.communicate(timeout=patient(300))[0]
        assert pod.returncode == 0, output
    one = tmp_path / "one"
    flags = {a: b for a, b in zip(line, line[1:], strict=False) if a.startswith("--") and not b.startswith("--")}
    run_similarity(
        configure(
            SimilarityConfig,
            store=str(store),
            out=str(one),
            progress=False,
            **{name: flags[f"--{name}"] for name in ("dtype", "memory_budget") if f"--{name}" in flags},
        )
    )  # as the pods ran
    assert_same_store(out, one)
    assert_clean(out)


@pytest.mark.slow
def test_the_ray_recipe_runs_the_command_as_tasks_on_a_local_ray(worker_store, tmp_path):
    store = worker_store
    out = tmp_path / "sim"
    command = [sys.executable, str(RECIPES / "ray_workers.py"), "--workers", "2", "--gpus", "0", "--",
               sys.executable, "-m", "jobs.seqsim", "--store", str(store), "--out", str(out), "--unit_gflops",
               TINY_UNITS, "--claim_ttl", "3", "--progress=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=patient(600))
    assert proc.returncode == 0, shlex.join(command) + "\n" + proc.stdout + proc.stderr
    assert "2 tasks, exit statuses [0, 0]" in proc.stdout, proc.stdout
    one = tmp_path / "one"
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(one), progress=False))
    assert_same_store(out, one)
    assert_clean(out)
