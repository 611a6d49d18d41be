"""Whisper large-v3-turbo against transformers' PyTorch Whisper (issue 46: at least 1.2x): the encoder, every layer,
and greedy transcription of 30 s windows with turbo's 4-layer decoder.

A random-weight turbo folder (``babelgrid random-model --kind whisper-turbo``'s: turbo's config.json,
generation_config.json and v3 ids, at its real widths: 1280 x 20 heads, 128 mels, a 4-layer decoder over 51866 ids)
with the encoder cut to ``--layers`` blocks of the 32, on ``--batch`` 30 s windows of real FLEURS clips (Hugging
Face's own log-mel on both sides):
- encoder: babelgrid's ``encode`` of every layer (0 .. L+1, to the host) against ``model.model.encoder`` with
  ``output_hidden_states=True``;
- transcription: babelgrid's ``transcribe`` (encoder + greedy decoding, KV cache, jitted) against ``generate`` with the
  language and task forced (``force_unique_generate_call``), ``--tokens`` new tokens a window (random weights never
  say end-of-text; the tokens are checked equal, so the work is the same).
Both float32 under ``torch.inference_mode``, every core, transformers' default attention; medians of interleaved
rounds after a warm-up call of each.

    python bench/turbo.py [--layers 4] [--batch 4] [--tokens 32] [--rounds 5] [--record bench/RESULTS.md]

Run it alone, on a quiet machine (needs the test extras: torch, transformers).
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

CLIPS = ("fleurs-de-001", "fleurs-fr-002", "fleurs-es-003", "fleurs-pt-004", "fleurs-en-005", "fleurs-de-000")


SEED = 5


def write_folder(folder: pathlib.Path, layers: int) -> None:
    """The random turbo at its real widths with ``layers`` encoder blocks (a folder this bench wrote is replaced)."""
    from engine.models.random_folder import write_random_folder

    write_random_folder("whisper-turbo", folder, layers=layers, width=1280, heads=20, seed=SEED, force=True)


def bench(args) -> str:
    import jax
    import torch
    import transformers

    from engine.data.audio import load_audio
    from engine.models.whisper.decoding import DecodingOptions
    from engine.models.whisper.loaded import load_whisper

    torch.set_num_threads(os.cpu_count())
    folder = pathlib.Path(args.tmp) / f"turbo-{args.layers}"
    write_folder(folder, args.layers)
    ours = load_whisper(folder)
    theirs = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    audio = [load_audio(sample / f"{c}.ogg") for c in (CLIPS * args.batch)[: args.batch]]
    extractor = transformers.WhisperFeatureExtractor(feature_size=ours.dims.n_mels)
    mel = extractor(audio, sampling_rate=16000, return_tensors="np", padding="max_length").input_features
    mel = mel.astype(np.float32)
    x = torch.from_numpy(mel)
    options = DecodingOptions(language="de", max_new_tokens=args.tokens)
    prompt = len(ours.tokenizer.sot_sequence("de"))

    def encoder_theirs():
        with torch.inference_mode():
            return theirs.model.encoder(x, output_hidden_states=True).hidden_states

    def encoder_ours():
        return np.asarray(jax.block_until_ready(ours.encode(mel)))

    def decode_theirs():
        with torch.inference_mode():
            return theirs.generate(x, language="de", task="transcribe", max_new_tokens=args.tokens,
                                   force_unique_generate_call=True)  # fmt: skip

    def decode_ours():
        return ours.transcribe(mel, options).tokens

    ref = [row[prompt:].tolist() for row in decode_theirs().numpy()]
    ref = [r[: r.index(ours.tokenizer.eot)] if ours.tokenizer.eot in r else r for r in ref]
    got = [list(t) for t in decode_ours()]
    same = got == ref
    lengths = sorted({len(r) for r in ref})

    run = Run()
    engines = {"enc babelgrid": encoder_ours, "enc transformers": encoder_theirs, "dec babelgrid": decode_ours,
               "dec transformers": decode_theirs}  # fmt: skip
    median = interleaved(engines, args.rounds)
    rows, met = [], True
    for what, key in (("encoder, every layer", "enc"), (f"transcribe (encoder + {args.tokens} greedy tokens)", "dec")):
        ratio = median[f"{key} transformers"] / median[f"{key} babelgrid"]
        met &= ratio >= 1.2
        rows.append(f"| {what} | {median[f'{key} babelgrid']:.2f} | {median[f'{key} transformers']:.2f} | "
                    f"**{ratio:.2f}x** |")  # fmt: skip
    return "\n".join([
        run.line(),
        "",
        f"Command: `python bench/turbo.py --layers {args.layers} --batch {args.batch} --tokens {args.tokens} --rounds "
        f"{args.rounds}`; a random large-v3-turbo (1280 x 20 heads, 128 mels, 4-layer decoder, 51866 ids) with "
        f"{args.layers} encoder blocks, {args.batch} windows of 30 s of real clips, float32; medians of {args.rounds} "
        f"interleaved rounds after a warm-up call of each. Tokens a window: {lengths}; equal on both sides: "
        f"{'yes' if same else 'NO'}.",
        "",
        "| turbo | babelgrid s | transformers s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        f"- goal >= 1.2x for both: {'met' if met else 'not met'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--tmp", default="/tmp/bench-turbo")
    args = parser.parse_args()
    text = bench(args)
    print(text)
    if args.record:
        record(args.record, "Whisper large-v3-turbo against transformers (bench/turbo.py)", text)


if __name__ == "__main__":
    main()
