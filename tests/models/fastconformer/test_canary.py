"""Canary's decoder (engine/models/fastconformer/decoder.py, canary.py) against transformers'
``CanaryForConditionalGeneration.generate`` on real FLEURS clips (issue 47 item 3).

Model: random weights at Canary-1B-v2's decoder widths (1024 wide, 8 heads of 128, feed-forward 4096, 16384 tokens,
1024 positions) cut to 2 decoder layers, on a FastConformer encoder of the real width (1024, 8 heads, 4096) with 2
blocks; the tokenizer and the weights' biasing are tests/models/fastconformer/canary_folder.py's (tokens vary, some
decodes end at eos, others run to the limit: asserted). Prompts: ``CanaryProcessor.apply_transcription_request``'s
``decoder_input_ids`` for transcription (``fr``->``fr``, ...) and translation to English (``fr``->``en``, ...),
equal to ours (``LoadedCanary.prompt``).

What is compared, float32, greedy, ``max_new_tokens`` = 24:

- ASR and translation: ``generate(input_features, attention_mask, decoder_input_ids)`` (transformers' encoder, its
  decoder) against our decoder fed transformers' encoder output (``last_hidden_state``, its mask);
- early exit: ``generate`` with ``encoder_outputs`` whose ``last_hidden_state`` is ``hidden_states[k]`` (Canary has no
  projection between encoder and decoder: ``CanaryModel`` passes the encoder's states as they are) against ours fed
  the same layer, k = 0, 1, 2;
- beam search (``generate(num_beams=3)``) at layers 0 and 2;
- a ragged batch of every clip's states (padding frames masked) against each clip alone.

Ours reads every memory padded to ``FRAMES`` frames (the clips give 105 to 140; padding 50.0, masked by the valid
counts) and teacher-forces token sequences padded to one length: one shape for every clip, layer and sequence, so that
greedy, beam and the logits compile once each (each clip's frames and each sequence's length compiled programs of their
own before), and every comparison also shows that the padding is not read.

Bound: tokens equal exactly, and the lengths (eos where transformers stops). The logits are float32 sums in another
order (our prompt goes through the KV cache one position at a time, transformers' in one call), so an exact token is
only meaningful away from ties: at every generated position, eos's included, transformers' top-2 gap (teacher-forced
on its own tokens) must be at least ``GAP`` times that position's largest |ours - theirs| (2x already guarantees the
same argmax). Measured: logit differences up to 7.6e-6, the smallest gap 46 times its position's difference
(printed); decode lengths at layers 0..2 of the two clips: 4, 24, 24, 4, 24, 24 (24: the limit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

from engine.data.audio import load_audio
from engine.models.fastconformer.canary import load_canary
from tests.models.fastconformer import canary_folder as cf

ENCODER = dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=8, intermediate_size=4096)
DECODER = dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
               intermediate_size=4096, head_dim=128)  # fmt: skip
VOCAB, PIECES = 16384, 256
CLIPS = {"fr": "fleurs-fr-000", "de": "fleurs-de-001", "pt": "fleurs-pt-002"}
MAX_NEW = 24
GAP = 10
BEAMS, BEAM_NEW, SCORE_TOL = 3, 12, 1e-5
FRAMES = 160  # our memories' padded length: above the longest clip's 140 frames


def _padded(memory: np.ndarray, fill: float = 50.0) -> np.ndarray:
    """f32[batch, FRAMES, width]: ``memory`` f[batch, frame, width] and ``fill`` after it."""
    out = np.full((memory.shape[0], FRAMES, memory.shape[2]), fill, np.float32)
    out[:, : memory.shape[1]] = memory
    return out


@pytest.fixture(scope="module")
def canary(fleurs_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("canary") / "model"
    folder.mkdir()
    tokenizer = cf.write_tokenizer(folder, fleurs_dir, PIECES)
    model = cf.canary(ENCODER, DECODER, VOCAB)
    model.save_pretrained(folder)
    audio = {lang: load_audio(fleurs_dir / f"{stem}.ogg") for lang, stem in CLIPS.items()}
    return model, cf.processor(tokenizer), load_canary(folder), audio


def _encode(model, inputs):
    with torch.no_grad():
        return model.model.encoder(
            inputs["input_features"], attention_mask=inputs["attention_mask"], output_hidden_states=True
        )


def _check(model, ours, prompt, memory, mask, reference, stats) -> np.ndarray:
    """Our greedy tokens on ``memory`` (torch f[1, frame, width], ``mask`` its valid frames) equal ``reference``
    (generate's output: prompt + tokens [+ eos]), with the module docstring's margin. Returns our tokens."""
    p, valid = len(prompt), [int(mask.sum())]
    padded = _padded(memory.numpy())
    ids, n = ours.greedy(padded, valid, prompt, MAX_NEW)
    theirs = reference[0, p:].tolist()
    stopped = cf.EOS in theirs
    want = theirs[: theirs.index(cf.EOS)] if stopped else theirs
    assert reference[0, :p].tolist() == list(prompt)
    assert ids[0, : n[0]].tolist() == want, (ids[0, : n[0]].tolist(), want)
    assert stopped == (n[0] < MAX_NEW)
    seq = reference[:, : p + len(want) + stopped]  # teacher-forced on transformers' tokens, its eos included
    with torch.no_grad():
        out = ParakeetEncoderModelOutput(last_hidden_state=memory, attention_mask=mask)
        logits = model(encoder_outputs=out, decoder_input_ids=seq).logits[0, p - 1 : -1].numpy()
    # Ours on the sequence padded to the longest a decode gives (eos after it): the decoder is causal, so a position's
    # logits read only the tokens before it.
    tokens = np.full((1, p + MAX_NEW + 1), cf.EOS, np.int64)
    tokens[:, : seq.shape[1]] = seq.numpy()
    mine = ours.logits(tokens, padded, valid)[0, p - 1 : seq.shape[1] - 1]
    top2 = np.sort(logits, -1)[:, -2:]
    err = np.abs(mine - logits).max(-1)
    margin = (top2[:, 1] - top2[:, 0]) / err
    assert np.array_equal(mine.argmax(-1), logits.argmax(-1)) and margin.min() >= GAP, margin.min()
    stats["margin"] = min(stats.get("margin", np.inf), float(margin.min()))
    stats["err"] = max(stats.get("err", 0.0), float(err.max()))
    stats.setdefault("tokens", set()).update(want)
    stats.setdefault("lengths", []).append(int(n[0]))
    return ids[0, : n[0]]


def test_prompts_are_canary_processors(canary):
    _, proc, ours, audio = canary
    for src, tgt, pnc in [("fr", "fr", True), ("fr", "en", True), ("de", "en", False), ("en", "de", True)]:
        x = proc.apply_transcription_request(audio["fr"], source_language=src, target_language=tgt, punctuation=pnc)
        assert x["decoder_input_ids"][0].tolist() == ours.prompt(src, tgt, pnc), (src, tgt, pnc)
    with pytest.raises(Exception, match=r"has no <\|ja\|> token"):
        ours.prompt("ja", "en")


def test_asr_and_translation_equal_generate(canary):
    """Full model: transformers' features, encoder and ``generate`` against our decoder on its encoder's output."""
    model, proc, ours, audio = canary
    stats = {}
    for lang, wave in audio.items():
        for target in (lang, "en"):
            x = proc.apply_transcription_request(wave, source_language=lang, target_language=target)
            with torch.no_grad():
                reference = model.generate(**x, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)
            encoded = _encode(model, x)
            _check(model, ours, ours.prompt(lang, target), encoded.last_hidden_state, encoded.attention_mask,
                   reference, stats)  # fmt: skip
    print(f"largest logit difference {stats['err']:.1e}; smallest top-2 gap / difference {stats['margin']:.0f}")
    assert len(stats["tokens"]) > 20, stats["tokens"]  # non-trivial outputs: many distinct tokens


def test_early_exit_equals_generate_on_hidden_states(canary):
    """Layer k fed to both decoders (k = 0: the subsampling output; 2: the last block, what Canary decodes from)."""
    model, proc, ours, audio = canary
    stats, seen = {}, []
    for lang in ("fr", "de"):
        x = proc.apply_transcription_request(audio[lang], source_language=lang, target_language="en")
        encoded = _encode(model, x)
        for states in encoded.hidden_states:
            out = ParakeetEncoderModelOutput(last_hidden_state=states, attention_mask=encoded.attention_mask)
            with torch.no_grad():
                reference = model.generate(encoder_outputs=out, decoder_input_ids=x["decoder_input_ids"],
                                           max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)  # fmt: skip
            seen.append(tuple(_check(model, ours, ours.prompt(lang, "en"), states, encoded.attention_mask,
                                     reference, stats)))  # fmt: skip
    assert len(set(seen)) == len(seen), "every layer and clip decodes differently"
    # some decodes end at eos (after a token or more), others run to the limit
    assert max(stats["lengths"]) == MAX_NEW and any(0 < n < MAX_NEW for n in stats["lengths"]), stats["lengths"]
    print(f"lengths {stats['lengths']}; largest logit difference {stats['err']:.1e}; smallest top-2 gap / "
          f"difference {stats['margin']:.0f}")  # fmt: skip


def test_beam_search_equals_generate(canary):
    """``generate(num_beams=3)`` (transformers' beam search: length penalty 1, early_stopping False) against
    ``LoadedCanary.beam`` on layer 0 (its best beam ends at eos) and layer 2 (runs to the limit) of a clip: tokens
    equal, and the best beam's length-normalised score (``sequences_scores``) within ``SCORE_TOL``; the gap from the
    best to the second finished beam must be at least ``GAP`` times the score difference, so that the ranking is no
    near-tie. Measured: scores within 4.8e-7, gaps 4.3e-3 and 1.7e-2 (printed); 3 and 12 tokens."""
    model, proc, ours, audio = canary
    x = proc.apply_transcription_request(audio["fr"], source_language="fr", target_language="en")
    encoded, p, lengths = _encode(model, x), x["decoder_input_ids"].shape[1], []
    for layer in (0, 2):
        states = encoded.hidden_states[layer]
        out = ParakeetEncoderModelOutput(last_hidden_state=states, attention_mask=encoded.attention_mask)
        with torch.no_grad():
            ref = model.generate(encoder_outputs=out, decoder_input_ids=x["decoder_input_ids"], num_beams=BEAMS,
                                 max_new_tokens=BEAM_NEW, output_scores=True, return_dict_in_generate=True)  # fmt: skip
        ids, n, scores = ours.beam(_padded(states.numpy()), [states.shape[1]], ours.prompt("fr", "en"), BEAMS, BEAM_NEW)
        theirs = ref.sequences[0, p:].tolist()
        want = theirs[: theirs.index(cf.EOS)] if cf.EOS in theirs else theirs
        assert ids[0, : n[0]].tolist() == want, (layer, ids[0, : n[0]].tolist(), want)
        err = abs(float(scores[0, 0]) - float(ref.sequences_scores[0]))
        assert err <= SCORE_TOL and scores[0, 0] - scores[0, 1] >= GAP * max(err, 1e-7), (layer, err, scores[0])
        lengths.append(int(n[0]))
        print(f"layer {layer}: score difference {err:.1e}, gap {scores[0, 0] - scores[0, 1]:.1e}, {n[0]} tokens")
    assert lengths[0] < BEAM_NEW == lengths[1], lengths  # one ended at eos, one at the limit


def test_ragged_batch_equals_each_alone(canary):
    model, proc, ours, audio = canary
    memories = []
    for lang, wave in audio.items():
        encoded = _encode(model, proc.apply_transcription_request(wave, source_language=lang))
        memories.append(encoded.hidden_states[1][0].numpy())
    batch = np.concatenate([_padded(m[None]) for m in memories])  # padding must not matter
    valid = [len(m) for m in memories]
    prompts = np.stack([ours.prompt(lang, lang) for lang in audio])
    ids, n = ours.greedy(batch, valid, prompts, MAX_NEW)
    for i, m in enumerate(memories):
        alone, k = ours.greedy(_padded(m[None], fill=-7.0), [len(m)], prompts[i], MAX_NEW)  # other padding
        assert ids[i, : n[i]].tolist() == alone[0, : k[0]].tolist() and n[i] == k[0]
