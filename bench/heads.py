"""Benchmark: every single-head ablation of whisper-base (6 blocks x 8 heads), the heads job's way against
transformers with hooks, and against as many plain encode passes (issue 66: >= 1.5x, and within 1.2x of L x H plain
passes).

Three contenders on the same ``--windows`` demo windows (30 s log-mel each, float32, 2 threads each), timed in
interleaved rounds, each in its own subprocess (``bench.common.Worker``):

- ``babelgrid heads``: ``engine.pipelines.heads.ablate.ablation_pass`` for every block (its H masks in batches of
  ``--batch`` rows, the blocks below the ablated one computed once per pass), returning the states of the job's
  default scored layers (4 and 7) and scoring SeqSim R@1 on them, as the job does without decoding;
- ``transformers + hooks``: transformers' PyTorch Whisper encoder with a pre-hook on every ``self_attn.out_proj``
  that multiplies one head's slice by 0 (what replaced ``head_mask`` in transformers 5), one forward pass
  (``output_hidden_states``) per head over the same windows, no scoring;
- ``plain encode pass``: the encode job's sharded encoder on the same windows, unablated, the same layers: the
  ratio multiplies it by L x H;
- ``plain pass, mask of ones``: the same pass with a head mask of ones (every head scaled by 1): what a mask costs
  when present. Absent (``head_mask=None``, what every other job runs), the families trace no scaling at all.

Usage:  python bench/heads.py [--windows 4] [--batch 8] [--repeats 3] [--record bench/RESULTS.md]
Run it alone, on a quiet machine (needs torch and transformers: the test extras).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, load_average, machine, record  # noqa: E402

SCORED = (4, 7)  # the job's default scored layers for whisper-base: the middle block's and ln_post's
OURS, PEER, PLAIN, ONES = "babelgrid heads", "transformers + hooks", "plain encode pass", "plain pass, mask of ones"


def demo_inputs(windows: int):
    """(log-mel f32[window, 80, 3000], the windows' valid frames): the first ``windows`` demo clips, one language each
    in turn (synthesised once by the demo source)."""
    from engine.data.audio import load_audio
    from engine.data.sources import get_source
    from engine.models.whisper.features import features_for_audio

    source = get_source("demo")
    langs = source.languages()
    mels, frames = [], []
    for k in range(windows):
        utt = source.utterances(langs[k % len(langs)], "test")[k // len(langs)]
        mel, valid = features_for_audio(load_audio(utt.path), 80)
        mels.append(np.asarray(mel[0]))
        frames.append(int(valid[0]))
    return np.stack(mels), np.asarray(frames, np.int32)


def ours(args, mel, frames):
    import jax
    import jax.numpy as jnp

    from engine.models.common.parallel import data_mesh
    from engine.models.family import load_encoder
    from engine.pipelines.heads.ablate import Evaluation, ablation_pass

    encoder = load_encoder(None)
    masked = encoder.head_masked(SCORED)
    L, H = masked.blocks, masked.heads
    n = len(mel)
    evaluation = Evaluation(("a", "b"), np.arange(n, dtype=np.int32) % 2, tuple(str(i // 2) for i in range(n)),
                            (None,) * n, tuple(mel), frames, np.arange(n), ())  # fmt: skip

    class Quiet:
        def update(self, k):
            del k

    def heads():
        for b in range(L):
            masks = np.ones((H, L, H), np.float32)
            masks[np.arange(H), b, np.arange(H)] = 0
            ablation_pass(masked, evaluation, masks, [0, 1], None, args.batch, encoder.collate, Quiet())

    plain_step = encoder.sharded(data_mesh(jax.local_devices()), SCORED, jnp.float32)

    batch = encoder.collate(list(mel), len(mel))
    ones = np.ones((len(mel), L, H), np.float32)

    def plain():
        np.asarray(plain_step(*batch))

    info = f"jax {jax.__version__}; {L} blocks x {H} heads"
    return {OURS: heads, PLAIN: plain, ONES: lambda: masked(batch, ones)}, info


def peer(args, mel, frames):
    import torch
    import transformers

    from engine.models.whisper.checkpoints.export import hf_config
    from engine.models.whisper.loaded import load_whisper

    del frames
    dims = load_whisper().dims
    torch.set_num_threads(args.threads)
    # Speed does not depend on the weights' values (bench/whisper_encoder.py does the same): a random encoder of
    # the shape.
    hf = transformers.WhisperModel(transformers.WhisperConfig(**hf_config(dims))).get_encoder().eval()
    L, H = dims.n_audio_layer, dims.n_audio_head
    dh = dims.n_audio_state // H
    mask = torch.ones((L, H))
    for i, layer in enumerate(hf.layers):
        layer.self_attn.out_proj.register_forward_pre_hook(
            lambda module, a, i=i: (a[0] * mask[i].repeat_interleave(dh),)
        )  # fmt: skip
    x = torch.from_numpy(mel)

    def run():
        with torch.inference_mode():
            for b in range(L):
                for h in range(H):
                    mask.fill_(1.0)
                    mask[b, h] = 0.0
                    out = hf(x, output_hidden_states=True)
                    _ = [out.hidden_states[s] if s <= L - 1 else out.last_hidden_state for s in SCORED]

    return {PEER: run}, f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}"


def serve(args) -> None:
    mel, frames = demo_inputs(args.windows)
    fns, info = (ours if args.worker == "jax" else peer)(args, mel, frames)
    for fn in fns.values():
        fn()  # warm-up: compilations, allocator
    print(f"@@ready {info}", flush=True)
    for line in sys.stdin:
        name = line.strip()
        start = time.perf_counter()
        fns[name]()
        print(f"@@{time.perf_counter() - start}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=4, help="demo windows (30 s each) every ablation encodes")
    parser.add_argument("--batch", type=int, default=8, help="babelgrid: rows (a window under one mask) per step")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", type=pathlib.Path, default=None, help="write the table into this markdown file")
    parser.add_argument("--worker", choices=("jax", "hf"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return serve(args)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    before = load_average()
    argv = [sys.executable, __file__, "--windows", str(args.windows), "--batch", str(args.batch), "--threads",
            str(args.threads)]  # fmt: skip
    jax_worker = Worker([*argv, "--worker", "jax"], env)
    hf_worker = Worker([*argv, "--worker", "hf"], env)
    contenders = {OURS: (jax_worker, OURS), PEER: (hf_worker, PEER)}
    contenders |= {PLAIN: (jax_worker, PLAIN), ONES: (jax_worker, ONES)}
    medians = interleaved_workers(contenders, args.repeats)
    after = load_average()
    passes = 48  # whisper-base: 6 blocks x 8 heads
    lines = [
        f"machine: {machine()}",
        f"date: {datetime.date.today()}   command: python bench/heads.py --windows {args.windows} --batch {args.batch} "
        f"--repeats {args.repeats}",
        f"whisper-base, fp32, every single-head ablation ({passes}) of {args.windows} demo windows (30 s each), states "
        f"of layers {SCORED}; median of {args.repeats} interleaved rounds; {args.threads} threads each; load average "
        f"{before} before, {after} after",
        f"- jax worker: {jax_worker.info}; hf worker: {hf_worker.info}",
        "",
        "| contender | s |",
        "| --- | ---: |",
        f"| {OURS} (48 ablations, SeqSim R@1 scored) | {medians[OURS]:.2f} |",
        f"| {PEER} (48 forward passes) | {medians[PEER]:.2f} |",
        f"| {PLAIN} (one, unablated) | {medians[PLAIN]:.3f} |",
        f"| {ONES} (one) | {medians[ONES]:.3f} |",
        "",
        f"- babelgrid heads vs transformers + hooks: **{medians[PEER] / medians[OURS]:.2f}x** as fast (goal >= 1.5)",
        f"- babelgrid heads / ({passes} x plain encode pass): **{medians[OURS] / (passes * medians[PLAIN]):.2f}** "
        "(goal <= 1.2)",
        f"- a mask of ones / no mask: **{medians[ONES] / medians[PLAIN]:.3f}** (the cost of a mask when present)",
    ]
    for worker in (jax_worker, hf_worker):
        worker.close()
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "heads: every single-head ablation of whisper-base", text)


if __name__ == "__main__":
    main()
