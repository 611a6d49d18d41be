"""Benchmark: does fp8 (e4m3) SeqSim retrieve what bf16 SeqSim retrieves, on real states? (issue 80, item 3)

    python bench/seqsim_fp8.py                                  # encodes the FLEURS sample once, then measures
    python bench/seqsim_fp8.py --store /tmp/fp8/store --table   # an existing store; every row, not only the summary
    python bench/seqsim_fp8.py --write bench/RESULTS.md         # records the summary, section "seqsim fp8 agreement"

States: the 50 FLEURS clips of ``$BABELGRID_FLEURS_SAMPLE`` (or ../shared/data/fleurs-sample; 10 per language:
de, en, es, fr, pt) through the packaged whisper-base, every layer, stored float32 by the encode job into
``--store`` (run once with ``--allow_unpaired``: the sample's clips are not translations of one another, so
retrieval here is "which utterance of Y does SeqSim rank first", the decision a retrieval metric is built on).

For every language pair, layer and direction (queries of X among the utterances of Y, and back), the same run
scores the grid with ``kernels.seqsim.seqsim_matrix`` in float32 and in bfloat16 (the job's two dtypes; packed on
CPU) and with ``kernels.seqsim_fp8.seqsim_matrix_fp8`` for each scale, then prints per contender:

- ``R@1 vs bf16``: the share of queries whose top-1 is bf16's top-1 (R@1 with bf16's choice as the answer);
  ``changed`` is the rest, as counts. ``R@1 vs f32`` likewise, and bf16 against f32 as the floor any 16-bit run has;
- ``order``: the share of every query's candidate pairs that keep their order (Kendall concordance), which sees
  changes below the top-1;
- ``max |d|``: the largest score difference from bf16.

Accuracy ratios, not timings: the machine's load changes none of these numbers. On CPU the fp8 GEMM is emulated
(XLA upcasts e4m3 exactly; only the float32 accumulation order differs from a GPU's).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import pathlib
import subprocess
import sys
import tempfile

import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine, record  # noqa: E402
from engine.stores.layers import LayerStore  # noqa: E402
from kernels import seqsim, seqsim_fp8  # noqa: E402

SAMPLE = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))
SECTION = "seqsim fp8 agreement"


def encode_sample(store: pathlib.Path) -> None:
    """The FLEURS sample through the encode job (whisper-base, every layer, float32) into ``store``."""
    clips = pathlib.Path(tempfile.mkdtemp(prefix="fp8-clips-"))
    for clip in sorted(SAMPLE.glob("*.ogg")):  # fleurs-<lang>-<nnn>.ogg -> <lang>/fleurs-<lang>-<nnn>.ogg
        (clips / clip.stem.split("-")[1]).mkdir(exist_ok=True)
        (clips / clip.stem.split("-")[1] / clip.name).symlink_to(clip)
    cmd = [sys.executable, "-m", "jobs.encode", f"--dataset=folder:{clips}", f"--out={store}", "--dtype=float32",
           "--allow_unpaired"]  # fmt: skip
    print("encoding:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def load(store: LayerStore):
    """{lang: (lengths i32[N], reader(layer position) -> f32[N, longest, embed])}."""
    out = {}
    for lang in store.languages():
        arrays = store.language(lang)
        lengths = arrays.lengths()
        longest = int(lengths.max())

        def read(pos, arrays=arrays, longest=longest):
            return np.asarray(arrays.states_store[pos, :, :longest].read().result(), np.float32)

        out[lang] = (lengths, read)
    return out


def contenders(scales):
    def f32(A, la, B, lb):
        return seqsim.seqsim_matrix(A, la, B, lb)

    def bf16(A, la, B, lb):
        return seqsim.seqsim_matrix(A.astype(jnp.bfloat16), la, B.astype(jnp.bfloat16), lb)

    out = {"f32": f32, "bf16": bf16}
    for scale in scales:
        out[f"fp8 {scale}"] = lambda A, la, B, lb, scale=scale: seqsim_fp8.seqsim_matrix_fp8(A, la, B, lb, scale=scale)
    return out


def concordance(x: np.ndarray, ref: np.ndarray) -> float:
    """Share of (query, candidate i < candidate j) whose order in ``x`` is that in ``ref`` (rows are queries)."""
    i, j = np.triu_indices(x.shape[1], 1)
    return float(np.mean(np.sign(x[:, i] - x[:, j]) == np.sign(ref[:, i] - ref[:, j])))


def compare(scores: dict[str, np.ndarray]) -> list[dict]:
    """One dict per (direction, contender): scores are f32[N_x, N_y]; direction 0 queries rows, 1 queries columns."""
    rows = []
    for direction in (0, 1):
        s = {k: (v if direction == 0 else v.T) for k, v in scores.items()}
        top = {k: v.argmax(axis=1) for k, v in s.items()}
        for name in s:
            if name == "f32":
                continue
            rows.append({
                "direction": direction, "contender": name, "queries": len(top[name]),
                "same_bf16": int(np.sum(top[name] == top["bf16"])), "same_f32": int(np.sum(top[name] == top["f32"])),
                "order": concordance(s[name], s["bf16"] if name != "bf16" else s["f32"]),
                "max_diff": float(np.abs(s[name] - (s["bf16"] if name != "bf16" else s["f32"])).max()),
                "hubs": len(set(top["bf16"].tolist())),
            })  # fmt: skip
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/babelgrid-fp8-store", help="layer store; encoded here if absent")
    parser.add_argument("--scales", default=",".join(seqsim_fp8.SCALES), help="fp8 scales to measure")
    parser.add_argument("--layers", default="all", help="'all' or layer positions '0,3,7'")
    parser.add_argument("--table", action="store_true", help="print every (layer, pair, direction) row")
    parser.add_argument("--write", default=None, help="record the summary in this results file")
    args = parser.parse_args()
    started, load_before = datetime.datetime.now(datetime.timezone.utc), load_average()
    store_path = pathlib.Path(args.store)
    if not (store_path / "manifest.json").exists():
        encode_sample(store_path)
    store = LayerStore.open(str(store_path))
    langs = load(store)
    first = store.language(store.languages()[0])
    positions = range(len(first.layers)) if args.layers == "all" else [int(p) for p in args.layers.split(",")]
    fns = contenders([s for s in args.scales.split(",") if s])
    results = []  # (layer, pair, row)
    if args.table:
        print(f"{'layer':>5} {'pair':>6} {'dir':>4} {'contender':<11} {'R@1 vs bf16':>11} {'vs f32':>7} "
              f"{'order':>6} {'max |d|':>8} {'hubs':>4}")  # fmt: skip
    for pos in positions:
        states = {lang: jnp.asarray(read(pos)) for lang, (_, read) in langs.items()}
        for x, y in itertools.combinations(sorted(langs), 2):
            args_xy = (states[x], langs[x][0], states[y], langs[y][0])
            scores = {name: np.asarray(fn(*args_xy)) for name, fn in fns.items()}
            for row in compare(scores):
                results.append((first.layers[pos], f"{x}-{y}", row))
                if args.table:
                    pair = f"{x}>{y}" if row["direction"] == 0 else f"{y}>{x}"
                    print(f"{first.layers[pos]:>5} {pair:>6} {row['direction']:>4} {row['contender']:<11} "
                          f"{row['same_bf16'] / row['queries']:>11.2f} {row['same_f32'] / row['queries']:>7.2f} "
                          f"{row['order']:>6.3f} {row['max_diff']:>8.4f} {row['hubs']:>4}", flush=True)  # fmt: skip
        print(f"layer {first.layers[pos]} done", file=sys.stderr, flush=True)

    names = list(dict.fromkeys(r["contender"] for _, _, r in results))
    lines = [
        "Per layer, over 10 language pairs x 2 directions (20 directions of 10 queries: 200 queries a layer): "
        "R@1 against bf16's top-1 as mean and min over the directions, top-1 changes as a count of the 200, "
        "order = mean Kendall concordance with bf16 (bf16's own row: with f32), max |d| = largest score difference.",
        "",
        "| layer | contender | R@1 vs bf16 mean | min | changed | R@1 vs f32 mean | order | max \\|d\\| |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for layer in dict.fromkeys(lay for lay, _, _ in results):
        for name in names:
            rs = [r for lay, _, r in results if lay == layer and r["contender"] == name]
            agree = [r["same_bf16"] / r["queries"] for r in rs]
            changed = sum(r["queries"] - r["same_bf16"] for r in rs)
            vs_f32 = np.mean([r["same_f32"] / r["queries"] for r in rs])
            queries = sum(r["queries"] for r in rs)
            lines.append(
                f"| {layer} | {name} | {np.mean(agree):.3f} | {min(agree):.2f} | {changed}/{queries}"
                f" | {vs_f32:.3f} | {np.mean([r['order'] for r in rs]):.4f} | {max(r['max_diff'] for r in rs):.4f} |"
            )
    lines.append("")
    for name in names:
        rs = [r for _, _, r in results if r["contender"] == name]
        changed = sum(r["queries"] - r["same_bf16"] for r in rs)
        total = sum(r["queries"] for r in rs)
        lines.append(
            f"- {name}: top-1 changed for {changed}/{total} queries ({changed / total:.1%}) against bf16, "
            f"{sum(r['queries'] - r['same_f32'] for r in rs)}/{total} against f32; worst direction "
            f"R@1 {min(r['same_bf16'] / r['queries'] for r in rs):.2f}; max |d| {max(r['max_diff'] for r in rs):.4f}"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        header = (
            f"Machine: {machine()}. Date: {started:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 min) {load_before} "
            f"before, {load_average()} after: a shared, loaded machine, which changes none of these numbers (they "
            f"are agreements between numerics, not timings). Command: `python bench/seqsim_fp8.py "
            f"{' '.join(sys.argv[1:])}`. States: the FLEURS sample (50 clips, 10 each of de, en, es, fr, pt) "
            f"through whisper-base, every layer, stored float32; fp8 emulated on CPU (exact e4m3 values and "
            f"products, float32 accumulation).\n\n"
        )
        record(pathlib.Path(args.write), SECTION, header + text)


if __name__ == "__main__":
    main()
