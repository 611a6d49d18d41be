"""The sparse autoencoder kernel against dictionary-learning (saprmarks/dictionary_learning 0.1.0, PyTorch), the
TopK and BatchTopK trainers its authors use, and against the NumPy twins.

dictionary-learning is installed without its dependencies (``make setup-test``): its package ``__init__`` imports
nnsight (for collecting activations from language models, which this test does not use), so a placeholder module
stands in for it; the trainers themselves import only torch and einops.

Same weights and batches on both sides (their layout transposed: ``encoder.weight = W_enc.T``, ``decoder.weight =
W_dec.T``); a dead-feature threshold low enough that the auxiliary loss is active from the first steps.

Tolerances: one forward pass, float32 against float32 with the matrix products summed in another order, agrees to
1e-6 relative on the activations and 1e-5 on the loss; the gradients to 1e-5 of their largest entry. Over 300 steps
of Adam (the auxiliary loss active in most of them) float32 rounding accumulates and a top-k choice between near-tied
activations could flip: the loss curves must agree to 1e-4 relative at every step (measured 2026-11-26: 2.8e-6 topk,
8.9e-6 batchtopk at most) and the learned decoders to 1e-5 (measured 1.4e-6).
"""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import sae

torch = pytest.importorskip("torch")
if "nnsight" not in sys.modules:  # dictionary_learning/__init__ imports buffer.py, which imports nnsight
    sys.modules["nnsight"] = types.SimpleNamespace(LanguageModel=object)
from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer  # noqa: E402
from dictionary_learning.trainers.top_k import TopKTrainer  # noqa: E402

D, F, K, B = 16, 64, 4, 32
TRAINERS = {"topk": TopKTrainer, "batchtopk": BatchTopKTrainer}


def _data(steps: int, seed: int = 0) -> np.ndarray:
    """Activations with structure (a sparse code over a hidden dictionary) and an offset, f32[steps, B, D]."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((3 * F // 2, D))
    codes = rng.exponential(1.0, (steps * B, len(atoms))) * (rng.random((steps * B, len(atoms))) < 0.05)
    x = codes @ atoms + 0.1 * rng.standard_normal((steps * B, D)) + 2.0
    return x.reshape(steps, B, D).astype(np.float32)


def _reference(kind: str, params: dict, steps: int, lr: float, warmup: int, dead_tokens: int):
    torch.set_num_threads(1)
    trainer = TRAINERS[kind](steps=steps, activation_dim=D, dict_size=F, k=K, layer=0, lm_name="test", lr=lr,
                             warmup_steps=warmup, device="cpu", seed=0)  # fmt: skip
    state = {
        "encoder.weight": torch.tensor(np.asarray(params["W_enc"]).T.copy()),
        "encoder.bias": torch.tensor(np.asarray(params["b_enc"])),
        "decoder.weight": torch.tensor(np.asarray(params["W_dec"]).T.copy()),
        "b_dec": torch.tensor(np.asarray(params["b_dec"])),
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(-1.0),
    }
    trainer.ae.load_state_dict(state)
    trainer.dead_feature_threshold = dead_tokens
    return trainer


@pytest.mark.parametrize("kind", sae.KINDS)
def test_forward_loss_and_gradients_equal_dictionary_learning(kind):
    spec = sae.Spec(D, F, K, kind, dead_tokens=10**6)
    params = sae.init_params(spec, jax.random.key(0))
    params["b_enc"] = jnp.linspace(-0.2, 0.2, F)
    params["b_dec"] = jnp.asarray(sae.geometric_median(_data(1)[0]))
    x = _data(1, seed=1)[0]
    since = np.where(np.arange(F) % 3 == 0, 10**6, 0).astype(np.int32)  # dead, unless they fire in this batch
    trainer = _reference(kind, params, 10, 1e-3, 1, dead_tokens=10**6)
    trainer.num_tokens_since_fired[:] = torch.tensor(since)
    xt = torch.tensor(x)
    f = trainer.ae.encode(xt, use_threshold=False) if kind == "batchtopk" else trainer.ae.encode(xt)
    z = sae.encode(params, jnp.asarray(x), K, kind)
    np.testing.assert_allclose(np.asarray(z), f.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(z), sae.reference_encode(params, x, K, kind), rtol=1e-5, atol=1e-6)
    theirs = trainer.loss(xt, step=0)
    theirs.backward()
    theirs = float(theirs.detach())
    (loss, (_, aux, _, counted, dead_now)), grads = jax.value_and_grad(sae.loss_terms, has_aux=True)(
        params, jnp.asarray(x), jnp.asarray(since), spec
    )
    np.testing.assert_array_equal(np.asarray(counted), trainer.num_tokens_since_fired.numpy())
    assert 0 < int(dead_now.sum()) < F
    assert float(loss) == pytest.approx(theirs, rel=1e-5)
    assert float(aux) > 0
    assert float(loss) == pytest.approx(sae.reference_loss(params, x, np.asarray(dead_now), spec)[0], rel=1e-5)
    pairs = {"W_enc": trainer.ae.encoder.weight.grad.T, "b_enc": trainer.ae.encoder.bias.grad,
             "W_dec": trainer.ae.decoder.weight.grad.T, "b_dec": trainer.ae.b_dec.grad}  # fmt: skip
    for name, g in pairs.items():
        g = g.numpy()
        np.testing.assert_allclose(np.asarray(grads[name]), g, atol=1e-5 * np.abs(g).max(), err_msg=name)


@pytest.mark.parametrize("kind", sae.KINDS)
def test_three_hundred_steps_give_the_same_loss_curve(kind):
    steps, lr, warmup, dead_tokens = 300, 1e-3, 20, 2 * B  # dead: not fired in two batches
    batches = _data(steps, seed=2)
    spec = sae.Spec(D, F, K, kind, dead_tokens=dead_tokens)
    params = sae.init_params(spec, jax.random.key(1))
    trainer = _reference(kind, params, steps, lr, warmup, dead_tokens)
    tx = sae.optimizer(lr, warmup)
    # Step 0 sets b_dec to the geometric median of the first batch on both sides (theirs inside update).
    params["b_dec"] = jnp.asarray(sae.geometric_median(batches[0]))
    state = sae.new_state(params, tx, spec)
    ours, theirs, aux_steps = [], [], 0
    for step, x in enumerate(batches):
        theirs.append(trainer.update(step, torch.tensor(x)))
        state, metrics = sae.train_step(state, jnp.asarray(x), spec, tx)
        ours.append(float(metrics["loss"]))
        aux_steps += float(metrics["aux"]) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < 0.5 * ours[0]  # it learned
    assert aux_steps > steps // 2  # the auxiliary loss took part in most steps
    np.testing.assert_allclose(np.asarray(state.params["W_dec"]), trainer.ae.decoder.weight.detach().numpy().T,
                               atol=1e-5)  # fmt: skip


def test_threshold_inference_and_bad_specs():
    spec = sae.Spec(D, F, K, "batchtopk")
    params = sae.init_params(spec, jax.random.key(2))
    x = jnp.asarray(_data(1)[0])
    pre = sae.pre_activations(params, x)
    z = sae.encode(params, x, K, "batchtopk", threshold=0.5)
    np.testing.assert_array_equal(np.asarray(z), np.where(np.asarray(pre) > 0.5, np.asarray(pre), 0))
    assert int((sae.encode(params, x, K, "batchtopk") > 0).sum()) <= K * B
    with pytest.raises(ValueError, match="kind"):
        sae.Spec(D, F, K, "jumprelu")
    with pytest.raises(ValueError, match="k must be"):
        sae.Spec(D, F, F + 1)
