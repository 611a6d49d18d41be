"""What the chunk checksums cost: the encode job and the seqsim job with and without them, in interleaved rounds.

"With" is format version 2 as the jobs write it (crc32c on every chunk, missing chunks refused on read, page CRCs in
Parquet); "without" patches the specs back to version 1's codecs (no crc32c) for the same run. Each round encodes
the demo set's first two languages with the packaged whisper-base into a fresh store (the model loaded once, so the
job's own work is timed: audio, features, encoder, store writes), then runs seqsim (all layers, one pair) on it;
medians of the rounds, the with/without ratio, the machine and its load.

Usage: python bench/checksums.py [--rounds 3] [--langs en,de] [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, record  # noqa: E402


@contextlib.contextmanager
def without_checksums():
    """The stores' specs as format version 1 wrote them: no crc32c codec (reads still refuse missing chunks)."""
    from engine.stores import schema, similarity

    saved = schema.STATES_CODECS, similarity.MATRIX_CODECS
    schema.STATES_CODECS = tuple(c for c in schema.STATES_CODECS if c["name"] != "crc32c")
    similarity.MATRIX_CODECS = tuple(c for c in similarity.MATRIX_CODECS if c["name"] != "crc32c")
    original_lengths_spec = schema.lengths_spec

    def lengths_spec(kvstore, *, n_utterances):
        spec = original_lengths_spec(kvstore, n_utterances=n_utterances)
        spec["metadata"]["codecs"] = spec["metadata"]["codecs"][:1]  # bytes only
        return spec

    schema.lengths_spec = lengths_spec
    import engine.stores.layers as layers

    layers.lengths_spec = lengths_spec
    try:
        yield
    finally:
        schema.STATES_CODECS, similarity.MATRIX_CODECS = saved
        schema.lengths_spec = layers.lengths_spec = original_lengths_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--langs", default="en,de")
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()

    from engine.models.whisper.encoder import WhisperEncoder
    from engine.models.whisper.loaded import load_whisper
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure

    langs = tuple(args.langs.split(","))
    whisper = load_whisper(EncodeConfig.__dataclass_fields__["model"].default)
    load_before = os.getloadavg()[0]
    times = {("encode", v): [] for v in ("with", "without")} | {("seqsim", v): [] for v in ("with", "without")}
    n_utterances = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms up (compilation) and is not counted
            for variant in ("with", "without") if r % 2 == 0 else ("without", "with"):
                out = pathlib.Path(tmp) / f"{variant}{r}"
                manager = contextlib.nullcontext() if variant == "with" else without_checksums()
                with manager:
                    config = configure(EncodeConfig, out=str(out / "store"), langs=langs, progress=False)
                    t0 = time.perf_counter()
                    summary = run_encode(config, encoder=WhisperEncoder(whisper))
                    t1 = time.perf_counter()
                    run_similarity(
                        configure(
                            SimilarityConfig, store=str(out / "store"), out=str(out / "sim"), measures=("seqsim",),
                            progress=False,
                        )
                    )  # fmt: skip
                    t2 = time.perf_counter()
                n_utterances = summary.done
                if r:
                    times["encode", variant].append(t1 - t0)
                    times["seqsim", variant].append(t2 - t1)
                print(f"round {r} {variant:>7}: encode {t1 - t0:.2f} s, seqsim {t2 - t1:.2f} s", flush=True)
    load_after = os.getloadavg()[0]
    rows = []
    for job in ("encode", "seqsim"):
        with_, without = (statistics.median(times[job, v]) for v in ("with", "without"))
        rows.append(f"| {job} | {with_:.2f} | {without:.2f} | {100 * (with_ / without - 1):+.1f}% |")
    isa = "avx512" if "avx512f" in pathlib.Path("/proc/cpuinfo").read_text() else "avx2"
    text = "\n".join(
        [
            f"`python bench/checksums.py --rounds {args.rounds} --langs {args.langs}`, "
            f"{datetime.date.today().isoformat()}; {machine()}; ISA {isa}; load average {load_before:.2f} before, "
            f"{load_after:.2f} after (the benchmark's own threads count).",
            "",
            f"The demo set's {', '.join(langs)} ({n_utterances} utterances), whisper-base, every layer, float32; "
            f"seqsim: one pair, every layer. Medians of {args.rounds} interleaved rounds after a warm-up round.",
            "",
            "| job | with checksums (s) | without (s) | cost |",
            "| --- | ---: | ---: | ---: |",
            *rows,
        ]
    )
    print(text)
    if args.record:
        record(args.record, "chunk checksums (bench/checksums.py)", text)


if __name__ == "__main__":
    main()
