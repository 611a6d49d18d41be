"""Benchmark: sparse autoencoder training, babelgrid's JAX step against dictionary-learning's PyTorch trainer on the
same data and hyperparameters (issue 65: >= 2x training frames per second), and what reading frames from the layer
store costs against a step.

- ``babelgrid``: ``kernels.sae.train_step`` (BatchTopK, the auxiliary loss, Adam, the decoder projection and
  renormalisation), one jitted call per batch;
- ``dictionary-learning``: ``BatchTopKTrainer.update`` on the same batches (torch's threads: 2, the machine's cores);
- ``store read``: ``engine.pipelines.sae.data.Frames`` reading and shuffling one batch's worth of frames of a layer
  store (the demo's, whisper-base layer 4), per batch.

Sizes: ``--d_in`` (default 512, whisper-base; 1280 is large-v3's, AudioSAE's largest), ``--expansion`` (default 8:
d_sae 4096), k 50, batches of ``--batch`` frames (default 4096), random frames with an offset. ``--device cuda`` runs
both on the GPU (JAX's default device, and torch's ``cuda``; the PyTorch round ends with ``torch.cuda.synchronize``);
the store read is skipped with ``--store ''``. Rounds interleave the two trainers, ``--steps`` steps each (after a
warm-up round: compile, allocator), medians of ``--repeats`` rounds.

Usage:  python bench/sae.py [--store /tmp/demo-store] [--batch 4096] [--steps 5] [--repeats 5]
        [--d_in 512] [--expansion 8] [--device cpu|cuda] [--record bench/RESULTS.md]
Run it alone, on a quiet machine (needs torch, and dictionary-learning installed --no-deps: make setup-test).
"""

from __future__ import annotations

import argparse
import pathlib
import shlex
import sys
import types

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, interleaved_times, record  # noqa: E402

K = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/demo-store", help="a layer store for the read cost ('' to skip)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--d_in", type=int, default=512)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("highest", "tf32"), default="highest",
                        help="float32 matrix products on a GPU, the same for both: full float32 (the jobs' default) "
                             "or TF32 (JAX's GPU default, torch's allow_tf32)")  # fmt: skip
    parser.add_argument("--record", type=pathlib.Path)
    args = parser.parse_args()
    stamp = Run()

    import jax
    import jax.numpy as jnp
    import torch

    sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=object))
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer

    from kernels import sae

    jax.config.update("jax_default_matmul_precision", "highest" if args.precision == "highest" else "tensorfloat32")
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    if args.device == "cpu":
        torch.set_num_threads(2)
    elif jax.default_backend() != "gpu" or not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: JAX's backend is {jax.default_backend()}, torch.cuda {torch.cuda.is_available()}"
        )
    d_in = args.d_in
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((args.batch, d_in)) + 1.0).astype(np.float32) for _ in range(args.steps)]
    spec = sae.Spec(d_in, args.expansion * d_in, K, "batchtopk", dead_tokens=args.batch * 2)
    lr = 2e-4 / np.sqrt(spec.d_sae / 2**14)
    tx = sae.optimizer(lr, 10)
    params = sae.init_params(spec, jax.random.key(0))
    params["b_dec"] = jnp.asarray(sae.geometric_median(batches[0]))
    ours = {"state": sae.new_state(params, tx, spec)}
    on_device = [jnp.asarray(x) for x in batches]
    trainer = BatchTopKTrainer(steps=10**6, activation_dim=d_in, dict_size=spec.d_sae, k=K, layer=0, lm_name="bench",
                               lr=lr, warmup_steps=10, device=args.device, seed=0)  # fmt: skip
    trainer.dead_feature_threshold = args.batch * 2
    theirs = [torch.tensor(x, device=args.device) for x in batches]
    step = {"n": 0}

    def run_ours():
        for x in on_device:
            ours["state"], metrics = sae.train_step(ours["state"], x, spec, tx)
        jax.block_until_ready(metrics["loss"])

    def run_theirs():
        for x in theirs:
            trainer.update(step["n"], x)
            step["n"] += 1
        if args.device == "cuda":
            torch.cuda.synchronize()

    contenders = {"babelgrid (JAX)": run_ours, "dictionary-learning (PyTorch)": run_theirs}
    if args.store:
        from engine.pipelines.sae.data import Frames
        from engine.stores.reader import open_store

        store = open_store(args.store)
        frames = Frames(store, 4, list(store.languages), 16, 4 * args.batch, 0)
        per_epoch = frames.steps_per_epoch(args.batch)

        def run_read():
            for n, _ in enumerate(frames.epoch(0, args.batch)):
                if n + 1 >= min(args.steps, per_epoch):
                    break

        contenders["store read + shuffle"] = run_read
    times = interleaved_times(contenders, args.repeats)
    median = {name: float(np.median(t)) for name, t in times.items()}
    frames_per_round = args.batch * args.steps
    lines = [f"{name}: {frames_per_round / median[name]:,.0f} frames/s (median round {median[name]:.2f} s)"
             for name in contenders]  # fmt: skip
    ratio = median["dictionary-learning (PyTorch)"] / median["babelgrid (JAX)"]
    lines.append(f"babelgrid / dictionary-learning: {ratio:.2f}x training frames per second (goal >= 2x)")
    if "store read + shuffle" in median:
        share = median["store read + shuffle"] / median["babelgrid (JAX)"]
        lines.append(f"store read per batch / babelgrid step: {share:.2f} (below 1: the step bounds training)")
    flops = 6 * args.batch * d_in * spec.d_sae * args.steps  # encoder and decoder, forward and backward
    lines.append(f"babelgrid: {flops / median['babelgrid (JAX)'] / 1e9:.0f} GFLOP/s of the step's matrix products")
    text = "\n".join(lines)
    print(text)
    if args.record:
        command = shlex.join(["python", "bench/sae.py", *sys.argv[1:]])
        where = (
            f" Devices: JAX {jax.devices()[0].device_kind}, torch {torch.cuda.get_device_name()}."
            if args.device == "cuda"
            else ""
        )
        record(args.record, "sae training", f"{stamp.line()}{where} Command: `{command}`.\n\n```\n{text}\n```\n")


if __name__ == "__main__":
    main()
