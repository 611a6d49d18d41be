"""Benchmark: whisper-base all-layer encoding on CPU (fp32) against its peers, in one run.

Prints audio seconds per second, GFLOP/s and three ratios measured in the same run:
  - babelgrid, every layer (0..L+1)    vs  CTranslate2 ``encode()`` (final layer only)
  - babelgrid, every layer             vs  transformers PyTorch with ``output_hidden_states=True``
  - babelgrid GFLOP/s                  vs  this machine's own JAX float32 matmul GFLOP/s

Usage:  python bench/encoder.py [--batch 8] [--repeats 5] [--attention] [--record bench/RESULTS.md]

Inputs are the first 30 s windows of the real FLEURS clips when ../shared/data/fleurs-sample
exists (random log-mel otherwise: speed does not depend on content). Times are medians over
``--repeats`` runs after a warm-up run; every engine uses the same 2 threads.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import interleaved, machine, record  # noqa: E402
from engine.whisper.checkpoints.load import write_packaged_ct2_folder  # noqa: E402
from engine.whisper.dims import ModelDimensions  # noqa: E402


def encoder_flops(dims: ModelDimensions) -> float:
    """Multiply-add FLOPs (2 per MAC) of one 30 s window through the whole encoder."""
    t, d, f, m = dims.n_audio_ctx, dims.n_audio_state, 4 * dims.n_audio_state, dims.n_mels
    stem = 2 * (2 * t) * m * 3 * d + 2 * t * d * 3 * d
    block = 2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * f
    return float(stem + dims.n_audio_layer * block)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (compilation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed(lambda: f(a).block_until_ready(), repeats) / 1e9


def load_mel(batch: int, n_mels: int) -> np.ndarray:
    from engine.data.audio import load_audio
    from engine.data.features import features_for_audio

    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    clips = sorted(sample.glob("*.ogg"))[:batch] if sample.is_dir() else []
    if len(clips) < batch:
        print(f"(random log-mel input: {sample} not found)")
        return np.random.default_rng(0).standard_normal((batch, n_mels, 3000)).astype(np.float32)
    return np.stack([np.asarray(features_for_audio(load_audio(p), n_mels)[0][0]) for p in clips])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--record", type=pathlib.Path, default=None, help="append the table to this markdown file")
    parser.add_argument(
        "--attention", action="store_true", help="also time the encoder with batched (not cache-blocked) attention"
    )
    args = parser.parse_args()

    from engine.whisper.loaded import load_whisper

    whisper = load_whisper()
    dims = whisper.dims
    mel = load_mel(args.batch, dims.n_mels)
    audio_s = 30.0 * args.batch
    flops = encoder_flops(dims) * args.batch
    rows = []

    mel_dev = jnp.asarray(mel)
    top = (dims.n_audio_layer + 1,)
    contenders = {
        "babelgrid Flax, all layers 0..L+1": lambda: whisper.encode(mel_dev).block_until_ready(),
        "babelgrid Flax, final layer only": lambda: whisper.encode(mel_dev, top).block_until_ready(),
    }
    if args.attention:
        from flax import nnx

        from engine.whisper import model as model_lib

        graphdef, state = nnx.split(whisper.model)
        batched = jax.jit(lambda s, m: nnx.merge(graphdef, s).encoder(m))
        model_lib.CPU_BLOCKED_ATTENTION = False  # read while tracing: this compilation keeps the batched form
        try:
            batched(state, mel_dev).block_until_ready()
        finally:
            model_lib.CPU_BLOCKED_ATTENTION = True
        contenders["babelgrid Flax, all layers, batched attention"] = lambda: batched(
            state, mel_dev
        ).block_until_ready()
    keep = []  # peers' objects must outlive the timing
    try:
        import ctranslate2

        tmp = tempfile.TemporaryDirectory()
        keep.append(tmp)
        model = ctranslate2.models.Whisper(
            str(write_packaged_ct2_folder(tmp.name)),
            device="cpu",
            compute_type="float32",
            intra_threads=args.threads,
        )
        feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
        keep.append(model)
        contenders["CTranslate2 encode(), final layer only"] = lambda: model.encode(feats, to_cpu=True)
    except ImportError:
        print("(ctranslate2 not installed: pip install ctranslate2)")
    try:
        import torch
        import transformers

        torch.set_num_threads(args.threads)
        cfg = transformers.WhisperConfig(
            vocab_size=dims.n_vocab,
            num_mel_bins=dims.n_mels,
            d_model=dims.n_audio_state,
            encoder_layers=dims.n_audio_layer,
            encoder_attention_heads=dims.n_audio_head,
            decoder_layers=dims.n_text_layer,
            decoder_attention_heads=dims.n_text_head,
            encoder_ffn_dim=4 * dims.n_audio_state,
            decoder_ffn_dim=4 * dims.n_text_state,
        )
        # Speed does not depend on the weights' values, so a randomly initialised encoder will do.
        hf = transformers.WhisperModel(cfg).get_encoder().eval()
        x = torch.from_numpy(mel)

        def run_hf():
            with torch.inference_mode():
                hf(x, output_hidden_states=True)

        contenders["transformers PyTorch, output_hidden_states"] = run_hf
    except ImportError:
        print("(torch/transformers not installed)")

    medians = interleaved(contenders, args.repeats)
    rows = list(medians.items())
    t_all = medians["babelgrid Flax, all layers 0..L+1"]
    peers = {
        key: medians[name]
        for key, name in (
            ("ct2", "CTranslate2 encode(), final layer only"),
            ("hf", "transformers PyTorch, output_hidden_states"),
        )
        if name in medians
    }

    mm = matmul_gflops(args.repeats)
    lines = [
        f"machine: {machine()}",
        f"date: {datetime.date.today().isoformat()}   command: python bench/encoder.py --batch {args.batch} "
        f"--repeats {args.repeats}{' --attention' if args.attention else ''}",
        f"whisper-base, fp32, batch of {args.batch} x 30 s windows, {encoder_flops(dims) / 1e9:.1f} GFLOP/window; "
        f"median of {args.repeats} interleaved rounds",
        "",
        "| engine | s/batch | audio s/s | GFLOP/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, t in rows:
        lines.append(f"| {name} | {t:.2f} | {audio_s / t:.1f} | {flops / t / 1e9:.1f} |")
    lines.append(f"| JAX float32 matmul 2048^3 (machine rate) | | | {mm:.1f} |")
    lines.append("")
    if "ct2" in peers:
        lines.append(f"- all layers vs CTranslate2 final layer: **{peers['ct2'] / t_all:.2f}x** as fast (goal >= 1)")
    if "hf" in peers:
        lines.append(f"- all layers vs transformers output_hidden_states: **{peers['hf'] / t_all:.2f}x** as fast")
    lines.append(f"- all layers GFLOP/s / JAX matmul GFLOP/s: **{flops / t_all / 1e9 / mm:.2f}**")
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "encoder", text)


if __name__ == "__main__":
    main()
