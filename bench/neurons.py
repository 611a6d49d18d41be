"""What the feed-forward activation counts cost against encoding (issue 48: at most 10% more): the packaged
whisper-base on one batch of 8 windows of 30 s, the encoder returning every layer (the encode job's step) against the
same forward counting the units (``LoadedWhisper.ffn_active``, the neurons job's step), in interleaved rounds.

Usage: python bench/neurons.py [--rounds 5] [--record bench/RESULTS.md]. Run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import interleaved_times, machine, record  # noqa: E402


def main() -> None:
    import jax

    from engine.models.family import load_encoder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()
    loaded = load_encoder(None).loaded
    mel = np.random.default_rng(0).standard_normal((args.batch, loaded.dims.n_mels, 3000)).astype(np.float32)
    frames = np.full(args.batch, loaded.dims.n_audio_ctx, np.int32)
    before = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    started = datetime.datetime.now(datetime.timezone.utc)
    times = interleaved_times(
        {
            "encode (every layer)": lambda: jax.block_until_ready(loaded.encode(mel)),
            "forward with feed-forward counts": lambda: loaded.ffn_active(mel, frames),
        },
        args.rounds,
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["forward with feed-forward counts"] / median["encode (every layer)"]
    after = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 min) {before} before, "
        f"{after} after.",
        "",
        f"Command: `python bench/neurons.py --rounds {args.rounds}`; whisper-base, {args.batch} windows of 30 s, "
        f"medians of {args.rounds} interleaved rounds after a warm-up call of each.",
        "",
        "| step | seconds (median) | rounds |",
        "| --- | ---: | --- |",
        *(f"| {name} | {median[name]:.3f} | {', '.join(f'{t:.3f}' for t in ts)} |" for name, ts in times.items()),
        "",
        f"- counts against encoding: **{ratio:.2f}x** (goal <= 1.10: {'met' if ratio <= 1.10 else 'not met'})",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "neurons: feed-forward counts against encoding (bench/neurons.py)", text)


if __name__ == "__main__":
    main()
