"""Benchmark: wav2vec2-family all-layer encoding on CPU (float32), babelgrid against transformers PyTorch, in one run.

At base widths (wav2vec2-base, HuBERT base: 12 layers x 768, group norm, post-LN) and large widths (wav2vec2-large,
XLS-R 300M, HuBERT large, Omnilingual ASR 300M: 24 x 1024, layer-norm feature encoder, pre-LN), and Omnilingual's
1B (``omni-1b``: 48 x 1280, pre-LN), full layer counts, random weights (speed does
not depend on them) written once by transformers' ``save_pretrained`` and read by both engines:

  - babelgrid: ``LoadedWav2Vec2.encode``, every layer (``hidden_states`` 0..L), jitted, warm
  - transformers: ``Wav2Vec2Model`` under ``torch.inference_mode()`` with ``output_hidden_states=True``

on the same batch: the first ``--batch`` real FLEURS clips cut to ``--seconds`` each (equal lengths, so neither side
pads; random noise when ../shared/data/fleurs-sample is absent). Each engine runs in its own subprocess with
``--threads`` threads and ``OMP_WAIT_POLICY=PASSIVE``; times are medians over ``--repeats`` interleaved rounds after a
warm-up run. Prints the ratio, GFLOP/s, the machine, its ISA (AVX-512 or not, from /proc/cpuinfo) and the load.

Usage:  python bench/wav2vec2_encoder.py [--sizes base,large] [--batch 4] [--seconds 8] [--repeats 5] [--attention]
                                         [--record bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, machine, record  # noqa: E402

SAMPLE_RATE = 16000
SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    ),
    # Omnilingual ASR's 1B CTC encoder (aadel4/omniASR-CTC-1B: 48 x 1280, pre-LN); its 300M one is "large" above
    "omni-1b": dict(
        hidden_size=1280,
        num_hidden_layers=48,
        num_attention_heads=20,
        intermediate_size=5120,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        conv_bias=True,
    ),
}
OURS, BATCHED, HF = "babelgrid", "babelgrid-batched", "transformers"
LABELS = {
    OURS: "babelgrid Flax, every layer",
    BATCHED: "babelgrid Flax, every layer, batched attention",
    HF: "transformers PyTorch, output_hidden_states",
}


def load_batch(batch: int, seconds: float) -> np.ndarray:
    """``f32[batch, seconds * 16000]``: the first clips of the real FLEURS sample, cut to equal lengths."""
    from engine.data.audio import load_audio

    n = int(seconds * SAMPLE_RATE)
    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    clips = [load_audio(p) for p in sorted(sample.glob("*.ogg"))] if sample.is_dir() else []
    clips = [c[:n] for c in clips if len(c) >= n][:batch]
    if len(clips) < batch:
        print(f"(random audio: fewer than {batch} clips of {seconds} s in {sample})")
        return np.random.default_rng(0).standard_normal((batch, n)).astype(np.float32)
    return np.stack(clips).astype(np.float32)


def encoder_flops(config: dict, samples: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one utterance of ``samples`` samples through the whole encoder."""
    from engine.models.wav2vec2.config import dims_from_hf_config

    dims = dims_from_hf_config({"model_type": "wav2vec2", **config})
    flops, t, c_in = 0, samples, 1
    for c, k, s in zip(dims.conv_dim, dims.conv_kernel, dims.conv_stride, strict=True):
        t = (t - k) // s + 1
        flops, c_in = flops + 2 * t * k * c_in * c, c
    d, f = dims.hidden_size, dims.intermediate_size
    flops += 2 * t * c_in * d  # feature projection
    flops += 2 * t * dims.num_conv_pos_embeddings * d * (d // dims.num_conv_pos_embedding_groups)
    return float(flops + dims.num_hidden_layers * (2 * t * (4 * d * d + 2 * d * f) + 4 * t * t * d))


def write_folders(root: pathlib.Path, sizes) -> dict[str, pathlib.Path]:
    """One random ``Wav2Vec2Model`` folder per size asked for (``save_pretrained``)."""
    import torch
    import transformers

    out = {}
    for size, config in ((k, SIZES[k]) for k in sizes):
        torch.manual_seed(0)
        out[size] = root / size
        transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**config)).save_pretrained(out[size])
    return out


def jax_contenders(args, wave: np.ndarray) -> tuple[dict, str]:
    import jax

    from engine.models.wav2vec2 import layers as layers_lib
    from engine.models.wav2vec2.loaded import load_wav2vec2

    fns = {}
    for size in args.sizes:
        model = load_wav2vec2(pathlib.Path(args.folders) / size)
        x, lengths = model.features(list(wave))
        fns[f"{size}/{OURS}"] = lambda m=model, x=x, n=lengths: m.encode(x, n)[0].block_until_ready()
        if args.attention:
            # CPU_BLOCKED_ATTENTION is read while tracing: a model of its own keeps the batched form compiled
            batched = load_wav2vec2(pathlib.Path(args.folders) / size)
            layers_lib.CPU_BLOCKED_ATTENTION = False
            try:
                batched.encode(x, lengths)[0].block_until_ready()
            finally:
                layers_lib.CPU_BLOCKED_ATTENTION = True
            fns[f"{size}/{BATCHED}"] = lambda m=batched, x=x, n=lengths: m.encode(x, n)[0].block_until_ready()
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")]
    return fns, f"jax {jax.__version__}, XLA max ISA {flags[-1].split('=', 1)[1] if flags else 'all the CPU has'}"


def hf_contenders(args, wave: np.ndarray) -> tuple[dict, str]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    fns, attn = {}, "?"
    for size in args.sizes:
        model = transformers.Wav2Vec2Model.from_pretrained(pathlib.Path(args.folders) / size).eval()
        fe = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False)
        x = fe(list(wave), sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values

        def run(model=model, x=x):
            with torch.inference_mode():
                model(x, output_hidden_states=True)

        fns[f"{size}/{HF}"] = run
        attn = model.config._attn_implementation
    return fns, f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}, attention {attn}"


ENGINES = {"jax": jax_contenders, "hf": hf_contenders}


def serve(args) -> None:
    """Worker side: set up one engine's contenders, warm them up, then time each one named on stdin."""
    fns, info = ENGINES[args.worker](args, load_batch(args.batch, args.seconds))
    for fn in fns.values():
        fn()  # warm-up (compilation, allocator)
    print(f"@@ready {info}", flush=True)
    for line in sys.stdin:
        fn = fns[line.strip()]
        start = time.perf_counter()
        fn()
        print(f"@@{time.perf_counter() - start}", flush=True)


def cpu_isa() -> str:
    try:
        flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    return "AVX-512 (avx512f)" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="base,large", help="comma-separated: base, large, omni-1b")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--attention", action="store_true", help="also time babelgrid with batched attention")
    parser.add_argument("--record", type=pathlib.Path, default=None, help="write the table into this markdown file")
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)  # internal: one engine's process
    parser.add_argument("--folders", help=argparse.SUPPRESS)  # internal: the random model folders
    args = parser.parse_args()
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if unknown := set(args.sizes) - set(SIZES):
        parser.error(f"unknown sizes {sorted(unknown)}: choose from {', '.join(SIZES)}")
    if args.worker:
        serve(args)
        return

    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")  # idle OpenMP threads must not spin on the other's cores
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        write_folders(pathlib.Path(tmp), args.sizes)
        base = [sys.executable, __file__, "--batch", str(args.batch), "--seconds", str(args.seconds)]
        base += ["--threads", str(args.threads), "--sizes", ",".join(args.sizes), "--folders", tmp]
        workers, infos, contenders = [], {}, {}
        try:
            for engine in ENGINES:
                workers.append(Worker([*base, "--worker", engine, *(["--attention"] * args.attention)], env))
                infos[engine] = workers[-1].info
                names = [OURS, *([BATCHED] * args.attention)] if engine == "jax" else [HF]
                contenders |= {f"{s}/{n}": (workers[-1], f"{s}/{n}") for s in args.sizes for n in names}
            medians = interleaved_workers(contenders, args.repeats)
        finally:
            for worker in workers:
                worker.close()
    load_after = os.getloadavg()

    audio_s = args.batch * args.seconds
    command = (
        f"python bench/wav2vec2_encoder.py --sizes {','.join(args.sizes)} --batch {args.batch} "
        f"--seconds {args.seconds:g} --repeats {args.repeats}{' --attention' if args.attention else ''}"
    )
    lines = [
        f"machine: {machine()}; ISA: {cpu_isa()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}",
        f"fp32, batch of {args.batch} real clips x {args.seconds:g} s, random weights; median of {args.repeats} "
        f"interleaved rounds; {args.threads} threads per engine; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
        "",
    ]
    lines += [f"- {engine} ran with: {info}" for engine, info in infos.items()]
    lines += ["", "| size | engine | s/batch | audio s/s | GFLOP/s |", "| --- | --- | ---: | ---: | ---: |"]
    for size in args.sizes:
        flops = encoder_flops(SIZES[size], int(args.seconds * SAMPLE_RATE)) * args.batch
        for name in (OURS, BATCHED, HF):
            if (t := medians.get(f"{size}/{name}")) is not None:
                lines.append(f"| {size} | {LABELS[name]} | {t:.2f} | {audio_s / t:.1f} | {flops / t / 1e9:.1f} |")
    lines.append("")
    for size in args.sizes:
        ratio = medians[f"{size}/{HF}"] / medians[f"{size}/{OURS}"]
        lines.append(
            f"- {size}: every layer vs transformers output_hidden_states: **{ratio:.2f}x** as fast (goal >= 1.2)"
        )
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "wav2vec2 encoder", text)


if __name__ == "__main__":
    main()
