"""Canary's greedy decoding against transformers' ``generate`` (issue 47: at least 1.2x).

A random-weight ``CanaryForConditionalGeneration`` with Canary-1B-v2's decoder (8 layers, 1024 wide, 8 heads, 4096
feed-forward, 16384 tokens; the encoder cut to 2 real-width blocks, since only its output is read), built here with
transformers, in the folder ``babelgrid random-model --kind canary`` writes (its tokenizer: Canary's control and
language tokens in Canary's order; the model's config and weights replaced by this one's). Both sides decode the same
encoder states of ``--batch`` real FLEURS clips cut to ``--seconds`` (transformers' encoder output, fed to ``generate``
as ``encoder_outputs`` and to babelgrid's ``LoadedCanary.greedy``), with the same translation prompt, greedy, for
``--tokens`` new tokens: eos is biased off so that every row runs the full length on both sides and the work is equal
(the tokens are checked equal). transformers: ``generate(num_beams=1, do_sample=False)`` with its KV cache, float32,
``torch.inference_mode``, every core; babelgrid: the jitted while-loop with its KV cache, float32, tokens to the
host. Medians of interleaved rounds after a warm-up call of each.

    python bench/canary.py [--batch 4] [--seconds 20] [--tokens 64] [--rounds 5] [--record bench/RESULTS.md]

Run it alone, on a quiet machine (needs torch and transformers: the test extras).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, interleaved, record  # noqa: E402

CLIPS = ("fleurs-de-001", "fleurs-fr-002", "fleurs-es-003", "fleurs-pt-004", "fleurs-de-009", "fleurs-fr-000")
ENCODER = dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=8, intermediate_size=4096)
DECODER = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
               intermediate_size=4096, head_dim=128)  # fmt: skip
VOCAB = 16384
EOS = 3  # <|endoftext|>, in Canary's order (CanaryConfig's eos_token_id; random-model's tokenizer keeps that order)
# The prompt transformers' test_processing_canary expects from apply_transcription_request (the hub's chat template is
# not needed offline): <|startofcontext|><|startoftranscript|><|emo:undefined|><|src|><|tgt|><|pnc|><|noitn|>...
TEMPLATE = (
    "{%- for message in messages -%}{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}"
    "<|startofcontext|><|startoftranscript|><|emo:undefined|>"
    "<|{{ c['source_language'] }}|><|{{ c['target_language'] }}|>{{ '<|pnc|>' if c['punctuation'] else '<|nopnc|>' }}"
    "<|noitn|><|notimestamp|><|nodiarize|>{%- endif -%}{%- endfor -%}{%- endfor -%}"
)


def random_canary():
    """transformers' Canary at the module docstring's widths: matrices of variance 1 / fan_in, vectors perturbed by
    0.05, the decoder's ``embedding_layernorm`` weight negated (with the embedding tied to ``proj_out``, a random
    decoder otherwise repeats the prompt's last token) and eos biased off, so that every row decodes ``--tokens``."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.CanaryConfig(
        encoder_config={"num_mel_bins": 128, "scale_input": False, **ENCODER},
        decoder_config={**DECODER, "vocab_size": VOCAB}, vocab_size=VOCAB,
    )  # fmt: skip
    model = transformers.CanaryForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5, generator=gen)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        model.model.decoder.embedding_layernorm.weight.neg_()
        model.proj_out.bias[EOS] = -1e4
    return model


def processor(folder: pathlib.Path):
    """transformers' ``CanaryProcessor`` on the folder's tokenizer, with ``TEMPLATE``."""
    import transformers

    tokenizer = transformers.TokenizersBackend.from_pretrained(folder)
    return transformers.CanaryProcessor(transformers.ParakeetFeatureExtractor(feature_size=128), tokenizer,
                                        chat_template=TEMPLATE)  # fmt: skip


def bench(args, folder: pathlib.Path) -> str:
    import jax
    import torch
    from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

    from engine.data.audio import load_audio
    from engine.models.fastconformer.canary import load_canary
    from engine.models.random_folder import write_random_folder

    torch.set_num_threads(os.cpu_count())
    sample = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))
    write_random_folder("canary", folder)  # the tokenizer and feature files of a Canary folder
    model = random_canary()
    model.save_pretrained(folder)  # config.json and the weights at this bench's widths replace random-model's
    ours = load_canary(folder)
    proc = processor(folder)

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
    parser.add_argument("--tmp", default=None, help="where the model folder is written (a new folder, removed after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-canary-", dir=args.tmp) as tmp:
        text = bench(args, pathlib.Path(tmp) / "canary")
    print(text)
    if args.record:
        record(args.record, "Canary greedy decoding against transformers (bench/canary.py)", text)


if __name__ == "__main__":
    main()
