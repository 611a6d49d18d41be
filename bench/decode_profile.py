"""Where our greedy decoding's time goes: the decode cut short, and XLA's per-op trace of one call.

    python bench/decode_profile.py [--windows 8] [--rounds 5] [--cuts 1,16,32] [--trace] [--top 12] [--logits]

1. **Cut short.** Our greedy decode of ``bench/decode.py``'s windows stopped after 1, 16, 32 tokens
   (``max_new_tokens``) and at the end. The first cut is the fixed cost (cross-attention keys/values, prompt), the
   slope between cuts the cost of a step at full batch (before rows finish), the last row the whole decode. Medians
   of interleaved rounds. (CTranslate2 is not cut alongside: its ``max_length`` returned about half as many tokens
   as it allowed after the prompt here, e.g. 18 for 4 + 32, so its steps are not comparable cut for cut.)
2. **Trace** (``--trace``): one greedy call under ``jax.profiler``; per compiled program, its calls and wall time
   (first op start to last op end per run), then the ``--top`` ops of the step program by total time. A step's ops
   depend on each other, so XLA on CPU runs them one after another, each on the CPU's threads inside its kernel: an
   op's time is about wall time.
3. **Logits** (``--logits``): the logits product of 1, 8 and 40 rows against the packaged model's embedding as
   stored, ``x @ E^T``, and against ``graph.embedding_t``'s ``E^T`` stored transposed, what decoding uses; medians of
   interleaved rounds, and the largest difference of the logits.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import interleaved_times, machine  # noqa: E402
from bench.decode import both_sides  # noqa: E402


def trace_summary(folder: str, top: int) -> list[str]:
    """Lines: per program (calls, wall ms), then the step program's ``top`` ops (calls, total and mean ms)."""
    path = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]
    events = [e for e in json.load(gzip.open(path))["traceEvents"] if "hlo_module" in e.get("args", {})]
    runs, ops = collections.defaultdict(list), collections.defaultdict(list)
    for e in events:
        runs[(e["args"]["hlo_module"], e["args"]["run_id"])].append(e)
        ops[(e["args"]["hlo_module"], e["name"])].append(e["dur"] / 1e3)
    walls = collections.defaultdict(list)
    for (module, _), evs in runs.items():
        walls[module].append((max(e["ts"] + e["dur"] for e in evs) - min(e["ts"] for e in evs)) / 1e3)
    lines = ["| program | calls | wall ms |", "| --- | ---: | ---: |"]
    lines += [f"| {m} | {len(w)} | {sum(w):.1f} |" for m, w in sorted(walls.items(), key=lambda kv: -sum(kv[1]))]
    step = max(walls, key=lambda m: sum(walls[m]))
    lines += ["", f"Top ops of `{step}`:", "", "| op | calls | total ms | mean ms |", "| --- | ---: | ---: | ---: |"]
    ranked = sorted(((name, d) for (m, name), d in ops.items() if m == step), key=lambda kv: -sum(kv[1]))
    lines += [f"| {name} | {len(d)} | {sum(d):.1f} | {statistics.mean(d):.3f} |" for name, d in ranked[:top]]
    return lines


def logits_table(model, rounds: int) -> list[str]:
    """Lines: the logits product of 1, 8, 40 rows against ``E`` as stored and against ``embedding_t``'s ``E^T``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from engine.models.whisper.graph import embedding_t

    emb, emb_t = model.decoder.token_embedding[...], embedding_t(model)
    stored = jax.jit(lambda x, e: jnp.einsum("bd,vd->bv", x, e, preferred_element_type=jnp.float32))
    transposed = jax.jit(lambda x, e: jnp.einsum("bd,dv->bv", x, e, preferred_element_type=jnp.float32))
    lines = [
        "| rows | x @ E^T ms | x @ (E^T stored) ms | ratio | largest difference |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows in (1, 8, 40):
        x = jnp.asarray(np.random.default_rng(rows).standard_normal((rows, emb.shape[1])), emb.dtype)
        times = interleaved_times(
            {
                "stored": lambda x=x: stored(x, emb).block_until_ready(),
                "t": lambda x=x: transposed(x, emb_t).block_until_ready(),
            },
            rounds,
        )
        a, b = (1e3 * statistics.median(times[k]) for k in ("stored", "t"))
        diff = float(jnp.max(jnp.abs(stored(x, emb) - transposed(x, emb_t))))
        lines.append(f"| {rows} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {diff:.1e} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cuts", default="1,16,32", help="max_new_tokens of the cut decodes (then the full decode)")
    parser.add_argument("--trace", action="store_true", help="also trace one greedy call of ours (jax.profiler)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--logits", action="store_true", help="also time the logits product in both layouts")
    args = parser.parse_args()
    import jax

    from engine.models.whisper.decoding import DecodingOptions

    cuts = [int(c) for c in args.cuts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        whisper, _, ours_xa, _, _ = both_sides(args.windows, 1, pathlib.Path(tmp))
        contenders, steps = {}, {}
        for cut in [*cuts, None]:
            options = DecodingOptions(language="de", **({} if cut is None else {"max_new_tokens": cut}))

            def run(options=options):
                tokens = whisper.transcribe(None, options, xa=ours_xa).tokens
                steps[options.max_new_tokens] = max(len(t) for t in tokens)

            contenders[cut] = run
        load_before = open("/proc/loadavg").read().split()[0]
        times = interleaved_times(contenders, args.rounds)
        load_after = open("/proc/loadavg").read().split()[0]
        print(f"Machine: {machine()}. Load average (1 min) {load_before} / {load_after}.")
        print(f"Command: `python bench/decode_profile.py {' '.join(sys.argv[1:])}`\n")
        print("| max_new_tokens | longest window's tokens | ms | ms a step since the row above |")
        print("| --- | ---: | ---: | ---: |")
        previous = None
        for cut in [*cuts, None]:
            limit = DecodingOptions().max_new_tokens if cut is None else cut
            ms = 1e3 * statistics.median(times[cut])
            slope = "" if previous is None else f"{(ms - previous[1]) / (steps[limit] - previous[0]):.1f}"
            print(f"| {limit} | {steps[limit]} | {ms:.0f} | {slope} |")
            previous = (steps[limit], ms)
        if args.trace:
            options = DecodingOptions(language="de")
            folder = str(pathlib.Path(tmp) / "trace")
            with jax.profiler.trace(folder):
                whisper.transcribe(None, options, xa=ours_xa)
            print("\nOne greedy call of ours, traced:\n")
            print("\n".join(trace_summary(folder, args.top)))
        if args.logits:
            print("\n" + "\n".join(logits_table(whisper.model, args.rounds * 8)))


if __name__ == "__main__":
    main()
