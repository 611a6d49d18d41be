"""The sae job's FVU against its step count on one store: the curve the default's floor of steps was chosen from
(``engine.pipelines.sae.config.MIN_STEPS``, issue 87 item 2; docs/sae.md "How long it trains").

For each ``--steps`` value the sae job (``run_sae``, not the kernel alone: the job's data order, warmup and
evaluation) trains one layer into its own folder, and the row gives what its summary judges the SAE by: FVU and L0
over every frame of the layer, the loss drop over the last tenth of the steps (``train.loss_drop``: above
``FALLING`` the summary says the loss was still falling), R@1 of translations on stored and reconstructed states,
and the run's seconds (at the load the line states: FVU does not depend on it, the seconds do).

Usage:  python bench/sae_steps.py --store /tmp/demo-store [--layer 4] [--steps 60,250,500,1000,2000]
        [--expansion 8] [--k 32] [--batch_size 2048] [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import csv
import io
import pathlib
import shlex
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, record  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/demo-store")
    parser.add_argument("--layer", type=int, default=4)
    parser.add_argument("--steps", default="60,250,500,1000,2000")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=2048)
    parser.add_argument("--record", type=pathlib.Path)
    args = parser.parse_args()
    stamp = Run()

    from engine.pipelines.sae.config import SaeConfig
    from engine.pipelines.sae.run import run_sae
    from engine.pipelines.sae.train import FALLING, POOR_FVU, loss_drop
    from engine.runtime.options import configure
    from engine.stores.reader import open_store
    from engine.stores.records import read_npz

    store = open_store(args.store)
    langs = store.languages
    frames = sum(int(np.sum(store.lengths(lang)[store.lengths(lang) > 0])) for lang in langs)
    per_epoch = frames // args.batch_size
    lines = [
        f"store: {args.store} ({store.info.model_name}, {len(langs)} languages, {frames:,} frames of layer "
        f"{args.layer}); d_sae {args.expansion} x {store.info.embed}, k {args.k}, BatchTopK, batches of "
        f"{args.batch_size} ({per_epoch} a pass)",
        "",
        f"{'steps':>6} {'epochs':>7} {'FVU':>6} {'L0':>5} {'loss drop':>10} {'R@1 stored/rec':>15} {'seconds':>8}",
    ]
    for steps in (int(s) for s in args.steps.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            run_sae(configure(SaeConfig, store=args.store, out=f"{tmp}/sae", layers=(args.layer,), steps=steps,
                              expansion=args.expansion, k=args.k, batch_size=args.batch_size, activations=0,
                              progress=False))  # fmt: skip
            seconds = time.perf_counter() - started
            row = next(csv.DictReader(io.StringIO(pathlib.Path(f"{tmp}/sae/metrics.csv").read_text())))
            part = read_npz(pathlib.Path(f"{tmp}/sae/parts/layer-{args.layer}.npz").read_bytes())
            drop = loss_drop(part["losses"])
        r1 = f"{float(row['r1']):.3f}/{float(row['r1_reconstructed']):.3f}"
        line = (f"{steps:>6} {steps / per_epoch:>7.1f} {float(row['fvu']):>6.3f} {float(row['l0']):>5.1f} "
                f"{drop:>10.2%} {r1:>15} {seconds:>8.0f}")  # fmt: skip
        print(line, flush=True)
        lines.append(line)
    lines.append("")
    lines.append(f"(loss drop: the mean loss over the last tenth of the steps against the tenth before; the summary "
                 f"names an SAE undertrained above {FALLING:.0%}, or with FVU above {POOR_FVU})")  # fmt: skip
    text = "\n".join(lines)
    command = "python bench/sae_steps.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.record:
        record(args.record, "sae: FVU against steps (bench/sae_steps.py)",
               f"{stamp.line()} Command: `{command}`.\n\n```\n{text}\n```\n")  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
