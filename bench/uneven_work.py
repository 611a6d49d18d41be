"""Uneven work over two processes: languages of 10 and 200 utterances, encode then seqsim, with work claims.

    python bench/uneven_work.py [--model PATH] [--small 10] [--big 200] [--record bench/RESULTS.md]

Two local ``jax.distributed`` processes (CPU) share the work through claim keys (``engine.runtime.claims``); each
prints the seconds from the start of its work to the end of its last unit ("busy"). The table gives both and their
ratio. The static split this replaced gave each process a contiguous share of each language aligned to 256
utterances: with 10 and 200 utterances, process 0 got all of both languages and process 1 nothing.

Clips are synthetic tones of 1 to 3 s (one 30 s window each); the model is the packaged whisper-base unless --model.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import record  # noqa: E402

SAMPLE_RATE = 16000


def write_clips(root: pathlib.Path, sizes: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for lang, n in sizes.items():
        (root / lang).mkdir(parents=True)
        for i in range(n):
            t = np.arange(int(rng.uniform(1.0, 3.0) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / lang / f"utt{i:04d}.wav", x.astype(np.float32), SAMPLE_RATE)


def two_processes(module: str, args: list[str]) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    dist = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--progress=false"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module, *args, *dist, f"--process_id={i}"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode:
            sys.exit(f"{module} failed:\n{out}")
    return outputs


def busy(output: str) -> float:
    return float(re.search(r"busy ([0-9.]+) s", output).group(1))


def units(output: str, job: str) -> str:
    if job == "encode":
        return re.search(r"encoded (\d+) utterances", output).group(1) + " utt"
    return re.search(r"computed (\d+) pair-layers", output).group(1) + " pair-layers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--big", type=int, default=200)
    parser.add_argument("--record", default=None, help="record the table in this markdown file")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="babelgrid-scaleout-"))
    try:
        write_clips(tmp / "clips", {"small": args.small, "big": args.big})
        model = ["--model", args.model] if args.model else []
        store, sim = tmp / "store", tmp / "sim"
        rows = []
        encode = two_processes("jobs.encode", [*model, "--dataset", f"folder:{tmp / 'clips'}", "--out", str(store)])
        seqsim = two_processes("jobs.seqsim", ["--store", str(store), "--out", str(sim)])
        for job, outputs in (("encode", encode), ("seqsim", seqsim)):
            b = [busy(o) for o in outputs]
            rows.append(
                f"| {job} | {b[0]:.1f} s ({units(outputs[0], job)}) | {b[1]:.1f} s ({units(outputs[1], job)}) "
                f"| {max(b) / max(min(b), 1e-9):.2f}x |"
            )
        table = "\n".join(
            [
                f"languages of {args.small} and {args.big} utterances, 2 processes, "
                f"model {args.model or 'packaged whisper-base'}",
                "",
                "| job | process 0 busy | process 1 busy | ratio |",
                "| --- | ---: | ---: | ---: |",
                *rows,
            ]
        )
        print(table)
        if args.record:
            record(pathlib.Path(args.record), "uneven work over two processes (bench/uneven_work.py)", table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
