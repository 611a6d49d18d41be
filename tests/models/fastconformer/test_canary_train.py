"""One training step of Canary's decoder (``engine.models.fastconformer.trainer``) against transformers'
``CanaryForConditionalGeneration``: the loss and every decoder gradient, float32, on a random model made as
tests/models/fastconformer/canary_folder.py makes them (its tokenizer; 256 wide, 2 decoder layers of 4 heads sharing
2 key/value heads, the embedding tied to ``proj_out``) and random memory of a ragged batch (each row's frames past
its valid ones masked, given to transformers as the encoder output's ``attention_mask``).

The reference: the model's logits given ``encoder_outputs`` and ``decoder_input_ids`` (eval mode: no dropout), and
torch's ``cross_entropy`` with ``-100`` on the prompt's labels and the padding (Hugging Face's convention, ours);
autograd gives its gradients. The tied embedding's gradient is the sum of its two uses on both sides.

Bounds, float32: the loss within 1e-5 relative; each gradient tensor within ``1e-5 x`` its peak (max absolute error
over max absolute value), the keys' biases excepted: the softmax ignores a shift shared by every key, so their true
gradient is 0 and both sides hold rounding noise, checked to be below ``1e-6 x`` the largest gradient. A wrong mask,
position, norm or transpose is O(1e-2) of the peak or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.models.parakeet.modeling_parakeet import ParakeetEncoderModelOutput

from engine.pipelines.finetune import step as S
from tests.models.fastconformer import canary_folder as cf

ENCODER = dict(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512,
               subsampling_conv_channels=8)  # fmt: skip
DECODER = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=1024, head_dim=64)  # fmt: skip
PIECES = 256
REL = 1e-5
TEXTS = {"de": "der hund bellt laut", "fr": "le chien aboie", "en": "the dog barks at the cat in the garden"}


@pytest.fixture(scope="module")
def canary(fleurs_dir, tmp_path_factory):
    from engine.models.fastconformer.trainer import load_trainer

    folder = tmp_path_factory.mktemp("canary-train") / "model"
    folder.mkdir()
    cf.write_tokenizer(folder, fleurs_dir, PIECES)
    model = cf.canary(ENCODER, DECODER, PIECES)
    model.save_pretrained(folder)
    return dict(folder=folder, model=model.eval(), trainer=load_trainer(folder))


def _batch(trainer, task, seed=0):
    prompts = [trainer.prompt(task, lang) for lang in TEXTS]
    texts = [trainer.tokens(t) for t in TEXTS.values()]
    p = len(prompts[0])
    length = p + max(map(len, texts))
    rows = [S.make_batch(q, [t], trainer.eot, length) for q, t in zip(prompts, texts, strict=True)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    rng = np.random.default_rng(seed)
    frames, width = 40, trainer.loaded.config.width
    batch["valid"] = np.array([frames, frames - 7, frames - 23], np.int32)
    states = rng.standard_normal((len(texts), frames, width)).astype(np.float32)
    batch["xa"] = trainer.memory(states, batch["valid"])
    return batch


def _close(ours, theirs, what, rel=REL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    peak, err = np.abs(theirs).max(), np.abs(ours - theirs).max()
    assert peak > 0 and err <= rel * peak, f"{what}: max error {err:.3g} > {rel} x peak {peak:.3g}"


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_loss_and_gradients_equal_transformers(canary, task):
    from engine.models.fastconformer.trainer import hf_tensors

    trainer, model = canary["trainer"], canary["model"]
    batch = _batch(trainer, task)
    graph, params = trainer.split()
    loss, grads = jax.jit(
        jax.value_and_grad(
            lambda p: S.loss_fn(p, {}, batch, graph=graph, compute_dtype=jnp.float32, label_smoothing=0.0)[0]
        )
    )(params)

    model.zero_grad()
    frames = batch["xa"].shape[1]
    mask = torch.from_numpy(np.arange(frames)[None] < batch["valid"][:, None])
    out = ParakeetEncoderModelOutput(last_hidden_state=torch.from_numpy(batch["xa"]), attention_mask=mask)
    logits = model(encoder_outputs=out, decoder_input_ids=torch.from_numpy(batch["tokens"]).long()).logits
    labels = torch.from_numpy(np.where(batch["weights"] > 0, batch["labels"], -100)).long()
    theirs = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    theirs.backward()
    _close(float(loss), theirs.item(), "loss")

    ours = hf_tensors(grads)
    expected = {k: v.grad.numpy() for k, v in model.named_parameters() if k.startswith(("model.decoder.", "proj_out."))}
    assert set(ours) == set(expected)
    peak = max(np.abs(g).max() for g in expected.values())
    for name, g in expected.items():
        if name.endswith(".k_proj.bias"):
            # the softmax ignores a shift shared by every key: the true gradient is 0, both sides rounding noise
            assert max(np.abs(g).max(), np.abs(ours[name]).max()) <= 1e-6 * peak, name
            continue
        _close(ours[name], g, f"gradient of {name}")


def test_trainable_groups_cover_the_decoder(canary):
    trainer = canary["trainer"]
    _, params = trainer.split()
    every = set(S.trainable_names(params, ["decoder"], trainer.groups))
    parts = [set(S.trainable_names(params, [g], trainer.groups)) for g in trainer.groups if g != "decoder"]
    assert every == set(params)
    assert set().union(*parts) == every - {"out_bias", "out_weight"}
    assert sum(map(len, parts)) == len(set().union(*parts))  # the groups do not overlap


def test_export_round_trip(canary, tmp_path):
    import transformers

    from engine.models.fastconformer.trainer import load_trainer

    trainer = canary["trainer"]
    _, params = trainer.split()
    moved = {k: v + 0.01 for k, v in params.items() if ".cross_attn." in k or k == "embedding"}
    assert trainer.export_problem() is None
    trainer.tuned(moved).export(tmp_path / "model")
    again = load_trainer(tmp_path / "model")
    _, back = again.split()
    for k, v in back.items():
        assert np.array_equal(np.asarray(v), np.asarray(moved.get(k, params[k]))), k
    hf = transformers.CanaryForConditionalGeneration.from_pretrained(tmp_path / "model")
    emb = hf.model.decoder.embed_tokens.weight.detach().numpy()
    assert np.array_equal(emb, np.asarray(moved["embedding"]))
