"""Benchmark: layouts for the layer store's ``states`` array, measured on real whisper-base hidden states.

For each layout and storage dtype it writes ``--utterances`` whole utterances (every layer, zero-padded to
``--max-frames``, ``--in-flight`` writes at once) into a fresh local ``file://`` array, then reads one layer of the
whole language, cold (the files evicted from the page cache with posix_fadvise) and warm. It prints the median of
``--repeats`` runs (layouts interleaved, so a busy neighbour hurts them alike) as a markdown table:

  write MB/s   valid bytes (frames < n_frames, storage dtype) written per second, fsync included
  read MB/s    valid bytes of one layer of every utterance read per second
  files, disk  files and allocated bytes of the array; ``×`` = disk bytes / valid bytes

and the same for the babelgrid writer (``LanguageArrays.write_utterance``: cast, pad, shard, then the lengths marker).

Usage:  python bench/store.py [--utterances 200] [--repeats 3] [--dtypes float32,bfloat16]

States are whisper-base's, encoded here from the FLEURS clips in ../shared/data/fleurs-sample (``--clips`` of
them, reused round-robin); without the clips, Gaussian states with whisper-like outlier channels stand in.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorstore as ts

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.models.whisper.dims import preset  # noqa: E402
from engine.stores.layers import LayerStore  # noqa: E402
from engine.stores.schema import StoreInfo  # noqa: E402
from engine.stores.utterances import UtteranceRow  # noqa: E402

RAW = [{"name": "bytes", "configuration": {"endian": "little"}}]


def zstd(level: int) -> list[dict]:
    return RAW + [{"name": "zstd", "configuration": {"level": level}}]


def blosc_lz4(itemsize: int) -> list[dict]:
    config = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": itemsize, "blocksize": 0}
    return RAW + [{"name": "blosc", "configuration": config}]


# name -> (chunking, inner codecs(itemsize), frames per inner chunk or None for max_frames)
LAYOUTS = {
    "shard/utt, chunk/layer, raw": ("shard", lambda i: RAW, None),
    "shard/utt, chunk/layer, zstd1": ("shard", lambda i: zstd(1), None),
    "shard/utt, chunk/layer, zstd3": ("shard", lambda i: zstd(3), None),
    "shard/utt, chunk/layer, blosc-lz4": ("shard", blosc_lz4, None),
    "shard/utt, chunk/layer×250 frames, raw": ("shard", lambda i: RAW, 250),
    "chunk/(layer, utt), raw, no shard": ("layer", lambda i: RAW, None),
    "chunk/utt (all layers), zstd1, no shard": ("utt", lambda i: zstd(1), None),
}


def layout_spec(name: str, path: str, shape: list[int], dtype: str, itemsize: int) -> dict:
    chunking, codecs, frames = LAYOUTS[name]
    n_layers, _, max_frames, embed = shape
    metadata = {
        "shape": shape,
        "data_type": dtype,
        "fill_value": 0,
        "dimension_names": ["layer", "utterance", "frame", "embed"],
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
    }
    outer = [1 if chunking == "layer" else n_layers, 1, max_frames, embed]
    metadata["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": outer}}
    if chunking == "shard":
        inner = {"chunk_shape": [1, 1, frames or max_frames, embed], "codecs": codecs(itemsize)}
        metadata["codecs"] = [{"name": "sharding_indexed", "configuration": inner}]
    else:
        metadata["codecs"] = codecs(itemsize)
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": path}, "metadata": metadata}


def real_states(n_clips: int) -> list[np.ndarray]:
    """``f32[layer, frame, embed]`` of the first FLEURS clips, every whisper-base layer; synthetic if none."""
    clips_dir = REPO.parent / "shared" / "data" / "fleurs-sample"
    clips = sorted(p for p in clips_dir.glob("*.ogg"))[:n_clips] if clips_dir.is_dir() else []
    if not clips:
        print("no FLEURS clips found: Gaussian stand-in states (compression ratios will be off)", file=sys.stderr)
        rng = np.random.default_rng(0)
        out = []
        for n in rng.integers(300, 1000, n_clips):
            x = rng.standard_normal((8, n, 512), np.float32)
            x[:, :, :4] *= 50  # whisper's few large channels
            out.append(x)
        return out
    from engine.data.audio import load_audio
    from engine.models.whisper.loaded import load_whisper

    w = load_whisper()
    out = []
    for clip in clips:
        mel, valid = w.features(load_audio(clip))
        states = np.asarray(w.encode(mel))  # [layer, window, 1500, embed]
        out.append(np.concatenate([states[:, k, :v] for k, v in enumerate(valid)], axis=1))
    return out


def evict(path: str) -> None:
    for folder, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(folder, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def disk_usage(path: str) -> tuple[int, int]:
    files = nbytes = 0
    for folder, _, names in os.walk(path):
        for f in names:
            files += 1
            nbytes += os.stat(os.path.join(folder, f)).st_blocks * 512
    return files, nbytes


def read_layer(path: str, layer: int) -> dict[str, float]:
    times = {}
    for mode in ("cold", "warm"):
        if mode == "cold":
            evict(path)
        array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": path}}, open=True).result()
        start = time.perf_counter()
        array[layer].read().result()
        times[mode] = time.perf_counter() - start
    return times


def run_layout(name, root, shards, shape, dtype, itemsize, in_flight, layer) -> dict:
    path = f"{root}/{name.replace('/', '_').replace(' ', '').replace(',', '.')}/"
    shutil.rmtree(path, ignore_errors=True)
    array = ts.open(layout_spec(name, path, shape, dtype, itemsize), create=True).result()
    start = time.perf_counter()
    pending = []
    for u in range(shape[1]):
        pending.append(array[:, u].write(shards[u % len(shards)]).commit)
        if len(pending) >= in_flight:
            pending.pop(0).result()
    for f in pending:
        f.result()
    write_s = time.perf_counter() - start
    files, nbytes = disk_usage(path)
    read = read_layer(path, layer)
    shutil.rmtree(path)
    return {"write": write_s, "cold": read["cold"], "warm": read["warm"], "files": files, "bytes": nbytes}


def run_babelgrid(root, states, dims, shape, dtype, layer) -> dict:
    path = f"{root}/babelgrid"
    shutil.rmtree(path, ignore_errors=True)
    n_layers, n_utt, max_frames, _ = shape
    info = StoreInfo("whisper-base", "0" * 64, dims, tuple(range(n_layers)), dtype)
    s = LayerStore.create_or_open(path, info)
    rows = [
        UtteranceRow(id=str(u), lang="xx", path=f"{u}.ogg", duration_s=1.0, n_frames=x.shape[1], n_windows=1)
        for u, x in enumerate(states[u % len(states)] for u in range(n_utt))
    ]
    arrays = s.language("xx", rows, max_frames)
    start = time.perf_counter()
    for u in range(n_utt):
        arrays.write_utterance(u, states[u % len(states)])
    arrays.flush()
    write_s = time.perf_counter() - start
    files, nbytes = disk_usage(f"{path}/xx/states")
    read = read_layer(f"{path}/xx/states/", layer)
    shutil.rmtree(path)
    return {"write": write_s, "cold": read["cold"], "warm": read["warm"], "files": files, "bytes": nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--max-frames", type=int, default=1500)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--layouts", default="", help="';'-separated substrings of layout names (default: all)")
    parser.add_argument("--root", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    states = [x[:, : args.max_frames] for x in real_states(args.clips)]
    dims = preset("base")
    n_layers, embed = states[0].shape[0], states[0].shape[2]
    shape = [n_layers, args.utterances, args.max_frames, embed]
    valid_frames = sum(states[u % len(states)].shape[1] for u in range(args.utterances))
    layouts = [n for n in LAYOUTS if not args.layouts or any(p in n for p in args.layouts.split(";"))]
    root = args.root or tempfile.mkdtemp(prefix="bench-store-")
    print(
        f"{args.utterances} utterances × {n_layers} layers × ≤{args.max_frames} frames × {embed}, mean "
        f"{valid_frames / args.utterances:.0f} valid frames; {args.in_flight} writes in flight; median of "
        f"{args.repeats}; {os.cpu_count()} CPUs; scratch {root}\n"
    )
    print("| dtype | layout | write MB/s | utt/s | layer read MB/s cold | warm | files | disk MB (× valid) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for dtype in args.dtypes.split(","):
            np_dtype = ts.dtype(dtype).numpy_dtype
            shards = []
            for x in states:
                shard = np.zeros((n_layers, args.max_frames, embed), np_dtype)
                shard[:, : x.shape[1]] = x
                shards.append(shard)
            valid_bytes = valid_frames * n_layers * embed * np_dtype.itemsize
            runs = {name: [] for name in [*layouts, "babelgrid writer (zstd1 + lengths marker)"]}
            for _ in range(args.repeats):
                for name in layouts:
                    runs[name].append(
                        run_layout(name, root, shards, shape, dtype, np_dtype.itemsize, args.in_flight, n_layers // 2)
                    )
                runs["babelgrid writer (zstd1 + lengths marker)"].append(
                    run_babelgrid(root, states, dims, shape, dtype, n_layers // 2)
                )
            for name, results in runs.items():
                med = {k: statistics.median(r[k] for r in results) for k in results[0]}
                layer_bytes = valid_bytes / n_layers
                cells = [
                    dtype,
                    name,
                    f"{valid_bytes / med['write'] / 1e6:.0f}",
                    f"{args.utterances / med['write']:.0f}",
                    f"{layer_bytes / med['cold'] / 1e6:.0f}",
                    f"{layer_bytes / med['warm'] / 1e6:.0f}",
                    f"{med['files']:.0f}",
                    f"{med['bytes'] / 1e6:.0f} ({med['bytes'] / valid_bytes:.2f}×)",
                ]
                print("| " + " | ".join(cells) + " |", flush=True)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
