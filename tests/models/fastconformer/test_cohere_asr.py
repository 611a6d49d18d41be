"""Cohere ASR (``CohereLabs/cohere-transcribe-03-2026``) in the FastConformer family against transformers 5.24's
``CohereAsrForConditionalGeneration``: the encoder layer by layer, the decoder's greedy tokens and one training step
(issue 83).

Model: random weights at the real encoder widths (1280, 8 heads of 160, feed-forward 5120, subsampling 256 channels,
128 mel bins, no input scale) cut to 2 blocks, and the real decoder widths (1024, 8 heads of 128, feed-forward 4096,
1024 positions) cut to 2 layers, over the letters tokenizer of ``babelgrid random-model --kind cohere-asr`` (84
tokens, Cohere's control and 14 language tokens). transformers' own initialisation is skipped (slower than the
test's passes at these widths): every matrix is drawn from N(0, 1 / fan-in), every vector perturbed by N(0, 0.05^2),
the BatchNorm statistics drawn away from 0 and 1; the decoder's ``proj_out`` bias on ``<|endoftext|>`` is raised to
``EOS_BIAS`` so that some decodes end before the limit and others run to it (asserted). The folder is written by
``save_pretrained``, which stores the NeMo names (``model.encoder.pre_encode.conv.0.weight``,
``model.transf_decoder._decoder.layers.0.first_sub_layer.query_net.weight``, ``log_softmax.mlp.layer0.weight``): the
loaders' renaming is checked with everything else.

Clips: three FLEURS clips (de, en, fr) cut to 1.6, 1.1 and 0.7 s (20, 13 and 8 frames), one ragged batch on our side,
each clip alone on transformers'. Features: ``CohereAsrFeatureExtractor(dither=0.0)``'s (``test_features`` checks ours
against it); babelgrid adds no dither (the extractor's default adds 1e-5 Gaussian noise seeded by the clip's length).

Bounds, float32, our matmuls at "highest" precision:

- every layer (0: the subsampling output, a hook on ``subsampling``; 1..L: hooks on each block) at every valid frame
  within 1e-5 of that layer's peak, the bound of tests/models/fastconformer/test_fastconformer.py (the same
  arithmetic in another order: about 1e-6 of the peak after two blocks);
- greedy tokens equal ``generate(num_beams=1, do_sample=False)``'s exactly, at positions where transformers' top-2
  gap (teacher-forced on its own tokens) is at least ``GAP`` times our largest logit difference there, as for Canary;
- the train step's loss within 1e-5 relative, every decoder gradient within 1e-5 of its peak (the keys' biases, whose
  true gradient is 0, below 1e-6 of the largest gradient), as tests/models/fastconformer/test_canary_train.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.initialization import no_init_weights
from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

from engine.data.audio import load_audio
from engine.errors import CheckpointError
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.canary import load_canary
from engine.models.fastconformer.loaded import load_fastconformer
from engine.models.random_folder import write_random_folder
from engine.pipelines.finetune import step as S

pytestmark = pytest.mark.slow

ENCODER = dict(hidden_size=1280, num_hidden_layers=2, num_attention_heads=8, intermediate_size=5120,
               subsampling_conv_channels=256, num_mel_bins=128, scale_input=False)  # fmt: skip
DECODER = dict(hidden_size=1024, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
               intermediate_size=4096, max_position_embeddings=1024)  # fmt: skip
CLIPS = {"de": ("fleurs-de-001", 1.6), "en": ("fleurs-en-000", 1.1), "fr": ("fleurs-fr-003", 0.7)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
EOS, EOS_BIAS = 3, 1.5
RTOL_PEAK = 1e-5
MAX_NEW = 16
FRAMES = 24  # the teacher-forced memories' padded length (the clips give 20, 13 and 8 frames): one compile
GAP = 10
# The train step's model: smaller (the step's arithmetic does not depend on the widths; fewer ReLU inputs, so none near
# the kink, where float32 rounding could flip the mask and move a gradient by far more than the bound), a decoder
# narrower than the encoder (proj is not square) with grouped key/value heads.
TRAIN_ENCODER = dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512,
                     subsampling_conv_channels=8, num_mel_bins=128, scale_input=False)  # fmt: skip
TRAIN_DECODER = dict(hidden_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     intermediate_size=512, max_position_embeddings=64)  # fmt: skip
KINK = 1e-5  # the train step's ReLU inputs (those the loss reads) must be this far from 0: 100x their rounding
MEMORY_SEED = 3  # its random memory: the first seed whose ReLU inputs keep KINK (seeds 0-2 come within 9e-7-7e-6)
TEXTS = {"de": "der hund bellt laut", "en": "the dog barks at the cat in the garden", "fr": "le chien aboie"}


def _draw(model, seed: int):
    """The module docstring's weights (a vector named ``weight`` is a norm's scale here: drawn near one)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if name.endswith("weight") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.exp(torch.randn(b.shape, generator=gen) * 0.3))
    return model


def _saved(root, encoder: dict, decoder: dict):
    """(transformers' model of these sizes with the module docstring's weights, its save_pretrained folder beside the
    letters tokenizer)."""
    letters = root / "letters"
    if not letters.is_dir():
        write_random_folder("cohere-asr", letters)
    vocab = len(transformers.AutoTokenizer.from_pretrained(letters))
    config = transformers.CohereAsrConfig(encoder_config=encoder, vocab_size=vocab, **decoder)
    with no_init_weights():
        model = transformers.CohereAsrForConditionalGeneration(config)
    model = _draw(model, seed=0).eval()
    with torch.no_grad():
        model.proj_out.bias[EOS] = EOS_BIAS
    folder = root / f"model-{encoder['hidden_size']}"
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((letters / name).read_bytes())
    return model, folder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cohere-asr")


@pytest.fixture(scope="module")
def cohere(fleurs_dir, root):
    """(transformers' model at the real widths, the folder, its tokenizer's processor, the clips)."""
    model, folder = _saved(root, ENCODER, DECODER)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    proc = transformers.CohereAsrProcessor(transformers.CohereAsrFeatureExtractor(dither=0.0), tokenizer)
    audio = {lang: load_audio(fleurs_dir / f"{stem}.ogg")[: int(s * 16000)] for lang, (stem, s) in CLIPS.items()}
    return model, folder, proc, audio


def _theirs(model, proc, wave):
    """transformers' features, their valid frames, and every layer (hooks) of one clip alone: f32[frame, 1280] each."""
    x = proc.feature_extractor(wave, sampling_rate=16000, return_tensors="pt")
    encoder, got = model.model.encoder, []
    hooks = [encoder.subsampling.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))]
    hooks += [block.register_forward_hook(lambda m, a, o: got.append(o[0] if isinstance(o, tuple) else o))
              for block in encoder.layers]  # fmt: skip
    try:
        with torch.no_grad():
            out = encoder(x["input_features"], attention_mask=x["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
    layers = [g[0].numpy() for g in got]
    np.testing.assert_array_equal(layers[-1], out.last_hidden_state[0].numpy())
    return x["input_features"][0].numpy(), int(x["attention_mask"].sum()), layers, int(out.attention_mask.sum())


@pytest.fixture(scope="module")
def encoded(cohere):
    """Ours on the three clips' features (transformers') as one ragged batch, and transformers' on each alone."""
    model, folder, proc, audio = cohere
    theirs = [_theirs(model, proc, wave) for wave in audio.values()]
    loaded = load_fastconformer(folder)
    batch = np.zeros((len(theirs), max(len(f) for f, *_ in theirs), 128), np.float32)
    for i, (f, *_) in enumerate(theirs):
        batch[i, : len(f)] = f
    valid = np.array([v for _, v, *_ in theirs], np.int32)
    with jax.default_matmul_precision("highest"):
        states = np.asarray(loaded.encode(batch, valid))
    return loaded, states, theirs


def test_features(cohere):
    """Ours against ``CohereAsrFeatureExtractor(dither=0.0)``: test_fastconformer's bound for Parakeet's extractor
    (the same recipe: 1e-4 of the peak, median under 1e-5), the valid frames equal."""
    _, _, proc, audio = cohere
    for wave in audio.values():
        x = proc.feature_extractor(wave, sampling_rate=16000, return_tensors="np")
        ours, n = feats.log_mel(wave, 128)
        assert n == x["attention_mask"].sum() and ours.shape == x["input_features"][0].shape
        diff = np.abs(ours - x["input_features"][0])
        assert diff.max() <= 1e-4 * np.abs(x["input_features"]).max() and np.median(diff) < 1e-5


def test_encoder_every_layer_in_a_ragged_batch(encoded):
    loaded, states, theirs = encoded
    c = loaded.config
    assert (c.model_type, c.width, c.n_head, c.ffn_width, c.n_mels, c.scale_input) == ("cohere_asr", 1280, 8, 5120,
                                                                                         128, False)  # fmt: skip
    assert states.shape[:2] == (3, 3) and len({n for *_, n in theirs}) == 3  # three lengths, padded
    worst = 0.0
    for row, (_, valid, layers, frames) in enumerate(theirs):
        assert int(loaded.frames([valid])[0]) == frames
        for layer, ref in enumerate(layers):
            peak, err = np.abs(ref).max(), np.abs(states[layer, row, :frames] - ref[:frames]).max()
            assert err <= RTOL_PEAK * peak, f"clip {row}, layer {layer}: {err / peak:.2e} of the peak"
            worst = max(worst, err / peak)
    print(f"largest difference {worst:.1e} of a layer's peak")
    assert worst > 0


def test_prompt_is_the_processor_s(cohere):
    """``CohereAsrProcessor``'s prompt after the decoder start ``generate`` adds (no ``decoder_start_token_id`` in
    ``CohereAsrConfig``: the bos token, ``<|startoftranscript|>``)."""
    _, folder, proc, _ = cohere
    ours = load_canary(folder)
    for lang, pnc in (("de", True), ("ja", False), ("en", True)):
        bos = proc.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
        assert [bos, *proc.get_decoder_prompt_ids(lang, punctuation=pnc)] == ours.prompt(lang, lang, pnc)
    with pytest.raises(CheckpointError, match="only transcribes"):
        ours.prompt("de", "en")


def test_greedy_equals_generate(cohere, encoded):
    """Our decoder on our encoder's layer L (a ragged batch, one greedy call) against ``generate`` on each clip
    alone (transformers' encoder and decoder); and at layer 1, ``generate`` given ``hidden_states[1]`` (early exit
    through Cohere's ``proj``)."""
    model, folder, proc, audio = cohere
    _, states, theirs = encoded
    ours = load_canary(folder)
    prompts = np.stack([ours.prompt(lang, lang) for lang in audio])
    valid = np.array([n for *_, n in theirs], np.int32)
    lengths, distinct, margins, errs = [], set(), [], []
    for layer in (2, 1):
        with jax.default_matmul_precision("highest"):
            ids, n = ours.greedy(states[layer], valid, prompts, MAX_NEW)
        for row, (lang, wave) in enumerate(audio.items()):
            x = proc(wave, language=lang, sampling_rate=16000)
            assert x["decoder_input_ids"][0].tolist() == prompts[row, 1:].tolist()
            memory = torch.from_numpy(theirs[row][2][layer][None])
            mask = torch.arange(memory.shape[1])[None] < int(valid[row])  # the encoder's own mask
            out = ParakeetEncoderModelOutput(last_hidden_state=memory, attention_mask=mask)
            with torch.no_grad():
                if layer == 2:  # the whole model from its features
                    ref = model.generate(input_features=x["input_features"], attention_mask=x["attention_mask"],
                                         decoder_input_ids=x["decoder_input_ids"], max_new_tokens=MAX_NEW,
                                         do_sample=False, num_beams=1)  # fmt: skip
                else:
                    ref = model.generate(encoder_outputs=out, decoder_input_ids=x["decoder_input_ids"],
                                         max_new_tokens=MAX_NEW, do_sample=False, num_beams=1)  # fmt: skip
            p, seq = prompts.shape[1], ref[0].tolist()
            assert seq[:p] == prompts[row].tolist()  # generate's decoder start and the processor's prompt
            want = seq[p:][: seq[p:].index(EOS)] if EOS in seq[p:] else seq[p:]
            assert ids[row, : n[row]].tolist() == want, (layer, lang, ids[row, : n[row]].tolist(), want)
            stopped = len(seq) - p > len(want)
            # no near-tie: transformers' logits on its own tokens against ours, position by position
            forced = torch.tensor([seq[: p + len(want) + stopped]])
            with torch.no_grad():
                logits = model(encoder_outputs=out, decoder_input_ids=forced).logits[0, p - 1 : -1].numpy()
            tokens = np.full((1, p + MAX_NEW + 1), EOS, np.int64)  # padded: the decoder is causal
            tokens[:, : forced.shape[1]] = forced.numpy()
            padded = np.full((1, FRAMES, memory.shape[2]), 50.0, np.float32)  # masked: must not be read
            padded[:, : valid[row]] = memory[:, : valid[row]].numpy()
            with jax.default_matmul_precision("highest"):
                mine = ours.logits(tokens, padded, valid[row : row + 1])[0, p - 1 : forced.shape[1] - 1]
            top2, err = np.sort(logits, -1)[:, -2:], np.abs(mine - logits).max(-1)
            margins.append(float(((top2[:, 1] - top2[:, 0]) / err).min()))
            errs.append(float(err.max()))
            lengths.append(int(n[row]))
            distinct.update(want)
    print(f"lengths {lengths}; largest logit difference {max(errs):.1e}; smallest top-2 gap / difference "
          f"{min(margins):.0f}")  # fmt: skip
    assert min(margins) >= GAP
    assert max(lengths) == MAX_NEW and any(n < MAX_NEW for n in lengths), lengths  # some end at eos, some run on
    assert len(distinct) > 5, distinct


def _batch(trainer, seed=0):
    prompts = [trainer.prompt("transcribe", lang) for lang in TEXTS]
    texts = [trainer.tokens(t) for t in TEXTS.values()]
    length = len(prompts[0]) + max(map(len, texts))
    rows = [S.make_batch(q, [t], trainer.eot, length) for q, t in zip(prompts, texts, strict=True)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    frames, width = 40, trainer.loaded.encoder_config.width
    batch["valid"] = np.array([frames, frames - 7, frames - 23], np.int32)
    states = np.random.default_rng(seed).standard_normal((len(texts), frames, width)).astype(np.float32)
    batch["xa"] = trainer.memory(states, batch["valid"])
    return batch


@pytest.fixture(scope="module")
def small(root):
    """(transformers' model of the train step's sizes, its folder)."""
    return _saved(root, TRAIN_ENCODER, TRAIN_DECODER)


def test_train_step_equals_transformers(small):
    """The finetune loss and every gradient of the decoder (its ``proj``, position table and untied ``proj_out``
    included) against torch autograd through ``CohereAsrForConditionalGeneration`` given the encoder output."""
    from engine.models.fastconformer.trainer import hf_tensors, load_trainer

    model, folder = small
    trainer = load_trainer(folder)
    with pytest.raises(CheckpointError, match="only transcribes"):
        trainer.prompt("translate", "de")
    batch = _batch(trainer, MEMORY_SEED)
    graph, params = trainer.split()
    with jax.default_matmul_precision("highest"):
        loss, grads = jax.jit(
            jax.value_and_grad(
                lambda p: S.loss_fn(p, {}, batch, graph=graph, compute_dtype=jnp.float32, label_smoothing=0.0)[0]
            )
        )(params)
    model.zero_grad()
    frames = batch["xa"].shape[1]
    mask = torch.from_numpy(np.arange(frames)[None] < batch["valid"][:, None])
    out = ParakeetEncoderModelOutput(last_hidden_state=torch.from_numpy(batch["xa"]), attention_mask=mask)
    relu_inputs = []
    last = np.array([np.flatnonzero(w).max() for w in batch["weights"]])  # each row's last position the loss reads
    read = torch.from_numpy(np.arange(batch["tokens"].shape[1])[None] <= last[:, None])
    hooks = [layer.mlp.fc1.register_forward_hook(lambda m, a, o: relu_inputs.append(o.detach().abs()[read].min()))
             for layer in model.model.decoder.layers]  # fmt: skip
    logits = model(encoder_outputs=out, decoder_input_ids=torch.from_numpy(batch["tokens"]).long()).logits
    for h in hooks:
        h.remove()
    assert min(relu_inputs) >= KINK, f"a ReLU input of {min(relu_inputs):.1e}: rounding may flip its mask"
    labels = torch.from_numpy(np.where(batch["weights"] > 0, batch["labels"], -100)).long()
    theirs = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    theirs.backward()
    assert abs(float(loss) - theirs.item()) <= 1e-5 * abs(theirs.item())
    ours = hf_tensors(grads)
    expected = {k: v.grad.numpy() for k, v in model.named_parameters() if k.startswith(("model.decoder.", "proj_out."))}
    assert set(ours) == set(expected)
    assert {"model.decoder.proj.weight", "model.decoder.pos_emb.weight", "proj_out.weight"} <= set(ours)
    peak = max(np.abs(g).max() for g in expected.values())
    for name, g in expected.items():
        if name.endswith(".k_proj.bias"):  # the softmax ignores a shift shared by every key: true gradient 0
            assert max(np.abs(g).max(), np.abs(ours[name]).max()) <= 1e-6 * peak, name
            continue
        err, top = np.abs(ours[name] - g).max(), np.abs(g).max()
        assert top > 0 and err <= 1e-5 * top, f"gradient of {name}: {err:.3g} > 1e-5 x {top:.3g}"


def test_export_round_trip(small, tmp_path):
    """finetune's export rewrites the tuned tensors under the names the folder holds them by (save_pretrained's NeMo
    names): our loader reads the tuned values back, and transformers loads the folder with them."""
    from engine.models.fastconformer.trainer import load_trainer

    _, folder = small
    trainer = load_trainer(folder)
    _, params = trainer.split()
    moved = {k: v + 0.01 for k, v in params.items() if k in ("positions", "memory_proj.kernel", "out_weight")}
    assert len(moved) == 3 and trainer.export_problem() is None
    trainer.tuned(moved).export(tmp_path / "model")
    _, back = load_trainer(tmp_path / "model").split()
    for k, v in back.items():
        assert np.array_equal(np.asarray(v), np.asarray(moved.get(k, params[k]))), k
    hf = transformers.CohereAsrForConditionalGeneration.from_pretrained(tmp_path / "model")
    assert np.array_equal(hf.model.decoder.pos_emb.weight.detach().numpy(), np.asarray(moved["positions"]))
    assert np.array_equal(hf.model.decoder.proj.weight.detach().numpy(), np.asarray(moved["memory_proj.kernel"]).T)
