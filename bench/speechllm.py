"""The speech LLMs' audio towers against transformers' PyTorch (issue 46: at least 1.2x), and random-weight folders.

Bench: for each tower (Qwen2-Audio, Voxtral, Audio Flamingo 3), a random-weight tower at the released widths (1280
wide, 20 heads, 5120 feed-forward units, 128 mels) cut to ``--layers`` blocks, on ``--batch`` 30 s windows of the
real FLEURS clips: babelgrid's ``encode`` of every layer (float32, to the host) against transformers' tower with
``output_hidden_states`` under ``torch.inference_mode`` (float32, its default attention, every core), in interleaved
rounds. Qwen2-Audio and Audio Flamingo 3 get each window's key mask on both sides, as their full models pass it.

    python bench/speechllm.py [--layers 4] [--batch 4] [--rounds 5] [--record bench/RESULTS.md]

Folders: ``--write KIND DIR`` saves a random-weight full model (tower, projector, a one-layer language model) with
``save_pretrained``, for the demo compare of docs/models.md (``--width``, ``--heads``, ``--layers``,
``--text_width``). Run the bench alone, on a quiet machine.
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

KINDS = ("qwen2_audio", "voxtral", "audioflamingo3")
TEXT_WIDTH = {"qwen2_audio": 4096, "voxtral": 3072, "audioflamingo3": 3584}  # the released language models'
CLIPS = ("fleurs-en-000", "fleurs-de-001", "fleurs-fr-002", "fleurs-es-003", "fleurs-pt-004", "fleurs-en-005")


def _audio(kind: str, width: int, heads: int, layers: int) -> dict:
    if kind == "qwen2_audio":
        return dict(num_mel_bins=128, max_source_positions=1500, d_model=width, encoder_attention_heads=heads,
                    encoder_ffn_dim=4 * width, encoder_layers=layers)  # fmt: skip
    return dict(num_mel_bins=128, max_source_positions=1500, hidden_size=width, num_attention_heads=heads,
                intermediate_size=4 * width, num_hidden_layers=layers)  # fmt: skip


def full_model(kind: str, width: int, heads: int, layers: int, text_width: int, seed: int = 0):
    """A random-weight full speech LLM (tower and projector at these widths, a one-layer language model)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    text = dict(hidden_size=text_width, num_hidden_layers=1, intermediate_size=64, num_attention_heads=8,
                num_key_value_heads=8, head_dim=text_width // 8, vocab_size=256)  # fmt: skip
    config_cls, model_cls = {
        "qwen2_audio": (transformers.Qwen2AudioConfig, transformers.Qwen2AudioForConditionalGeneration),
        "voxtral": (transformers.VoxtralConfig, transformers.VoxtralForConditionalGeneration),
        "audioflamingo3": (transformers.AudioFlamingo3Config, transformers.AudioFlamingo3ForConditionalGeneration),
    }[kind]
    return model_cls(config_cls(audio_config=_audio(kind, width, heads, layers), text_config=text)).eval()


def _inputs(batch: int):
    from engine.data.audio import load_audio
    from engine.models.common.logmel import features_for_audio

    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    mels, frames = [], []
    for clip in CLIPS:
        mel, valid = features_for_audio(load_audio(sample / f"{clip}.ogg"), 128)
        mels.append(mel[:1])
        frames.append(valid[:1])
    reps = -(-batch // len(CLIPS))
    return np.concatenate(mels * reps)[:batch], np.concatenate(frames * reps)[:batch]


def bench(args) -> str:
    import jax
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    from engine.models.speechllm.loaded import load_speechllm

    torch.set_num_threads(os.cpu_count())
    mel, frames = _inputs(args.batch)
    mel_t = torch.from_numpy(mel)
    tmp = pathlib.Path(args.tmp)
    rows, ratios = [], {}
    run = Run()
    for kind in KINDS:
        model = full_model(kind, 1280, 20, args.layers, 256)
        folder = tmp / kind
        model.save_pretrained(folder)
        ours = load_speechllm(folder)
        tower = model.model.audio_tower
        if kind == "qwen2_audio":
            keep = torch.from_numpy(np.arange(1500)[None, :] < frames[:, None]).long()
            mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros(len(mel), 1500, 1),
                                             attention_mask=keep)  # fmt: skip
            kwargs = {"attention_mask": mask}
        elif kind == "audioflamingo3":
            kwargs = {"input_features_mask": torch.from_numpy(np.arange(3000)[None, :] < 2 * frames[:, None])}
        else:
            kwargs = {}

        def theirs(tower=tower, kwargs=kwargs):
            with torch.inference_mode():
                return tower(mel_t, output_hidden_states=True, **kwargs).hidden_states

        def babelgrid(ours=ours):
            return np.asarray(jax.block_until_ready(ours.encode(mel, frames)))

        median = interleaved({"babelgrid": babelgrid, "transformers": theirs}, args.rounds)
        ratios[kind] = median["transformers"] / median["babelgrid"]
        rows.append(f"| {kind} | {median['babelgrid']:.2f} | {median['transformers']:.2f} | **{ratios[kind]:.2f}x** |")
    met = all(r >= 1.2 for r in ratios.values())
    return "\n".join([
        run.line(),
        "",
        f"Command: `python bench/speechllm.py --layers {args.layers} --batch {args.batch} --rounds {args.rounds}`; "
        f"random towers at the released widths (1280 x 20 heads, 5120 feed-forward, 128 mels), {args.layers} blocks, "
        f"{args.batch} windows of 30 s of real clips, every layer to the host, float32; medians of {args.rounds} "
        "interleaved rounds after a warm-up call of each.",
        "",
        "| tower | babelgrid s | transformers s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        f"- goal >= 1.2x for every tower: {'met' if met else 'not met'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--tmp", default="/tmp/bench-speechllm")
    parser.add_argument("--write", nargs=2, metavar=("KIND", "DIR"), help="save a random-weight full model and stop")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--text_width", type=int, default=None)
    args = parser.parse_args()
    if args.write:
        kind, folder = args.write
        if kind not in KINDS:
            parser.error(f"KIND must be one of {KINDS}")
        model = full_model(kind, args.width, args.heads, args.layers, args.text_width or TEXT_WIDTH[kind])
        model.save_pretrained(folder)
        print(f"wrote a random-weight {kind} ({args.layers} blocks x {args.width}) to {folder}")
        return
    text = bench(args)
    print(text)
    if args.record:
        record(args.record, "speech-LLM towers against transformers (bench/speechllm.py)", text)


if __name__ == "__main__":
    main()
