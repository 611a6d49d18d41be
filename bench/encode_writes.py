"""Benchmark: encode at scale, compute or storage. The encode job's store path (``LayerStore``: zstd-1, crc32c, the
kvstore) against the encoder alone, in MB/s of states per process, to a local disk and to an S3 server (moto, started
here as tests/jobs/test_remote.py starts it), and what those rates mean for FLEURS test x whisper-large-v3.

    python bench/encode_writes.py [--dtype bfloat16] [--repeats 3] [--device h100] [--hosts 1,8,64] [--record FILE]

Inputs: bench/encode_job.py's (the FLEURS sample clips, or the demo set; the packaged whisper-base, every layer),
states in the storage dtype as the encoder hands them over. A rate is valid state bytes (what the store holds,
padding not counted) over seconds. Each round runs, in turn: the encoder alone (same batches, to the host), the
writes to a local folder, the writes to S3, and the plan's own quick calibration
(``engine.pipelines.stages.writes.calibrate_write_rate``, what ``--plan`` uses); medians of the rounds. Then the
encode plan of FLEURS test x large-v3 (``bench/plan_fleurs.py``'s lengths) on ``--device``, its storage lines at
each measured rate: bound by the encoder or by writing, per host count.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record, whisper_plan_inputs  # noqa: E402
from bench.encode_job import Prepared  # noqa: E402
from bench.scale import grid  # noqa: E402
from engine.models.whisper.dims import preset  # noqa: E402
from engine.models.whisper.encoder import WhisperShape  # noqa: E402
from engine.pipelines.stages.encode_plan import plan_encode  # noqa: E402
from engine.pipelines.stages.writes import calibrate_write_rate, storage_lines  # noqa: E402
from engine.runtime.devices import DEVICES, get_device  # noqa: E402

BUCKET = "babelgrid-bench"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def moto_server() -> tuple[subprocess.Popen, str]:
    """A moto S3 server in a process of its own (not a thread of this one: it would share our GIL) with one bucket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")  # fmt: skip
    for _ in range(100):
        try:
            client.create_bucket(Bucket=BUCKET)
            return proc, endpoint
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.1)
    proc.kill()
    sys.exit("the moto S3 server did not start")


def empty_bucket(endpoint: str) -> None:
    import boto3

    bucket = boto3.resource("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing").Bucket(BUCKET)  # fmt: skip
    bucket.objects.all().delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="h100", choices=list(DEVICES))
    parser.add_argument("--hosts", default="1,8,64")
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()
    hosts = tuple(int(h) for h in args.hosts.split(","))
    load0, started = os.getloadavg(), datetime.datetime.now(datetime.UTC)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-encode-writes-"))
    server, endpoint = moto_server()
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)  # what a user's job reads (BUILD.md, S3)
    times: dict[str, list[float]] = {"encoder alone": [], "writes, local folder": [], "writes, S3 (moto)": []}
    quick: list[float] = []
    try:
        p = Prepared(tmp, args.batch, args.dtype)
        p.write_all(str(tmp / "warm"))
        for r in range(args.repeats):
            t = time.perf_counter()
            p.encode_all()
            times["encoder alone"].append(time.perf_counter() - t)
            t = time.perf_counter()
            p.write_all(str(tmp / f"local-{r}"))
            times["writes, local folder"].append(time.perf_counter() - t)
            shutil.rmtree(tmp / f"local-{r}")
            t = time.perf_counter()
            p.write_all(f"s3://{BUCKET}/round-{r}")
            times["writes, S3 (moto)"].append(time.perf_counter() - t)
            empty_bucket(endpoint)  # the server holds objects in memory
            quick.append(calibrate_write_rate(WhisperShape(p.whisper.dims), p.layers, args.dtype))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    rates = {name: p.nbytes / statistics.median(t) for name, t in times.items()}

    # FLEURS test x large-v3 on the device, at each measured rate.
    large = preset("large-v3")
    frames = {lang: n.astype(int) for lang, n in grid(102, None, 1.0, 1.0).items()}
    layers = tuple(range(large.n_encoder_layers_out))
    seconds = float(sum(n.sum() for n in frames.values())) / 50
    shape, samples, rate = whisper_plan_inputs(large, frames, "bfloat16")
    plan = plan_encode(shape, samples, seconds, layers=layers, long_audio="window", dtype="bfloat16",
                       compute_dtype="bfloat16", batch_size=8, prefetch=8, device=get_device(args.device),
                       model="large-v3 (dimensions only)", rate=rate, write_rate=rates["writes, local folder"],
                       hosts=hosts)  # fmt: skip
    encoder_s = next(s.seconds_device for s in plan.stages if s.name == "encoder")
    states = next(s.bytes_written for s in plan.stages if s.name == "encoder")
    load1 = os.getloadavg()
    lines = [
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 min) {load0[0]:.1f}, "
        f"{load0[1]:.1f}, {load0[2]:.1f} before, {load1[0]:.1f}, {load1[1]:.1f}, {load1[2]:.1f} after.",
        "",
        f"Command: `{' '.join(['python', 'bench/encode_writes.py', *sys.argv[1:]])}`"
        + f": {len(p.utts)} utterances from {p.spec.split(':')[0]} ({p.audio_s:.0f} s of audio), whisper-base, all "
        f"{len(p.layers)} layers stored as {args.dtype}: {p.nbytes / 1e6:.0f} MB of valid states; medians of "
        f"{args.repeats} interleaved rounds.",
        "",
        "| one process | s | MB/s of states | against the encoder |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, t in times.items():
        rate = rates[name]
        lines.append(f"| {name} | {statistics.median(t):.2f} | {rate / 1e6:.0f} | "
                     f"{rate / rates['encoder alone']:.2f}x |")  # fmt: skip
    lines.append(f"| the plan's quick calibration (local folder) | | {statistics.median(quick) / 1e6:.0f} | "
                 f"{statistics.median(quick) / rates['encoder alone']:.2f}x |")  # fmt: skip
    lines += ["", f"FLEURS test x large-v3, every layer in bfloat16, on {args.device}:", ""]
    for name in ("writes, local folder", "writes, S3 (moto)"):
        lines += [f"- at the {name} rate:"]
        lines += [f"  - {line}" for line in storage_lines(states, encoder_s, rates[name], n_layers=len(layers),
                                                           dtype="bfloat16", where=args.device, hosts=hosts,
                                                           rate_source=f"{name}, measured here")]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "encode: compute or storage (bench/encode_writes.py)", text)


if __name__ == "__main__":
    main()
