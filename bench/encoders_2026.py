"""The encoders of issue 83 against transformers' PyTorch (issue 83 item 5: at least 1.2x each).

For each encoder (``--only`` picks some), a random-weight folder at the released widths cut to ``--layers`` blocks,
written by babelgrid's NumPy random-model writer (``engine.models.random_folder``) with the released sizes the
writer's small kinds leave out put back (``Encoder.released``), and the same tensors loaded into transformers' encoder
class:

- ``qwen3-asr``: Qwen3-ASR-1.7B's audio encoder (1024 wide, 16 heads, 4096 feed-forward, 480 downsampler channels,
  attention windows of 104 frames), against ``Qwen3ASREncoder``;
- ``gemma3n``, ``gemma4``: the USM Conformer of Gemma 3n (1536 wide, 8 heads, subsampler 128/32 channels) and of
  Gemma 4 E2B/E4B (1024 wide, 8 heads, output projection to 1536), against ``Gemma3nAudioEncoder`` and
  ``Gemma4AudioModel``;
- ``voxtral-realtime``: Voxtral Realtime's encoder (1280 wide, 32 heads of 64, SwiGLU 5120, the 750-frame sliding
  window), against ``VoxtralRealtimeEncoder``;
- ``cohere-asr``: Cohere ASR's FastConformer encoder (1280 wide, 8 heads, 5120 feed-forward, kernel 9, subsampling
  256 channels), against ``CohereAsrForConditionalGeneration``'s ``ParakeetEncoder`` read from the same folder.

Both sides get the same features: babelgrid's (each family's log-mel, checked against transformers' extractors in
the parity tests) of the first 30 s window of ``--batch`` real FLEURS clips (``bench/speechllm.py``'s), zero-padded
to the window (Cohere's to the longest clip, as its extractor pads), as float32 input, with each side's own padding
mask; babelgrid's batch as its encode job's ``collate`` gives it (Qwen3's cut to the attention windows its longest
clip needs, ``qwen3_loaded.trimmed``: transformers packs the valid frames; Voxtral Realtime's to its longest clip
rounded up to 4 s, ``realtime_loaded.trimmed_collate``, where transformers' own extractor pads to the longest clip,
which it is given). ``--seconds 30`` joins the clips end to end into inputs of 30 s each, the windows of FLEURS's
long utterances, where no cut applies. Timed: babelgrid's ``encode`` of every
layer, float32, to the host, against transformers' forward with ``output_hidden_states`` under
``torch.inference_mode`` (float32, its default attention, every core), in interleaved rounds; medians and their
ratio. ``Gemma3nAudioEncoder`` records no hidden states, so forward hooks on its blocks read
them (what ``output_hidden_states`` does inside the other classes). Once per encoder the outputs are compared over
the valid frames: every layer transformers returns (each block's input and output, and the final norm's where the
encoder has one) against babelgrid's, as ``max |ours - theirs| / max |theirs|``.

    python bench/encoders_2026.py [--only qwen3-asr,gemma3n,...] [--layers 4] [--batch 4] [--rounds 5]
                                  [--seconds 30] [--record bench/RESULTS.md]
    python bench/encoders_2026.py --smoke      # 1 block, 1 window, 1 round each: checks that it runs

Run it alone, on a quiet machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import types
from unittest import mock

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, interleaved, record  # noqa: E402
from bench.speechllm import CLIPS  # noqa: E402

SECTION = "Issue 83's encoders against transformers (bench/encoders_2026.py)"


@dataclasses.dataclass(frozen=True)
class Encoder:
    """One encoder: its random-model kind, released width and heads, and what the writer's small kind sets apart."""

    kind: str
    label: str
    width: int
    heads: int
    patch: tuple[str, str]  # (module, function) whose returned config dict gets the released sizes
    released: dict  # key -> value, set in the config's sub-dictionary at ``where``
    where: tuple[str, ...]  # path to that sub-dictionary ((): the function returns it)


ENCODERS = {
    e.kind: e
    for e in (
        Encoder("qwen3-asr", "Qwen3-ASR-1.7B audio encoder", 1024, 16,
                ("engine.models.speechllm.qwen3_random", "config"), {"downsample_hidden_size": 480},
                ("thinker_config", "audio_config")),
        Encoder("gemma3n", "USM Conformer (Gemma 3n)", 1536, 8, ("engine.models.speechllm.usm_random", "config"),
                {"sscp_conv_channel_size": [128, 32]}, ("audio_config",)),
        Encoder("gemma4", "USM Conformer (Gemma 4 E2B/E4B)", 1024, 8, ("engine.models.speechllm.usm_random", "config"),
                {"subsampling_conv_channels": [128, 32]}, ("audio_config",)),
        Encoder("voxtral-realtime", "Voxtral Realtime encoder", 1280, 32,
                ("engine.models.speechllm.realtime_random", "config"), {"head_dim": 64}, ("audio_config",)),
        Encoder("cohere-asr", "Cohere ASR encoder (FastConformer)", 1280, 8,
                ("engine.models.fastconformer.random_folder", "_encoder"), {"subsampling_conv_channels": 256}, ()),
    )
}  # fmt: skip


def write_folder(enc: Encoder, folder: pathlib.Path, layers: int) -> None:
    """``babelgrid random-model --kind enc.kind`` at the released width and heads, ``layers`` blocks, with
    ``enc.released`` set in the config the writer draws its tensor shapes from (so the tensors follow)."""
    import importlib

    from engine.models.random_folder import write_random_folder

    module = importlib.import_module(enc.patch[0])
    original = getattr(module, enc.patch[1])

    def released(*args, **kwargs):
        raw = original(*args, **kwargs)
        part = raw
        for key in enc.where:
            part = part[key]
        part.update(enc.released)
        return raw

    with mock.patch.object(module, enc.patch[1], released):
        write_random_folder(enc.kind, folder, layers=layers, width=enc.width, heads=enc.heads, force=True)


def _tower_state(folder: pathlib.Path, prefix: str, skip=()) -> dict:
    import torch
    from safetensors.numpy import load_file

    tensors = load_file(folder / "model.safetensors")
    return {k[len(prefix) :]: torch.from_numpy(v) for k, v in tensors.items()
            if k.startswith(prefix) and k.split(".")[-2] not in skip}  # fmt: skip


def _audio_config(folder: pathlib.Path, *path: str) -> dict:
    raw = json.loads((folder / "config.json").read_text())
    for key in path:
        raw = raw[key]
    return raw


def pair(kind: str, folder: pathlib.Path, audio: list[np.ndarray]):
    """(babelgrid's call, transformers' call, babelgrid's valid frames per row, how to read transformers' layers) on
    the same features of ``audio`` (one window each)."""
    import jax
    import torch

    hooked, ours_in = None, None
    if kind == "qwen3-asr":
        from transformers.models.qwen3_asr.configuration_qwen3_asr import Qwen3ASREncoderConfig
        from transformers.models.qwen3_asr.modeling_qwen3_asr import Qwen3ASREncoder

        from engine.models.speechllm.qwen3_loaded import load_qwen3_audio, trimmed

        ours = load_qwen3_audio(folder)
        cfg = _audio_config(folder, "thinker_config", "audio_config")
        keep = ("num_mel_bins", "d_model", "encoder_attention_heads", "encoder_ffn_dim", "encoder_layers",
                "downsample_hidden_size", "n_window", "n_window_infer", "output_dim")  # fmt: skip
        tower = Qwen3ASREncoder(Qwen3ASREncoderConfig(**{k: cfg[k] for k in keep})).eval()
        tower.load_state_dict(_tower_state(folder, "thinker.audio_tower.", ("proj1", "proj2")), strict=True)
        windows = [ours.features(a) for a in audio]
        mel = np.concatenate([m[:1] for m, _ in windows])
        valid = np.concatenate([v[:1] for _, v in windows])
        frames = ours.frames(valid)
        x = torch.from_numpy(mel)
        mask = torch.from_numpy(np.arange(mel.shape[-1])[None, :] < valid[:, None]).long()
        args, kwargs = (x, mask), {}
        packed = True  # transformers packs the valid frames of the batch
        # babelgrid's side as its encode job's collate gives the batch: cut to the attention windows it needs
        ours_in = trimmed(ours.config, mel, valid)
    elif kind in ("gemma3n", "gemma4"):
        from engine.models.speechllm.usm_loaded import collate, load_usm

        ours = load_usm(folder)
        cfg = {k: v for k, v in _audio_config(folder, "audio_config").items() if k != "model_type"}
        mel, valid = collate([ours.features(a)[0] for a in audio], len(audio))
        frames = ours.frames(valid)
        x = torch.from_numpy(mel)
        keep = torch.from_numpy(np.arange(mel.shape[1])[None, :] < valid[:, None])
        if kind == "gemma3n":
            from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
            from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

            tower = Gemma3nAudioEncoder(Gemma3nAudioConfig(**cfg)).eval()
            args, kwargs = (x, ~keep), {}  # its mask: True where padded
            hooked = tower.conformer  # its output_hidden_states records nothing: hooks read the blocks
        else:
            from transformers.models.gemma4.configuration_gemma4 import Gemma4AudioConfig
            from transformers.models.gemma4.modeling_gemma4 import Gemma4AudioModel

            tower = Gemma4AudioModel(Gemma4AudioConfig(**cfg)).eval()
            args, kwargs = (x, keep), {}
        tower.load_state_dict(_tower_state(folder, "model.audio_tower."), strict=True)
        packed = False
    elif kind == "voxtral-realtime":
        from transformers.models.voxtral_realtime.configuration_voxtral_realtime import VoxtralRealtimeEncoderConfig
        from transformers.models.voxtral_realtime.modeling_voxtral_realtime import VoxtralRealtimeEncoder

        from engine.models.speechllm.realtime_loaded import load_realtime, trimmed_collate

        ours = load_realtime(folder)
        cfg = {k: v for k, v in _audio_config(folder, "audio_config").items() if k != "model_type"}
        tower = VoxtralRealtimeEncoder(VoxtralRealtimeEncoderConfig(**cfg)).eval()
        tower.load_state_dict(_tower_state(folder, "audio_tower."), strict=True)
        # babelgrid's batch as its encode job's collate gives it (the longest clip's mel frames rounded up to 4 s),
        # transformers' as its feature extractor pads a batch (padding="longest": the longest clip's mel frames)
        mel, valid = trimmed_collate([ours.features(a)[0] for a in audio], len(audio))
        frames = ours.frames(valid)
        longest = int(valid.max())
        args, kwargs = (), {"input_features": torch.from_numpy(mel[:, :, :longest].copy())}  # causal: padding unseen
        packed = False
    elif kind == "cohere-asr":
        import transformers

        from engine.models.fastconformer.loaded import load_fastconformer

        ours = load_fastconformer(folder)
        tower = transformers.CohereAsrForConditionalGeneration.from_pretrained(folder).eval().model.encoder
        mel, valid = ours.features([a[: 30 * 16000] for a in audio])
        frames = ours.frames(valid)
        args = (torch.from_numpy(mel),)
        kwargs = {"attention_mask": torch.from_numpy(np.arange(mel.shape[1])[None, :] < valid[:, None])}
        packed = False
    else:
        raise ValueError(f"unknown encoder {kind!r}: choose from {', '.join(ENCODERS)}")

    # output_hidden_states would put the last hidden state (after a final norm or projection) in place of the last
    # block's output; untied, it gives every block's, the last hidden state still returned beside them
    tower.config.tie_last_hidden_states = False

    mel_in, valid_in = ours_in or (mel, valid)

    def babelgrid():
        return np.asarray(jax.block_until_ready(ours.encode(mel_in, valid_in)))

    def theirs():
        with torch.inference_mode():
            return tower(*args, output_hidden_states=True, **kwargs)

    if hooked is not None:
        states: list = []
        hooked[0].register_forward_pre_hook(lambda m, a: states.append(a[0]))
        for block in hooked:
            block.register_forward_hook(lambda m, a, o: states.append(o))

        def theirs():  # noqa: F811 - the blocks' states as output_hidden_states would give them
            states.clear()
            with torch.inference_mode():
                out = tower(*args, **kwargs)
            return types.SimpleNamespace(hidden_states=tuple(states), last_hidden_state=out.last_hidden_state)

    return babelgrid, theirs, frames, packed


def agreement(got: np.ndarray, out, frames: np.ndarray, packed: bool) -> tuple[float, int]:
    """Largest ``max |ours - theirs| / max |theirs|`` over the layers transformers returns, valid frames only, and how
    many layers were compared: its hidden states (the first block's input, each block's output), then its last
    hidden state where babelgrid stores that too (a final norm: Qwen3's ``ln_post``, Voxtral Realtime's ``norm``)."""
    want = [h.numpy() for h in out.hidden_states]
    if len(got) == len(want) + 1:
        want.append(out.last_hidden_state.numpy())
    if len(got) != len(want):
        raise RuntimeError(f"babelgrid returned {len(got)} layers, transformers {len(want)}")
    edges = np.concatenate([[0], np.cumsum(frames)])
    worst = 0.0
    for ours, theirs in zip(got, want, strict=True):
        for b, n in enumerate(frames):
            t = theirs[edges[b] : edges[b + 1]] if packed else theirs[b, :n]
            worst = max(worst, float(np.abs(ours[b, :n] - t).max() / np.abs(t).max()))
    return worst, len(want)


def joined(audio: list[np.ndarray], seconds: float) -> list[np.ndarray]:
    """As many inputs as ``audio``, each ``seconds`` long: the clips end to end from the input's own, round the
    list."""
    n = int(seconds * 16000)
    out = []
    for i in range(len(audio)):
        parts, have = [], 0
        while have < n:
            parts.append(audio[(i + len(parts)) % len(audio)])
            have += len(parts[-1])
        out.append(np.concatenate(parts)[:n])
    return out


def bench(args) -> str:
    import torch
    import transformers

    from engine.data.audio import load_audio

    transformers.logging.set_verbosity_error()  # its load report names BatchNorm's unread num_batches_tracked
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(os.cpu_count())
    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    audio = [load_audio(sample / f"{c}.ogg") for c in (CLIPS * args.batch)[: args.batch]]
    if args.seconds:
        audio = joined(audio, args.seconds)
    tmp = pathlib.Path(args.tmp)
    run = Run()
    rows, ratios = [], {}
    for kind in args.only:
        enc = ENCODERS[kind]
        folder = tmp / kind
        write_folder(enc, folder, args.layers)
        babelgrid, theirs, frames, packed = pair(kind, folder, audio)
        err, n_layers = agreement(babelgrid(), theirs(), frames, packed)
        print(f"{kind}: {n_layers} layers agree within {err:.1e} of each layer's peak", flush=True)
        median = interleaved({"babelgrid": babelgrid, "transformers": theirs}, args.rounds)
        ratios[kind] = median["transformers"] / median["babelgrid"]
        rows.append(f"| {enc.label} (`{kind}`, {enc.width} x {enc.heads} heads) | {median['babelgrid']:.2f} | "
                    f"{median['transformers']:.2f} | **{ratios[kind]:.2f}x** | {err:.1e} |")  # fmt: skip
        print(rows[-1], flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    met = all(r >= 1.2 for r in ratios.values())
    return "\n".join([
        run.line(),
        "",
        f"Command: `python bench/encoders_2026.py --only {','.join(args.only)} --layers {args.layers} "
        f"--batch {args.batch} --rounds {args.rounds}{f' --seconds {args.seconds:g}' if args.seconds else ''}`; "
        f"random weights at the released widths, {args.layers} blocks, "
        f"the first 30 s window of {args.batch} real FLEURS clips"
        f"{f' joined end to end into inputs of {args.seconds:g} s' if args.seconds else ''} as babelgrid's log-mel "
        "features on both sides (each "
        "batch as the encode job's collate gives it: Qwen3's cut to the attention windows its longest clip needs, "
        "as transformers packs the valid frames; Voxtral Realtime's to the longest clip rounded up to 4 s, "
        "transformers' to the longest clip, as its feature extractor pads), every "
        f"layer to the host, float32; medians of {args.rounds} interleaved rounds after a warm-up call of each. "
        "Agreement: the largest `max |ours - theirs| / max |theirs|` over the layers transformers returns, valid "
        "frames.",
        "",
        "| encoder | babelgrid s | transformers s | speed-up | agreement |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"- goal >= 1.2x for every encoder: {'met' if met else 'not met'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ENCODERS), help=f"comma-separated, of {', '.join(ENCODERS)}")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.0, help="join the clips into inputs of this length")
    parser.add_argument("--smoke", action="store_true", help="1 block, 1 window, 1 round: checks that it runs")
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--tmp", default="/tmp/bench-encoders-2026")
    args = parser.parse_args()
    if not 0 <= args.seconds <= 30:
        parser.error(f"--seconds {args.seconds:g}: give 0 (the clips as they are) up to 30 (one window)")
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in args.only if k not in ENCODERS]
    if unknown or not args.only:
        parser.error(f"--only {','.join(unknown) or '(none)'}: choose from {', '.join(ENCODERS)}")
    if args.smoke and args.record:
        parser.error("--smoke checks that the program runs; its numbers are not a result: drop --record")
    if args.smoke:
        args.layers, args.batch, args.rounds = 1, 1, 1
    text = bench(args)
    print(text)
    if args.record:
        record(args.record, SECTION, text)


if __name__ == "__main__":
    main()
