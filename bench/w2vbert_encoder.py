"""Benchmark: the w2v-BERT 2.0 conformer encoder, every layer, babelgrid (Flax, jitted) against transformers PyTorch.

Prints seconds per batch, audio seconds per second and the ratio, measured in the same run, with the machine, its
ISA (AVX-512 or not, from /proc/cpuinfo) and the load average before and after:

  - babelgrid ``W2vBertEncoder``, layers 0..L      vs  ``Wav2Vec2BertModel(output_hidden_states=True)``

Usage:  python bench/w2vbert_encoder.py [--batch 4] [--seconds 10] [--repeats 5] [--layers 24] [--record FILE]

The encoder is w2v-bert-2.0's (and SeamlessM4T v2's speech encoder's): hidden 1024, 16 heads, FFN 4096, depthwise
kernel 31, ``--layers`` conformer layers (24, all of them, by default), random weights (speed does not depend on their
values), float32. Inputs are the first ``--batch`` real FLEURS clips cut to ``--seconds`` (a ragged batch with its
attention mask; from $BABELGRID_FLEURS_SAMPLE or ../shared/data/fleurs-sample, random audio when absent), featurised
once by babelgrid's extractor; both engines read the same features. Each engine runs in its own subprocess (its own
thread pool) and is warmed up (compilation, allocator) first; times are medians over ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, machine, record, serve_timed  # noqa: E402

OURS, HF = "ours", "hf"
LABELS = {OURS: "babelgrid Flax, layers 0..L (jit)", HF: "transformers PyTorch, output_hidden_states"}


def load_inputs(batch: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    from engine.data.audio import load_audio
    from engine.models.w2vbert.features import SAMPLE_RATE, batch_features

    sample = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))
    clips = sorted(sample.glob("*.ogg"))[:: max(1, 50 // batch)][:batch] if sample.is_dir() else []
    n = int(seconds * SAMPLE_RATE)
    if len(clips) < batch:
        print(f"(random audio: {sample} not found)")
        rng = np.random.default_rng(0)
        waveforms = [rng.standard_normal(n - i * SAMPLE_RATE // 2).astype(np.float32) * 0.1 for i in range(batch)]
    else:
        waveforms = [load_audio(p)[:n] for p in clips]
    return batch_features(waveforms)


def hf_config(layers: int):
    import transformers

    return transformers.Wav2Vec2BertConfig(num_hidden_layers=layers)


def ours_contender(args, features, valid):
    import jax
    import jax.numpy as jnp

    from engine.models.w2vbert.config import config_from_hf
    from engine.models.w2vbert.model import W2vBertEncoder, random_state_dict

    config = config_from_hf(hf_config(args.layers).to_dict())
    model = W2vBertEncoder(config, random_state_dict(config))
    f, v = jnp.asarray(features), jnp.asarray(valid)
    encode = jax.jit(lambda f, v: model(f, v))
    return lambda: encode(f, v).block_until_ready(), f"jax {jax.__version__} on {jax.devices()[0].platform}"


def hf_contender(args, features, valid):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.Wav2Vec2BertModel(hf_config(args.layers)).eval()
    x = torch.from_numpy(features)
    mask = torch.from_numpy((np.arange(features.shape[1])[None] < valid[:, None]).astype(np.int64))

    def run():
        with torch.inference_mode():
            model(x, attention_mask=mask, output_hidden_states=True)

    return run, f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}"


ENGINES = {OURS: ours_contender, HF: hf_contender}


def serve(args) -> None:
    """Worker side: set up one engine, warm it up, then time it once per line read on stdin."""
    features, valid = load_inputs(args.batch, args.seconds)
    serve_timed(*ENGINES[args.worker](args, features, valid))


def isa() -> str:
    try:
        flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    return "AVX-512 (avx512f)" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio kept per clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--record", type=pathlib.Path, default=None, help="append the table to this markdown file")
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)  # internal: one engine's process
    args = parser.parse_args()
    if args.worker:
        serve(args)
        return

    features, valid = load_inputs(args.batch, args.seconds)
    base = [sys.executable, __file__, *sys.argv[1:]]
    load_before = os.getloadavg()
    workers = {}
    try:
        for name in ENGINES:
            workers[name] = Worker([*base, "--worker", name], dict(os.environ))
        medians = interleaved_workers({name: (w, name) for name, w in workers.items()}, args.repeats)
    finally:
        for w in workers.values():
            w.close()
    load_after = os.getloadavg()

    audio_s = float(valid.sum()) * 0.02
    command = "python bench/w2vbert_encoder.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("batch", "seconds", "repeats", "layers")
    )
    lines = [
        f"machine: {machine()}; ISA: {isa()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}",
        f"w2v-BERT 2.0 encoder, {args.layers} layers at width 1024, fp32, random weights; batch of {args.batch} "
        f"utterances, {features.shape[1]} frames padded, {audio_s:.1f} s of audio; median of {args.repeats} "
        f"interleaved rounds; {args.threads} threads per engine; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after",
        "",
        *(f"- {name} ran with: {w.info}" for name, w in workers.items()),
        "",
        "| engine | s/batch | audio s/s |",
        "| --- | ---: | ---: |",
        *(f"| {LABELS[n]} | {medians[n]:.2f} | {audio_s / medians[n]:.1f} |" for n in ENGINES),
        "",
        f"- every layer, babelgrid vs transformers: **{medians[HF] / medians[OURS]:.2f}x** as fast (goal >= 1.2)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "w2v-BERT 2.0 / SeamlessM4T v2 speech encoder (bench/w2vbert_encoder.py)", text)


if __name__ == "__main__":
    main()
