"""Decoded tokens per second: our greedy and beam search against CTranslate2 ``Whisper.generate`` on the same batch.

    python bench/decode.py [--windows 8] [--rounds 3]

The packaged whisper-base in float32 on CPU, 8 FLEURS windows (transcribe, language forced), each side from its own
encoder output (not timed). Tokens/s counts each side's own output tokens (end-of-text included). Medians of
interleaved rounds (``bench.common.interleaved``): the machine may be shared, which hits every contender alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import interleaved, machine  # noqa: E402


def fleurs_windows(windows: int) -> np.ndarray:
    """f32[windows, 80, 3000]: the first 30 s window's log-mel of the first ``windows`` German FLEURS sample clips."""
    from engine.data.audio import load_audio
    from engine.models.whisper.features import features_for_audio

    # $BABELGRID_FLEURS_SAMPLE as tests/conftest.py reads it: a git worktree does not sit beside ../shared.
    fleurs = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))
    clips = sorted(fleurs.glob("fleurs-de-*.ogg"))[:windows]
    if not clips:
        raise SystemExit(f"no fleurs-de-*.ogg clips in {fleurs}: set BABELGRID_FLEURS_SAMPLE to the FLEURS sample")
    return np.concatenate([features_for_audio(load_audio(p), 80)[0][:1] for p in clips])


def both_sides(windows: int, threads: int, tmp: pathlib.Path):
    """``(whisper, ct2, ours_xa, ct2_xa, prompts)``: the packaged whisper-base as ours (float32) and as CTranslate2
    (float32, ``threads`` intra threads, its folder written under ``tmp``), each side's encoder output of
    ``fleurs_windows(windows)``, and the German transcribe prompts."""
    import ctranslate2
    import jax

    from engine.models.whisper.checkpoints.load import write_packaged_ct2_folder
    from engine.models.whisper.loaded import load_whisper

    mel = fleurs_windows(windows)
    whisper = load_whisper()
    ct2 = ctranslate2.models.Whisper(
        str(write_packaged_ct2_folder(tmp / "ct2")), device="cpu", compute_type="float32", intra_threads=threads
    )
    ours_xa = jax.block_until_ready(whisper.encode(mel, (whisper.dims.n_audio_layer + 1,))[0])
    ct2_xa = ctranslate2.StorageView.from_array(np.asarray(ct2.encode(ctranslate2.StorageView.from_array(mel))))
    prompts = [list(whisper.tokenizer.sot_sequence("de"))] * len(mel)
    return whisper, ct2, ours_xa, ct2_xa, prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 intra_threads")
    args = parser.parse_args()
    from engine.models.whisper.decoding import DecodingOptions

    with tempfile.TemporaryDirectory() as tmp:
        whisper, ct2, ours_xa, ct2_xa, prompts = both_sides(args.windows, args.threads, pathlib.Path(tmp))
        counts = {}

        def ours(beam):
            def run():
                res = whisper.transcribe(None, DecodingOptions(language="de", beam_size=beam), xa=ours_xa)
                counts[f"ours beam {beam}"] = sum(len(t) + 1 for t in res.tokens)

            return run

        def theirs(beam):
            def run():
                out = ct2.generate(ct2_xa, prompts, beam_size=beam, suppress_blank=True, suppress_tokens=[-1])
                counts[f"ct2 beam {beam}"] = sum(len(r.sequences_ids[0]) + 1 for r in out)

            return run

        contenders = {
            "ours beam 1": ours(1),
            "ct2 beam 1": theirs(1),
            "ours beam 5": ours(5),
            "ct2 beam 5": theirs(5),
        }
        load_before = open("/proc/loadavg").read().split()[0]
        seconds = interleaved(contenders, args.rounds)
        load_after = open("/proc/loadavg").read().split()[0]
    isa = "AVX-512" if "avx512f" in open("/proc/cpuinfo").read() else "AVX2"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(
        f"Machine: {machine()} ({isa}). Date: {date}. Commit {git}. Load average (1 min) {load_before} / {load_after}."
    )
    print(f"Command: `python bench/decode.py --windows {args.windows} --rounds {args.rounds}`\n")
    print("| decoding | implementation | median s | tokens | tokens/s | ours / CTranslate2 |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for beam in (1, 5):
        ratio = seconds[f"ct2 beam {beam}"] / seconds[f"ours beam {beam}"]
        for side in ("ours", "ct2"):
            name = f"{side} beam {beam}"
            rate = counts[name] / seconds[name]
            shown = f"{ratio:.2f}x" if side == "ours" else ""
            print(f"| {'greedy' if beam == 1 else 'beam 5'} | {name} | {seconds[name]:.2f} | {counts[name]} | "
                  f"{rate:.0f} | {shown} |")  # fmt: skip


if __name__ == "__main__":
    main()
