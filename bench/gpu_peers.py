"""bench/gpu.py's sections against GPU peers (issue 69, part 2): greedy decoding against transformers' ``generate``
on CUDA, and DTW against openai-whisper's Triton ``dtw_cuda``. The module docstring of bench/gpu.py says what each
measures; run them through it (``--sections decode,dtw``)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from bench.common import interleaved


def section_decode(args) -> tuple[list[str], dict]:
    import torch
    import transformers

    from engine.models.random_folder import write_random_folder
    from engine.models.whisper.decoding import DecodingOptions
    from engine.models.whisper.loaded import load_whisper

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    folder = pathlib.Path(args.tmp) / "turbo"
    sizes = (
        {"layers": 1, "width": 64, "heads": 4}
        if args.smoke
        else {"layers": args.decode_layers, "width": 1280, "heads": 20}
    )
    write_random_folder("whisper-turbo", folder, seed=5, force=True, **sizes)
    tokens = 8 if args.smoke else args.tokens
    cuda = "cuda" if torch.cuda.is_available() else "cpu"
    with jax.default_matmul_precision("highest"):
        ours = load_whisper(folder)
        theirs = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval().to(cuda)
        lines, data = [], {}
        for batch in (2,) if args.smoke else args.decode_batches:
            mel = np.random.default_rng(3).standard_normal((batch, ours.dims.n_mels, 3000)).astype(np.float32)
            x = torch.from_numpy(mel).to(cuda)
            options = DecodingOptions(language="de", max_new_tokens=tokens)
            prompt = len(ours.tokenizer.sot_sequence("de"))

            def decode_theirs(x=x):
                with torch.inference_mode():
                    out = theirs.generate(x, language="de", task="transcribe", max_new_tokens=tokens,
                                          force_unique_generate_call=True)  # fmt: skip
                return out.cpu().numpy()

            def decode_ours(mel=mel, options=options):
                return ours.transcribe(mel, options).tokens

            ref = [row[prompt:].tolist() for row in decode_theirs()]
            ref = [r[: r.index(ours.tokenizer.eot)] if ours.tokenizer.eot in r else r for r in ref]
            same = [list(t) for t in decode_ours()] == ref
            med = interleaved({"babelgrid": decode_ours, "transformers": decode_theirs}, args.decode_rounds)
            ratio = med["transformers"] / med["babelgrid"]
            data[batch] = {"seconds": med, "ratio": ratio, "tokens_equal": same}
            lines.append(f"| {batch} | {tokens} | {med['babelgrid']:.3f} | {med['transformers']:.3f} | **{ratio:.2f}x**"
                         f" | {'yes' if same else 'NO'} |")  # fmt: skip
    head = [
        f"A random large-v3-turbo (d 1280, 20 heads, 128 mels, 4-layer decoder, 51866 ids) with {sizes['layers']} "
        f"encoder blocks; random log-mel windows; float32 on both sides, TF32 off; transformers "
        f"{transformers.__version__} `generate` on {cuda} (language and task forced, one generate call); "
        f"babelgrid `transcribe` (encoder + greedy, KV cache, jitted); medians of {args.decode_rounds} interleaved "
        "rounds.",
        "",
        "| windows | new tokens | babelgrid s | transformers s | speed-up | tokens equal |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    return head + lines + ["", "- goal >= 1.0x"], data


# ---------------------------------------------------------------------------------------------------------------


def section_dtw(args) -> tuple[list[str], dict]:
    import torch
    from whisper.timing import dtw_cuda

    from kernels.dtw import dtw_batch

    workloads = [(4, 10, 30)] if args.smoke else [(256, 50, 550), (16, 448, 1500)]
    lines = [
        "Cost matrices of random float32; babelgrid's `dtw_batch` (float32 accumulator, dtw_cuda's ties, one call for "
        "the batch, paths fetched to the host) against openai-whisper's `dtw_cuda` (Triton, one call a matrix as "
        f"`find_alignment` makes, paths on the host); medians of {args.rounds} interleaved rounds.",
        "",
        "| matrices | tokens x frames | babelgrid ms | dtw_cuda ms | speed-up | paths equal |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    data = {}
    for batch, tokens, frames in workloads:
        cost = np.random.default_rng(4).random((batch, tokens, frames), np.float32)
        on_device = jax.device_put(cost)
        n_tok, n_fr = np.full(batch, tokens, np.int32), np.full(batch, frames, np.int32)
        cuda = torch.from_numpy(cost).to("cuda" if torch.cuda.is_available() else "cpu")

        def ours(on_device=on_device, n_tok=n_tok, n_fr=n_fr):
            return jax.device_get(dtw_batch(on_device, n_tok, n_fr, accumulator="float32", ties="dtw_cuda"))

        def theirs(cuda=cuda, batch=batch):
            return [dtw_cuda(cuda[b]) for b in range(batch)]

        got, want = ours(), theirs()
        equal = all(np.array_equal(np.stack([got.token_idx[b, : got.length[b]], got.frame_idx[b, : got.length[b]]]),
                                   want[b]) for b in range(batch))  # fmt: skip
        med = interleaved({"babelgrid": ours, "dtw_cuda": theirs}, args.rounds)
        ratio = med["dtw_cuda"] / med["babelgrid"]
        data[f"{batch}x{tokens}x{frames}"] = {"seconds": med, "ratio": ratio, "paths_equal": equal}
        lines.append(f"| {batch} | {tokens} x {frames} | {med['babelgrid'] * 1e3:.1f} | {med['dtw_cuda'] * 1e3:.1f} | "
                     f"**{ratio:.1f}x** | {'yes' if equal else 'NO'} |")  # fmt: skip
    return lines + ["", "- goal >= 2x"], data
