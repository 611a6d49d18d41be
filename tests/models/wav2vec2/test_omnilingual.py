"""Meta's Omnilingual ASR CTC models (``omniASR_CTC_*``) as their community transformers conversions load them:
``Wav2Vec2ForCTC`` folders, against transformers on real FLEURS clips, every layer and the CTC logit lens.

What a conversion holds (ahmedadelattia/omnilingual_to_hf ``convert_all_omni_to_hf.py``, behind the hub's
``aadel4/omniASR-CTC-300M`` .. ``-1B-v2``): a ``Wav2Vec2Config`` with ``do_stable_layer_norm`` (pre-LN),
``feat_extract_norm="layer"``, ``conv_bias``, the positional conv of ``num_conv_pos_embeddings=128`` in 16 groups,
``vocab_size`` 9812 (v1) or 10288 (v2) and ``pad_token_id=0``; a SentencePiece character vocabulary whose id 0 is
``<s>``, the CTC blank (fairseq2 trains with blank = BOS = 0), ``tokenizer_config.json`` naming ``<s>`` the pad
token and ``▁`` the word delimiter (read as transformers' ``Wav2Vec2CTCTokenizer`` constructor reads it: transformers
5's ``from_pretrained`` drops it, see ``reference_tokenizer``); ``preprocessor_config.json`` with ``do_normalize`` and
no attention mask. The
three differences from the MMS / XLS-R checkpoints this family was written for, and where the port handles them:

- the waveform is layer-normalised (omnilingual_asr's ``add_waveform_processing(normalize_audio=True)``): in
  transformers that is ``Wav2Vec2FeatureExtractor``'s ``do_normalize``, which ``features.py`` computes to the bit;
- blank id 0 (``<s>``), not ``<pad>``: transformers drops the tokenizer's pad token when decoding
  (``Wav2Vec2CTCTokenizer.convert_tokens_to_string``), and so does ``ctc.CTCVocab`` (its ``blank_id`` is the pad
  token's id, 0 here); ``load_wav2vec2`` warns when ``config.json``'s ``pad_token_id`` names another token;
- the positional conv pads ``K // 2`` frames on each side: transformers' ``Wav2Vec2PositionalConvEmbedding``
  (``padding=num_conv_pos_embeddings // 2``) followed by ``Wav2Vec2SamePadLayer``, which drops the one extra frame
  an even ``K`` makes; ``model.PositionalConv`` pads ``K // 2`` and keeps the first ``T`` frames, the same for even
  and odd ``K`` (both checked here).

Tolerances. Every layer within 1e-5 of that layer's largest magnitude, as ``test_wav2vec2_parity.py`` (the same
float32 sums in other orders; measured ~1e-6). The CTC lens (the head on every layer, through the final layer
norm) is compared by its greedy ids, which must be *equal* to transformers' argmax at every valid frame. Rounding can
swap a frame's two best ids only where their gap is under twice the largest logit error; the test asserts every
clip's smallest gap is over 4x its error (measured: errors ~1.4e-6 of the peak, smallest gaps ~7.6e-5 of it, over
50x), so the equality follows from the logits' agreement, not luck. The decoded texts equal
``Wav2Vec2CTCTokenizer``'s.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import transformers

from engine.models.wav2vec2.loaded import load_wav2vec2
from tests.models.wav2vec2 import w2v_reference as ref
from tests.parity import rel_err

RTOL = 1e-5  # of each layer's largest magnitude, see the module docstring
BLANK = "<s>"
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq2's SentencePiece order: bos (the CTC blank), pad, eos, unk
WORD = "\u2581"  # SentencePiece's word boundary, the conversions' word_delimiter_token
# omniASR_CTC_300M_v2 at its real widths (1024 wide, 16 heads, 4096 FFN, K = 128 in 16 groups, 10288 tokens), its
# 24 layers cut to 2.
OMNI_300M = dict(
    hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=2, hidden_act="gelu",
    do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16, vocab_size=10288, pad_token_id=0, bos_token_id=0, eos_token_id=2,
)  # fmt: skip


def write_omni_tokenizer(folder, size: int) -> list[str]:
    """The files a conversion writes beside the weights: a character vocabulary of ``size`` tokens (the specials,
    ``▁``, Latin letters and punctuation, then letters of other scripts), ``tokenizer_config.json`` and
    ``preprocessor_config.json`` as convert_all_omni_to_hf.py writes them."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("'-.,?!")
    chars += [chr(c) for c in (*range(0x400, 0x450), *range(0x600, 0x650), *range(0x900, 0x950))]
    chars += [chr(0x4E00 + i) for i in range(size)]
    tokens = [*SPECIALS, WORD, *chars][:size]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    tokenizer = dict(tokenizer_class="Wav2Vec2CTCTokenizer", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                     pad_token=BLANK, word_delimiter_token=WORD, do_lower_case=False,
                     replace_word_delimiter_char=" ")  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    features = dict(feature_extractor_type="Wav2Vec2FeatureExtractor", feature_size=1, sampling_rate=16000,
                    padding_value=0.0, do_normalize=True, return_attention_mask=False)  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(features), encoding="utf-8")
    return tokens


def lens_alone(model, folder, waves) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """transformers on each clip alone: its ``hidden_states`` and, per layer, the CTC head read through the final
    layer norm (``lm_head(encoder.layer_norm(h))``; at the last layer that is ``Wav2Vec2ForCTC``'s logits)."""
    fe = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    states, lens = [], []
    for w in waves:
        x = fe(w, sampling_rate=ref.SAMPLE_RATE, return_tensors="pt").input_values
        with torch.inference_mode():
            out = model(x, output_hidden_states=True)
        states.append([h[0].numpy() for h in out.hidden_states])
        lens.append(lens_of(model, states[-1]))
        np.testing.assert_array_equal(lens[-1][-1], out.logits[0].numpy())
    return states, lens


def lens_of(model, states: list[np.ndarray]) -> list[np.ndarray]:
    """transformers' CTC head on one clip's ``hidden_states``, read through the final layer norm, per layer."""
    with torch.inference_mode():
        return [model.lm_head(model.wav2vec2.encoder.layer_norm(torch.from_numpy(h)[None]))[0].numpy() for h in states]


def blank_heavy_(model, lens, folder) -> None:
    """Raise the head's bias of ``<s>`` (the blank), ``<pad>`` and ``▁`` so that, like a trained CTC model's, about
    half the frames are blank, some are word boundaries and a few are ``<pad>`` (which transformers keeps as text here:
    it is not the blank). Random heads otherwise never pick them among 10288 ids, and the blank's collapse and the
    word delimiter would go unchecked. ``lens``: ``lens_alone``'s before; saved to ``folder``."""
    logits = np.concatenate([per_layer[-1] for per_layer in lens])
    best_other = logits[:, 5:].max(-1)
    with torch.no_grad():
        for token, share in ((0, 0.5), (1, 0.1), (4, 0.2)):
            # halfway between two frames' margins: a bias at one frame's margin would make that frame a tie
            margin = np.sort(best_other - logits[:, token])
            k = int(share * len(margin))
            model.lm_head.bias[token] += float(margin[k - 1] + margin[k]) / 2
    model.save_pretrained(folder)


def reference_tokenizer(folder) -> transformers.Wav2Vec2CTCTokenizer:
    """``Wav2Vec2CTCTokenizer`` with the arguments of the folder's ``tokenizer_config.json``. Not ``from_pretrained``:
    transformers 5 (5.24 here) moves every ``*_token`` key it does not know as a special-token attribute into
    ``model_specific_special_tokens`` before calling the constructor (``PreTrainedTokenizerBase._from_pretrained``,
    its "V5: Collect model-specific tokens"), so ``word_delimiter_token`` falls back to ``|`` and a ``▁`` delimiter is
    left in the text; transformers 4 passed it, and Meta's SentencePiece decoder turns ``▁`` into a space too."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    names = ("bos_token", "eos_token", "unk_token", "pad_token", "word_delimiter_token", "replace_word_delimiter_char",
             "do_lower_case")  # fmt: skip
    return transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), **{k: config[k] for k in names if k in config})


class Run:
    def __init__(self, folder, fleurs_dir, widths, seed):
        config = transformers.Wav2Vec2Config(**widths)
        self.theirs = ref.build(transformers.Wav2Vec2ForCTC, config, folder, seed)
        self.tokens = write_omni_tokenizer(folder, config.vocab_size)
        self.waves = ref.real_clips(fleurs_dir)
        # The head's bias changes no hidden state: transformers' states of one pass serve, and its CTC head is read
        # on them again once the bias is raised (the last layer's check against the model's own logits is above).
        self.reference, lens = lens_alone(self.theirs, folder, self.waves)
        blank_heavy_(self.theirs, lens, folder)
        self.lens = [lens_of(self.theirs, states) for states in self.reference]
        self.ours = load_wav2vec2(folder)
        wave, self.lengths = self.ours.features(self.waves)
        states, frames = self.ours.encode(wave, self.lengths)
        self.states, self.frames = np.asarray(states), np.asarray(frames)
        self.tokenizer = reference_tokenizer(folder)


@pytest.fixture(scope="module")
def omni(tmp_path_factory, fleurs_dir) -> Run:
    torch.set_num_threads(2)
    return Run(tmp_path_factory.mktemp("omni-300m"), fleurs_dir, OMNI_300M, seed=46)


def test_the_conversion_is_read_as_transformers_reads_it(omni):
    dims, vocab = omni.ours.dims, omni.ours.vocab
    assert dims.do_stable_layer_norm and dims.feat_extract_norm == "layer" and dims.num_conv_pos_embeddings == 128
    assert omni.ours.checkpoint.features.do_normalize and dims.pad_token_id == 0
    assert vocab.blank_id == 0 == omni.tokenizer.pad_token_id and vocab.pad_token == BLANK
    assert vocab.word_delimiter_token == WORD == omni.tokenizer.word_delimiter_token
    assert omni.ours.checkpoint.vocab_size == len(omni.tokens) == 10288


def test_every_layer_equals_hidden_states(omni):
    for i, theirs in enumerate(omni.reference):
        n = int(omni.frames[i])
        assert n == theirs[0].shape[0] and len(theirs) == omni.states.shape[0] == 3
        errors = [rel_err(omni.states[layer, i, :n], t) for layer, t in enumerate(theirs)]
        assert max(errors) < RTOL, (i, errors)
        assert not omni.states[:, i, n:].any()


def test_ctc_lens_greedy_tokens_equal_transformers_argmax(omni):
    blanks = pads = words = 0
    margins = []
    for layer in range(omni.states.shape[0]):
        logits = np.asarray(omni.ours.ctc_logits(omni.states[layer]))
        for i, theirs in enumerate(omni.lens):
            n, t = int(omni.frames[i]), theirs[layer]
            error = rel_err(logits[i, :n], t)
            assert error < RTOL, (layer, i, error)
            top2 = np.sort(t, -1)[:, -2:]
            gap = float((top2[:, 1] - top2[:, 0]).min() / np.abs(t).max())
            # Rounding can swap the two best ids only where their gap is below twice the largest error: equality
            # below is then guaranteed by the logits' agreement, not luck.
            assert gap > 4 * error, (layer, i, gap, error)
            margins.append(gap / error)
            ids = logits[i, :n].argmax(-1)
            np.testing.assert_array_equal(ids, t.argmax(-1))
            collapsed = ids[np.r_[True, ids[1:] != ids[:-1]]]
            emitted = [int(x) for x in collapsed if x != omni.theirs.config.pad_token_id]  # CTC: blank = pad id 0
            text = omni.ours.vocab.decode(ids)
            assert text == omni.tokenizer.decode(t.argmax(-1)), (layer, i)
            assert text == "".join(omni.tokens[x] for x in emitted).replace(WORD, " ").strip()
            blanks += int((ids == 0).sum())
            pads += int((collapsed == 1).sum())
            words += text.count(" ")
    assert blanks and pads and words, "the lens never saw a blank, a <pad> or a ▁: their handling went unchecked"
    assert omni.ours.transcribe(omni.waves) == omni.tokenizer.batch_decode(
        [lens[-1].argmax(-1).tolist() for lens in omni.lens]
    )


@pytest.mark.parametrize("kernel", [128, 127])
def test_positional_conv_pads_half_the_kernel_even_or_odd(kernel, tmp_path, fleurs_dir):
    """transformers pads ``K // 2`` frames each side and drops the last output frame only for an even ``K``; layer 0
    (the positional conv's output added to the projection) is where a wrong padding shows, by a frame's shift."""
    small = dict(OMNI_300M, hidden_size=64, num_attention_heads=4, intermediate_size=128, conv_dim=(32,) * 7,
                 num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=4, vocab_size=40)  # fmt: skip
    theirs = ref.build(transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config(**small), tmp_path, kernel)
    write_omni_tokenizer(tmp_path, 40)
    waves = ref.real_clips(fleurs_dir)[:2]
    reference, _ = lens_alone(theirs, tmp_path, waves)
    ours = load_wav2vec2(tmp_path)
    states, frames = ours.encode_batch(waves)
    for i, t in enumerate(reference):
        n = int(frames[i])
        errors = [rel_err(np.asarray(states[layer, i, :n]), t[layer]) for layer in range(len(t))]
        assert max(errors) < RTOL, (kernel, i, errors)


def test_a_blank_that_disagrees_with_the_config_is_named(tmp_path, caplog):
    """``config.json``'s ``pad_token_id`` (the blank the head was trained with) naming another token than the
    tokenizer's pad token (the one decoding drops) is a broken conversion: decoded as transformers does, and warned."""
    small = dict(OMNI_300M, hidden_size=32, num_attention_heads=2, intermediate_size=32, conv_dim=(16,) * 7,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=40,
                 num_hidden_layers=1)  # fmt: skip
    ref.build(transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config(**small), tmp_path, 0)
    write_omni_tokenizer(tmp_path, 40)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "<pad>"}))
    with caplog.at_level(logging.WARNING):
        loaded = load_wav2vec2(tmp_path)
    assert loaded.vocab.blank_id == 1
    assert "pad_token_id=0" in caplog.text and "'<s>'" in caplog.text and "'<pad>'" in caplog.text, caplog.text
