"""Random-weight Canary folders for the decoder tests (tests/models/fastconformer/test_canary.py,
tests/jobs/test_decode_canary.py), made as the hub's are: transformers'
``CanaryForConditionalGeneration.save_pretrained`` beside a real tokenizer.

Tokenizer: a SentencePiece BPE model trained on the FLEURS sample's transcripts with Canary's control tokens as its
first user-defined pieces, in Canary-1B-v2's order (``<unk>`` 0, ``<|nospeech|>`` 1, ``<pad>`` 2, ``<|endoftext|>`` 3,
``<|startoftranscript|>`` 4, ``<|pnc|>`` 5, ``<|nopnc|>`` 6, ``<|startofcontext|>`` 7: ``CanaryConfig``'s pad, eos,
bos and decoder start ids), then the other prompt tokens and five languages; converted by transformers' own
``CanaryConverter`` and saved by ``TokenizersBackend`` with the special tokens ``convert_canary_nemo_to_hf`` names.

Processor: ``CanaryProcessor`` with a chat template that renders the prompt transformers' ``test_processing_canary``
expects from ``apply_transcription_request`` (the hub's template is not reachable here): ``<|startofcontext|>
<|startoftranscript|><|emo:undefined|><|src|><|tgt|><|pnc|><|noitn|><|notimestamp|><|nodiarize|>``.

Weights: matrices of variance 1 / fan_in, vectors perturbed by 0.05, BatchNorm statistics away from 0 and 1; the
decoder's ``embedding_layernorm`` weight negated and ``proj_out``'s bias on ``<|endoftext|>`` set to ``EOS_BIAS``.
Why: with the embedding tied to ``proj_out`` (as in Canary), a random decoder's residual stream keeps the input
token's direction and greedy repeats the last prompt token forever; negating it makes the next token differ, and the
eos bias ends some decodes after a few tokens while others run to the limit (the tests assert both happen).
"""

from __future__ import annotations

import io
import pathlib

import sentencepiece as spm  # test-only
import torch
import transformers

LANGUAGES = ("en", "de", "es", "fr", "pt")
SPECIAL = ("<|nospeech|>", "<pad>", "<|endoftext|>", "<|startoftranscript|>", "<|pnc|>", "<|nopnc|>",
           "<|startofcontext|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>", "<|diarize|>",
           "<|nodiarize|>", "<|emo:undefined|>", *(f"<|{c}|>" for c in LANGUAGES))  # fmt: skip
EOS, EOS_BIAS = 3, 2.0
TEMPLATE = (
    "{%- for message in messages -%}{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}"
    "<|startofcontext|><|startoftranscript|><|emo:undefined|>"
    "<|{{ c['source_language'] }}|><|{{ c['target_language'] }}|>{{ '<|pnc|>' if c['punctuation'] else '<|nopnc|>' }}"
    "<|noitn|><|notimestamp|><|nodiarize|>{%- endif -%}{%- endfor -%}{%- endfor -%}"
)


def write_tokenizer(folder: pathlib.Path, fleurs_dir: pathlib.Path, pieces: int):
    from transformers.convert_slow_tokenizer import CanaryConverter

    texts = [p.read_text().strip() for p in sorted(fleurs_dir.glob("*.txt"))]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe", vocab_size=pieces,
        character_coverage=1.0, minloglevel=2, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        user_defined_symbols=list(SPECIAL),
    )  # fmt: skip
    model_file = folder / "tokenizer.model"
    model_file.write_bytes(buffer.getvalue())
    backend = CanaryConverter(str(model_file)).converted()
    model_file.unlink()  # the hub folder has tokenizer.json only
    tokenizer = transformers.TokenizersBackend(
        tokenizer_object=backend, clean_up_tokenization_spaces=False, bos_token="<|startoftranscript|>",
        eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>",
    )  # fmt: skip
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL[:7]] == list(range(1, 8))
    tokenizer.save_pretrained(folder)
    return tokenizer


def processor(tokenizer) -> transformers.CanaryProcessor:
    extractor = transformers.ParakeetFeatureExtractor(feature_size=128)
    return transformers.CanaryProcessor(extractor, tokenizer, chat_template=TEMPLATE)


def canary(encoder: dict, decoder: dict, vocab: int, seed: int = 0) -> transformers.CanaryForConditionalGeneration:
    """A random Canary with the module docstring's weights."""
    torch.manual_seed(0)
    config = transformers.CanaryConfig(
        encoder_config={"num_mel_bins": 128, "scale_input": False, **encoder},
        decoder_config={**decoder, "vocab_size": vocab}, vocab_size=vocab,
    )  # fmt: skip
    model = transformers.CanaryForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5, generator=gen)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.exp(torch.randn(b.shape, generator=gen) * 0.3))
        model.model.decoder.embedding_layernorm.weight.neg_()
        model.proj_out.bias[EOS] = EOS_BIAS
    return model
