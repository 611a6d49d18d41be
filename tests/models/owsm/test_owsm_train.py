"""One training step of OWSM's decoder (``engine.models.owsm.trainer``) against ESPnet's own modules: the loss and
every decoder gradient, on the random model ESPnet builds (``owsm_reference``: base widths, 2 decoder blocks) and
random memory, in float32.

The reference: ESPnet's ``TransformerDecoder.forward`` (eval mode: no dropout) on the same tokens and memory (lengths
the full window), and ESPnet's ``LabelSmoothingLoss`` (smoothing 0, ``normalize_length``) with ``ignore_id`` on the
prompt's labels and the padding, our loss's convention (the mean cross-entropy of the text and ``<eos>`` labels).
Autograd gives ESPnet's gradients.

Bounds, float32: the loss within 1e-5 relative; each gradient tensor within ``1e-5 x`` its peak (max absolute error
over max absolute value), as the OWSM parity tests bound activations. The keys' biases are the exception: the softmax
ignores a shift shared by every key, so their true gradient is 0 and both sides hold rounding noise, checked to be
below ``1e-6 x`` the largest gradient. Both sides compute the same float32 operations
in other orders; a wrong mask, position, norm or transpose is O(1e-2) of the peak or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from engine.pipelines.finetune import step as S
from tests.models.owsm import owsm_reference as ref

REL = 1e-5
TEXTS = {"de": "der hund bellt laut", "fr": "le chien aboie", "en": "the dog barks at the cat in the garden"}


@pytest.fixture(scope="module")
def owsm(owsm_v31_dir):
    from engine.models.owsm.trainer import load_trainer

    root = owsm_v31_dir  # the session's (conftest.py)
    return dict(root=root, espnet=ref.speech2text(root, 8).s2t_model.eval(), trainer=load_trainer(root))


def _batch(trainer, task="transcribe", seed=0):
    prompts = [trainer.prompt(task, lang) for lang in TEXTS]
    texts = [trainer.tokens(t) for t in TEXTS.values()]
    assert all(len(p) == 4 for p in prompts) and all(texts)
    # one prompt per row: make_batch takes one, so the rows are built apart and stacked
    length = 4 + max(map(len, texts))
    rows = [S.make_batch(p, [t], trainer.eot, length) for p, t in zip(prompts, texts, strict=True)]
    batch = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    config = trainer.loaded.config
    rng = np.random.default_rng(seed)
    batch["xa"] = rng.standard_normal((len(texts), config.n_frames, config.width)).astype(np.float32)
    batch["valid"] = np.full(len(texts), config.n_frames, np.int32)
    return batch, [4 + len(t) for t in texts]


def _close(ours, theirs, what, rel=REL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    peak, err = np.abs(theirs).max(), np.abs(ours - theirs).max()
    assert peak > 0 and err <= rel * peak, f"{what}: max error {err:.3g} > {rel} x peak {peak:.3g}"


@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_loss_and_gradients_equal_espnet(owsm, task):
    from espnet2.legacy.nets.pytorch_backend.transformer.label_smoothing_loss import LabelSmoothingLoss

    from engine.models.owsm.trainer import espnet_tensors

    trainer, model = owsm["trainer"], owsm["espnet"]
    batch, lengths = _batch(trainer, task)
    graph, params = trainer.split()
    loss, grads = jax.jit(
        jax.value_and_grad(
            lambda p: S.loss_fn(p, {}, batch, graph=graph, compute_dtype=jnp.float32, label_smoothing=0.0)[0]
        )
    )(params)

    decoder = model.decoder
    decoder.zero_grad()
    n_frames = batch["xa"].shape[1]
    logits, _ = decoder(torch.from_numpy(batch["xa"]), torch.full((len(lengths),), n_frames),
                        torch.from_numpy(batch["tokens"]).long(), torch.tensor(lengths))  # fmt: skip
    labels = torch.from_numpy(np.where(batch["weights"] > 0, batch["labels"], -1)).long()
    theirs = LabelSmoothingLoss(logits.shape[-1], -1, 0.0, normalize_length=True)(logits, labels)
    theirs.backward()
    _close(float(loss), theirs.item(), "loss")

    ours = espnet_tensors(grads)
    expected = {f"decoder.{k}": v.grad.numpy() for k, v in decoder.named_parameters()}
    assert set(ours) == set(expected)
    peak = max(np.abs(g).max() for g in expected.values())
    for name, g in expected.items():
        if name.endswith(".linear_k.bias"):
            # the softmax ignores a shift shared by every key: the true gradient is 0, both sides rounding noise
            assert max(np.abs(g).max(), np.abs(ours[name]).max()) <= 1e-6 * peak, name
            continue
        _close(ours[name], g, f"gradient of {name}")


def test_trainable_groups_cover_the_decoder(owsm):
    trainer = owsm["trainer"]
    _, params = trainer.split()
    every = set(S.trainable_names(params, ["decoder"], trainer.groups))
    parts = [set(S.trainable_names(params, [g], trainer.groups)) for g in trainer.groups if g != "decoder"]
    assert every == set(params) and not any(n.startswith("ctc") for n in every)
    assert set().union(*parts) == every - {n for n in every if n.startswith("output_layer.")}
    assert sum(map(len, parts)) == len(set().union(*parts))  # the groups do not overlap


def test_export_round_trip(owsm, tmp_path):
    from engine.models.owsm.loaded import load_owsm
    from engine.models.owsm.trainer import load_trainer

    trainer = owsm["trainer"]
    _, params = trainer.split()
    moved = {k: v + 0.01 for k, v in params.items() if ".src_attn." in k}
    assert trainer.export_problem() is None
    trainer.tuned(moved).export(tmp_path / "model")
    again = load_trainer(load_owsm(tmp_path / "model"))
    _, back = again.split()
    for k, v in back.items():
        want = moved.get(k, params[k])
        assert np.array_equal(np.asarray(v), np.asarray(want)), k
    assert again.tokens("der hund") == trainer.tokens("der hund")
    memory = np.asarray(trainer.memory(np.zeros((1, 3, trainer.loaded.config.width), np.float32), np.array([3])))
    assert memory.shape == (1, trainer.memory_frames, trainer.loaded.config.width)
