"""Benchmark: the layer store's inner-chunk codecs on real hidden states, bytes stored and MB/s per core.

States: whisper-base run over the FLEURS sample (../shared/data/fleurs-sample, else the demo set) with every layer
kept, exactly the per-utterance states the encode job writes (``bench/encode_job.Prepared``), stored as float32 and as
bfloat16 (the float32 states cast, as ``--dtype bfloat16 --compute_dtype float32`` stores them). Each language's
shards are padded to its longest utterance, as in the store: the codecs pass over the padding too.

Every contender is the store's layout (``schema.states_spec``: one shard per utterance, one inner chunk per layer) with
its inner codecs replaced; crc32c stays last in every one. Writes go to a ``memory://`` kvstore with TensorStore's
``data_copy_concurrency`` limited to 1 and one shard in flight, so the speeds are one core's: encode (write + commit)
and decode (read back every layer). Bytes do not depend on the machine's load; the speeds do.

Usage: python bench/codecs.py [--utterances 24] [--repeats 3] [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ml_dtypes  # noqa: E402
import tensorstore as ts  # noqa: E402

from bench.common import Run, record  # noqa: E402
from bench.encode_job import Prepared  # noqa: E402
from engine.axes import UTTERANCE  # noqa: E402
from engine.stores.schema import CRC32C, STATES_CODECS, states_spec  # noqa: E402

RAW = [{"name": "bytes", "configuration": {"endian": "little"}}]


def blosc(cname: str, level: int, shuffle: str):
    return lambda itemsize: RAW + [{"name": "blosc", "configuration": {
        "cname": cname, "clevel": level, "shuffle": shuffle, "typesize": itemsize, "blocksize": 0}}]  # fmt: skip


# name -> inner codecs before crc32c, given the dtype's itemsize
CONTENDERS = {
    "none": lambda i: RAW,
    "zstd 1 (today)": lambda i: RAW + [{"name": "zstd", "configuration": {"level": 1}}],
    "zstd -1": lambda i: RAW + [{"name": "zstd", "configuration": {"level": -1}}],  # zstd's fast levels
    "zstd -3": lambda i: RAW + [{"name": "zstd", "configuration": {"level": -3}}],
    "zstd -7": lambda i: RAW + [{"name": "zstd", "configuration": {"level": -7}}],
    "zstd 3": lambda i: RAW + [{"name": "zstd", "configuration": {"level": 3}}],
    "zstd 5": lambda i: RAW + [{"name": "zstd", "configuration": {"level": 5}}],
    "gzip 1": lambda i: RAW + [{"name": "gzip", "configuration": {"level": 1}}],
    "blosc lz4 5, byte shuffle": blosc("lz4", 5, "shuffle"),
    "blosc zstd 1, byte shuffle": blosc("zstd", 1, "shuffle"),
    "blosc zstd 1, bit shuffle": blosc("zstd", 1, "bitshuffle"),
}


def spec_with(codecs: list[dict], **shape) -> dict:
    spec = states_spec({"driver": "memory"}, **shape)
    spec = copy.deepcopy(spec)
    spec["metadata"]["codecs"][0]["configuration"]["codecs"] = [*codecs, dict(CRC32C)]
    return spec


def measure(by_lang: dict, dtype: str, codecs: list[dict]) -> tuple[int, float, float]:
    """(bytes stored, seconds to write and commit, seconds to read every layer back) of every language's shards."""
    stored, t_write, t_read = 0, 0.0, 0.0
    for states_list in by_lang.values():
        n_layers, _, embed = states_list[0].shape
        max_frames = max(s.shape[1] for s in states_list)
        spec = spec_with(codecs, n_layers=n_layers, n_utterances=len(states_list), max_frames=max_frames,
                         embed=embed, dtype=dtype)  # fmt: skip
        one_core = ts.Context({"data_copy_concurrency": {"limit": 1}})  # and a memory kvstore of its own
        arr = ts.open(spec, create=True, context=one_core).result()
        shards = []
        for s in states_list:  # the padded shard, as LanguageArrays builds it (not timed: the store does it too)
            shard = np.zeros((n_layers, max_frames, embed), s.dtype)
            shard[:, : s.shape[1]] = s
            shards.append(shard)
        t = time.perf_counter()
        for u, shard in enumerate(shards):
            arr[ts.d[UTTERANCE][u]].write(shard).commit.result()
        t_write += time.perf_counter() - t
        t = time.perf_counter()
        for layer in range(n_layers):
            arr[layer].read().result()
        t_read += time.perf_counter() - t
        kv = arr.kvstore
        stored += sum(len(kv.read(k).result().value) for k in kv.list().result())
    return stored, t_write, t_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=24, help="the first N utterances of the sample")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    args = parser.parse_args()
    run = Run()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    try:
        p = Prepared(tmp, 8, "float32")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    chosen = p.per_utt[: args.utterances]
    n_frames = sum(s.shape[1] for _, _, s in chosen)
    lines = [
        run.line(),
        f"Command: python bench/codecs.py --utterances {args.utterances} --repeats {args.repeats}",
        f"States: {len(chosen)} utterances ({n_frames} frames, languages {sorted({lang for lang, _, _ in chosen})}) "
        f"of {p.spec.split(':')[0]} through {p.whisper.checkpoint.name}, all {len(p.layers)} layers, f32 compute; "
        f"shards padded to each language's longest utterance. Median of {args.repeats} interleaved rounds, one core "
        "(data_copy_concurrency 1, one shard in flight, memory:// kvstore). MB/s are of valid states (the job's MB/s "
        "written); 'ratio' is raw valid bytes / bytes stored (crc32c and shard indexes included).",
        "",
        "| dtype | codecs (then crc32c) | bytes stored | ratio | write MB/s per core | read MB/s per core |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for dtype, np_dtype in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16)):
        by_lang: dict[str, list] = {}
        for lang, _, s in chosen:
            by_lang.setdefault(lang, []).append(s.astype(np_dtype))
        valid = sum(s.nbytes for ss in by_lang.values() for s in ss)
        results = {name: [] for name in CONTENDERS}
        for _ in range(args.repeats):  # interleaved: a slow spell hits every contender of the round alike
            for name, codecs in CONTENDERS.items():
                results[name].append(measure(by_lang, dtype, codecs(np.dtype(np_dtype).itemsize)))
        for name, runs in results.items():
            stored = runs[0][0]
            write_s = float(np.median([r[1] for r in runs]))
            read_s = float(np.median([r[2] for r in runs]))
            lines.append(f"| {dtype} | {name} | {stored:,} | {valid / stored:.2f} | {valid / write_s / 1e6:.0f} | "
                         f"{valid / read_s / 1e6:.0f} |")  # fmt: skip
        print("\n".join(lines), flush=True)
    lines.append("")
    lines.append(f"{run.line()} (at the end)")
    lines.append(f"Today's default: {[c['name'] for c in STATES_CODECS]}.")
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "layer store codecs on real states", text)


if __name__ == "__main__":
    main()
