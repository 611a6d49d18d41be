"""Canary's greedy decoding against transformers' ``generate`` (issue 47: at least 1.2x).

A random-weight ``CanaryForConditionalGeneration`` with Canary-1B-v2's decoder (8 layers, 1024 wide, 8 heads, 4096
feed-forward, 16384 tokens; the encoder cut to 2 real-width blocks, since only its output is read) and a real
SentencePiece tokenizer (tests/models/canary_folder.py's folder). Both sides decode the same encoder states of
``--batch`` real FLEURS clips cut to ``--seconds`` (transformers' encoder output, fed to ``generate`` as
``encoder_outputs`` and to babelgrid's ``LoadedCanary.greedy``), with the same translation prompt, greedy, for
``--tokens`` new tokens: eos is biased off so that every row runs the full length on both sides and the work is equal
(the tokens are checked equal). transformers: ``generate(num_beams=1, do_sample=False)`` with its KV cache, float32,
``torch.inference_mode``, every core; babelgrid: the jitted while-loop with its KV cache, float32, tokens to the
host. Medians of interleaved rounds after a warm-up call of each.

    python bench/canary.py [--batch 4] [--seconds 20] [--tokens 64] [--rounds 5] [--record bench/RESULTS.md]

Run it alone, on a quiet machine (needs the test extras: sentencepiece, torch).
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

CLIPS = ("fleurs-de-001", "fleurs-fr-002", "fleurs-es-003", "fleurs-pt-004", "fleurs-de-009", "fleurs-fr-000")
ENCODER = dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=8, intermediate_size=4096)
DECODER = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
               intermediate_size=4096, head_dim=128)  # fmt: skip
VOCAB, PIECES = 16384, 256


def bench(args) -> str:
    import jax
    import torch
    from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

    from engine.data.audio import load_audio
    from engine.models.fastconformer.canary import load_canary
    from tests.models import canary_folder as cf

    torch.set_num_threads(os.cpu_count())
    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    folder = pathlib.Path(args.tmp) / "canary"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = cf.write_tokenizer(folder, sample, PIECES)
    model = cf.canary(ENCODER, DECODER, VOCAB)
    with torch.no_grad():
        model.proj_out.bias[cf.EOS] = -1e4  # no eos: every row decodes --tokens tokens on both sides
    model.save_pretrained(folder)
    ours = load_canary(folder)
    proc = cf.processor(tokenizer)

    n = int(args.seconds * 16000)
    waves = [np.resize(load_audio(sample / f"{c}.ogg"), n) for c in (CLIPS * args.batch)[: args.batch]]
    x = proc.apply_transcription_request(waves, source_language="de", target_language="en")
    with torch.inference_mode():
        encoded = model.model.encoder(x["input_features"], attention_mask=x["attention_mask"])
    out = ParakeetEncoderModelOutput(last_hidden_state=encoded.last_hidden_state, attention_mask=encoded.attention_mask)
    prompt_ids = x["decoder_input_ids"]
    memory = encoded.last_hidden_state.numpy()
    valid = encoded.attention_mask.sum(-1).numpy().astype(np.int32)
    prompt = ours.prompt("de", "en")
    assert list(prompt_ids[0].tolist()) == prompt, (prompt_ids[0].tolist(), prompt)

    def theirs():
        with torch.inference_mode():
            return model.generate(encoder_outputs=out, decoder_input_ids=prompt_ids, max_new_tokens=args.tokens,
                                  min_new_tokens=args.tokens, do_sample=False, num_beams=1)  # fmt: skip

    def babelgrid():
        return jax.block_until_ready(ours.greedy(memory, valid, prompt, max_tokens=args.tokens))

    ids, lengths = babelgrid()
    reference = theirs()[:, len(prompt) :].numpy()
    same = bool((lengths == args.tokens).all() and np.array_equal(ids[:, : args.tokens], reference))

    run = Run()
    median = interleaved({"babelgrid": babelgrid, "transformers": theirs}, args.rounds)
    ratio = median["transformers"] / median["babelgrid"]
    return "\n".join([
        run.line(),
        "",
        f"Command: `python bench/canary.py --batch {args.batch} --seconds {args.seconds:g} --tokens {args.tokens} "
        f"--rounds {args.rounds}`; a random Canary with Canary-1B-v2's decoder (8 x 1024, 16384 tokens), greedy "
        f"translation prompt, {args.batch} clips of {args.seconds:g} s of encoder states, {args.tokens} new tokens a "
        f"row (eos biased off), float32; medians of {args.rounds} interleaved rounds after a warm-up call of each. "
        f"Tokens equal on both sides: {'yes' if same else 'NO'}.",
        "",
        "| decoding | babelgrid s | transformers s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| Canary greedy, {args.batch} x {args.tokens} tokens | {median['babelgrid']:.2f} | "
        f"{median['transformers']:.2f} | **{ratio:.2f}x** |",
        "",
        f"- goal >= 1.2x: {'met' if ratio >= 1.2 else 'not met'}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--tmp", default="/tmp/bench-canary")
    args = parser.parse_args()
    text = bench(args)
    print(text)
    if args.record:
        record(args.record, "Canary greedy decoding against transformers (bench/canary.py)", text)


if __name__ == "__main__":
    main()
