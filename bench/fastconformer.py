"""The FastConformer encoder (Parakeet, Canary's) against transformers' PyTorch (issue 47: at least 1.2x).

A random-weight ``ParakeetForCTC`` at transformers' default (released) widths (1024 wide, 8 heads, 4096 feed-forward,
convolution kernel 9, 256 subsampling channels, 80 mels), cut to ``--layers`` blocks, on ``--batch`` real FLEURS clips
cut to ``--seconds``: babelgrid's ``encode`` of every layer (float32, to the host) against transformers' encoder with
``output_hidden_states`` under ``torch.inference_mode`` (float32, every core), both from the same log-mel features and
mask, in interleaved rounds.

    python bench/fastconformer.py [--layers 4] [--batch 4] [--seconds 20] [--rounds 5] [--record bench/RESULTS.md]

Run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, interleaved, record  # noqa: E402

CLIPS = ("fleurs-en-000", "fleurs-de-009", "fleurs-fr-002", "fleurs-es-003", "fleurs-pt-004", "fleurs-en-005")


def bench(args) -> str:
    import jax
    import torch
    import transformers

    from engine.data.audio import load_audio
    from engine.models.fastconformer.loaded import load_fastconformer

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = transformers.ParakeetForCTC(
        transformers.ParakeetCTCConfig(encoder_config={"num_hidden_layers": args.layers})
    ).eval()
    folder = pathlib.Path(args.tmp) / "parakeet"
    model.save_pretrained(folder)
    ours = load_fastconformer(folder)
    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    n = int(args.seconds * 16000)
    waves = [np.resize(load_audio(sample / f"{c}.ogg"), n) for c in (CLIPS * args.batch)[: args.batch]]
    features, valid = ours.features(waves)
    extracted = transformers.ParakeetFeatureExtractor()(waves, sampling_rate=16000, return_tensors="pt")
    x, mask = extracted["input_features"], extracted["attention_mask"]

    def theirs():
        with torch.inference_mode():
            return model.encoder(x, attention_mask=mask, output_hidden_states=True).hidden_states

    def babelgrid():
        return np.asarray(jax.block_until_ready(ours.encode(features, valid)))

    run = Run()
    median = interleaved({"babelgrid": babelgrid, "transformers": theirs}, args.rounds)
    ratio = median["transformers"] / median["babelgrid"]
    return "\n".join([
        run.line(),
        "",
        f"Command: `python bench/fastconformer.py --layers {args.layers} --batch {args.batch} --seconds {args.seconds} "
        f"--rounds {args.rounds}`; a random ParakeetForCTC at transformers' default widths, {args.layers} blocks, "
        f"{args.batch} clips of {args.seconds:g} s, every layer to the host, float32; medians of {args.rounds} "
        "interleaved rounds after a warm-up call of each.",
        "",
        "| encoder | babelgrid s | transformers s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| FastConformer (Parakeet-CTC widths) | {median['babelgrid']:.2f} | {median['transformers']:.2f} | "
        f"**{ratio:.2f}x** |",
        "",
        f"- goal >= 1.2x: {'met' if ratio >= 1.2 else 'not met'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--tmp", default="/tmp/bench-fastconformer")
    args = parser.parse_args()
    text = bench(args)
    print(text)
    if args.record:
        record(args.record, "FastConformer encoder against transformers (bench/fastconformer.py)", text)


if __name__ == "__main__":
    main()
