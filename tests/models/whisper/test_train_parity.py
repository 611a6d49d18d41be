"""The decoder train step against transformers + torch.optim.AdamW on a tiny random model (fp32), and its guarantees:
frozen parameters stay bitwise, and 8 pairs can be overfitted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.models.common.trainable import merge_params, split_params
from engine.models.whisper.checkpoints.export import hf_state_dict, openai_state_dict
from engine.models.whisper.trainer import WhisperTrainer, with_decoder
from engine.pipelines.finetune import step as S
from engine.pipelines.finetune.config import OptimConfig

TEXTS = [[400, 1200, 77, 3000, 12], [5000, 6, 7, 8, 9, 10, 11, 12, 13], [42, 43]]


def _batch(whisper, texts, seed=0, frames=1500):
    tok = whisper.tokenizer
    prompt = tok.sot_sequence("de", "transcribe")
    batch = S.make_batch(prompt, texts, tok.eot, len(prompt) + max(map(len, texts)))
    rng = np.random.default_rng(seed)
    batch["xa"] = rng.standard_normal((len(texts), frames, whisper.dims.n_audio_state)).astype(np.float32)
    return batch


def _train(whisper, groups, config, batch, steps=1):
    trainer = WhisperTrainer(whisper)
    graph, params = trainer.split()
    trainable, frozen = S.partition(params, S.trainable_names(params, groups, trainer.groups))
    state = S.init_state(trainable, config)
    fn = S.jit_train_step(graph, config, jnp.float32)
    losses = []
    for _ in range(steps):
        state, m = fn(state, frozen, {k: jnp.asarray(v) for k, v in batch.items()}, None)
        losses.append(float(m["loss"]))
    return params, state, losses


def test_one_step_equals_pytorch(tiny_whisper, tiny_model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = OptimConfig(learning_rate=1e-3, total_steps=10, decay="constant", weight_decay=0.01, clip_norm=1.0)
    batch = _batch(tiny_whisper, TEXTS)
    _, state, (loss,) = _train(tiny_whisper, ["decoder"], config, batch)

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    hf.train()
    dec = hf.model.decoder
    opt = torch.optim.AdamW(dec.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    labels = np.where(batch["weights"] > 0, batch["labels"], -100)
    out = hf(
        encoder_outputs=(torch.from_numpy(batch["xa"]),),
        decoder_input_ids=torch.from_numpy(batch["tokens"]).long(),
        labels=torch.from_numpy(labels).long(),
    )
    out.loss.backward()
    grads = {f"model.decoder.{k}": v.grad.numpy().copy() for k, v in dec.named_parameters()}
    torch.nn.utils.clip_grad_norm_(dec.parameters(), 1.0)
    opt.step()
    assert abs(loss - out.loss.item()) < 1e-5

    ours = hf_state_dict(openai_state_dict(with_decoder(tiny_whisper.model, state["params"])))
    theirs = hf.state_dict()
    names = [k for k in ours if k.startswith("model.decoder.")]
    assert len(names) == len(list(dec.parameters()))
    graph, params = WhisperTrainer(tiny_whisper).split()
    ours_grad = jax.jit(jax.grad(lambda p: S.loss_fn(p, {}, batch, graph=graph, compute_dtype=jnp.float32,
                                                     label_smoothing=0.0)[0]))(params)  # fmt: skip
    ours_grad = hf_state_dict(openai_state_dict(with_decoder(tiny_whisper.model, ours_grad)))
    for name in names:
        g = grads[name]
        np.testing.assert_allclose(ours_grad[name], g, atol=1e-6, rtol=1e-4, err_msg=f"gradient of {name}")
        # Adam's first step is g / (|g| + eps): where |g| is within a few orders of eps = 1e-8, float rounding of
        # the gradient decides the step (up to lr either way), so those elements are left out and counted.
        ok = np.abs(g) > 1e-6
        # (about 10% of elements, nearly all in the rows of tokens absent from the batch: the tied output
        # projection gives them gradients of order softmax probability, 1/51865.) They still move by at most lr.
        theirs_np = theirs[name].detach().numpy()
        np.testing.assert_allclose(ours[name][ok], theirs_np[ok], atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_allclose(ours[name][~ok], theirs_np[~ok], atol=2.1e-3, rtol=0, err_msg=name)
    # the update is visible at this tolerance: Adam's first step moves every weight by about lr = 1e-3
    before = hf_state_dict(openai_state_dict(tiny_whisper.model))["model.decoder.layers.0.fc1.weight"]
    assert np.abs(ours["model.decoder.layers.0.fc1.weight"] - before).min() > 1e-4


def test_frozen_means_frozen(tiny_whisper):
    config = OptimConfig(learning_rate=1e-3, total_steps=10, decay="constant")
    params, state, _ = _train(tiny_whisper, ["cross_attention"], config, _batch(tiny_whisper, TEXTS), steps=2)
    assert set(state["params"]) == {k for k in params if ".cross_attn." in k or ".cross_attn_ln." in k}
    before = openai_state_dict(tiny_whisper.model)
    after = openai_state_dict(with_decoder(tiny_whisper.model, state["params"]))
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {k for k in before if ".cross_attn." in k or ".cross_attn_ln." in k}
    for k in before:
        if k.startswith("encoder."):
            assert before[k].tobytes() == after[k].tobytes(), k


def test_overfits_eight_pairs(tiny_whisper):
    rng = np.random.default_rng(1)
    texts = [list(rng.integers(300, 40000, size=int(n))) for n in rng.integers(3, 8, size=8)]
    config = OptimConfig(learning_rate=3e-3, total_steps=200, decay="constant", weight_decay=0.0)
    _, _, losses = _train(tiny_whisper, ["decoder"], config, _batch(tiny_whisper, texts, frames=300), steps=120)
    assert losses[-1] < 0.1, losses[::10]


def test_trainable_group_errors(tiny_whisper):
    trainer = WhisperTrainer(tiny_whisper)
    _, params = trainer.split()
    with pytest.raises(ValueError, match="cross_attention"):
        S.trainable_names(params, ["cross"], trainer.groups)
    assert jax.tree.leaves(params)


def test_ewc_fisher_equals_torch_per_example_squares(tiny_whisper, tiny_model_dir):
    """The diagonal Fisher is the mean over examples of each example's squared gradient (X -> en translate, the
    English text as label), checked against transformers + torch autograd one example at a time."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from engine.pipelines.finetune import ewc as E
    from engine.pipelines.finetune.data import Pairs

    rng = np.random.default_rng(7)
    ids = ("a", "b", "c", "d")
    en = {"a": "the dog barks", "b": "a cat sleeps on the mat", "c": "rain", "d": "not picked: held out"}
    pairs = [
        Pairs(lang, ids, rng.standard_normal((4, 1500, 64)).astype(np.float32), ("x",) * 4) for lang in ("de", "fr")
    ]
    trainer = WhisperTrainer(tiny_whisper)
    graph, params = trainer.split()
    trainable, frozen = S.partition(params, S.trainable_names(params, ["decoder"], trainer.groups))
    ewc = E.fisher_from_pairs(trainer, graph, trainable, frozen, pairs, en, held_out={"d"}, n_examples=2)
    assert E.n_fisher(ewc["fisher"]) == sum(v.size for v in trainable.values())
    for k, v in trainable.items():
        assert np.array_equal(np.asarray(ewc["anchor"][k]), np.asarray(v)), k

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    hf.eval()  # no dropout in Whisper's config; eval only makes it explicit
    dec = hf.model.decoder
    tok = tiny_whisper.tokenizer
    squares = {k: torch.zeros_like(v) for k, v in dec.named_parameters()}
    count = 0
    for p in pairs:
        prompt = tok.sot_sequence(p.lang, "translate")
        for i, uid in enumerate(p.ids[:2]):  # n_examples=2 per language; "d" (held out) is the 4th
            seq = [*prompt, *tok.encode(" " + en[uid]), tok.eot]
            labels = [-100] * (len(prompt) - 1) + seq[len(prompt) :]
            hf.zero_grad()
            out = hf(
                encoder_outputs=(torch.from_numpy(p.xa[i : i + 1]),),
                decoder_input_ids=torch.tensor([seq[:-1]]),
                labels=torch.tensor([labels]),
            )
            out.loss.backward()
            for k, v in dec.named_parameters():
                squares[k] += v.grad.detach() ** 2
            count += 1
    assert count == 4
    ours = hf_state_dict(openai_state_dict(with_decoder(tiny_whisper.model, ewc["fisher"])))
    for k, v in squares.items():
        ref = (v / count).numpy()
        got = ours[f"model.decoder.{k}"]
        # squares of gradients that agree to ~1e-6 (test_one_step_equals_pytorch), so tolerances relative to scale
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-5 * ref.max(), err_msg=k)
        assert ref.max() > 0, k


def test_ewc_penalty_holds_parameters_at_the_anchor(tiny_whisper):
    """A large EWC weight keeps the trained parameters near the anchor, while the same steps without EWC move them;
    the reported penalty is ``sum F (theta - theta0)^2 / 2``."""
    config = OptimConfig(learning_rate=1e-3, total_steps=30, decay="constant", weight_decay=0.0)
    batch = {k: jnp.asarray(v) for k, v in _batch(tiny_whisper, TEXTS, frames=300).items()}
    trainer = WhisperTrainer(tiny_whisper)
    graph, params = trainer.split()
    trainable, frozen = S.partition(params, S.trainable_names(params, ["cross_attention"], trainer.groups))
    rng = np.random.default_rng(3)
    fisher = {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32) for k, v in trainable.items()}
    ewc = {"fisher": fisher, "anchor": {k: jnp.array(v) for k, v in trainable.items()}}

    def run(ewc_lambda):
        fn = S.jit_train_step(graph, config, jnp.float32, ewc_lambda)
        state = S.init_state(trainable, config)
        for _ in range(30):
            state, m = fn(state, frozen, batch, ewc if ewc_lambda else None)
        return {k: np.asarray(v) for k, v in state["params"].items()}, fn

    free, _ = run(0.0)
    held, fn = run(1e4)

    def drift(p):
        return max(float(np.abs(p[k] - np.asarray(trainable[k])).max()) for k in p)

    # Adam moves each weight by about lr = 1e-3 a step: 30 steps in one direction without EWC; with it the pull
    # back to the anchor dominates after the first step, so weights stay within a few steps of it.
    assert drift(free) > 1e-2
    assert drift(held) < 3e-3
    # the penalty reported by the step (for the parameters before its update) against NumPy, from the step just run
    # (a second jit_train_step would be a new jit: the same program compiled again)
    state = S.init_state(trainable, config)
    state["params"] = {k: jnp.array(v) for k, v in free.items()}  # copies: the step donates its state
    _, m = fn(state, frozen, batch, ewc)
    ref = sum(0.5 * np.sum(np.asarray(fisher[k], np.float64) * (np.asarray(free[k], np.float64)
                                                               - np.asarray(trainable[k], np.float64)) ** 2)
              for k in free)  # fmt: skip
    np.testing.assert_allclose(float(m["ewc"]), ref, rtol=1e-4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_losses_and_gradient_equal_log_softmax(smoothing):
    """The written-out cross-entropy gradient against autodiff through the plain log-softmax formula."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((2, 5, 37)).astype(np.float32) * 4)
    labels = jnp.asarray(rng.integers(0, 37, size=(2, 5)).astype(np.int32))
    weights = jnp.asarray(rng.random((2, 5)).astype(np.float32))

    def reference(x):
        logp = jax.nn.log_softmax(x, axis=-1)
        nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        return (1 - smoothing) * nll - smoothing * logp.mean(-1)

    np.testing.assert_allclose(S.token_losses(logits, labels, smoothing), reference(logits), rtol=1e-6, atol=1e-6)
    ours = jax.grad(lambda x: (S.token_losses(x, labels, smoothing) * weights).sum())(logits)
    theirs = jax.grad(lambda x: (reference(x) * weights).sum())(logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


def test_folded_cross_attention_equals_projected(tiny_whisper):
    """The decoder given ``xa`` itself (keys and values folded into the products) against ``cross_kv(xa)``: logits
    and the loss's gradient, at a length where the train step would project (4 heads x 20 positions > 64)."""
    rng = np.random.default_rng(5)
    texts = [list(rng.integers(300, 40000, size=17)), [7, 8, 9]]
    batch = {k: jnp.asarray(v) for k, v in _batch(tiny_whisper, texts).items()}
    graphdef, params = split_params(tiny_whisper.model.decoder)

    def loss(p, folded):
        dec = merge_params(graphdef, p)
        kv = batch["xa"] if folded else dec.cross_kv(batch["xa"])
        logits = dec(batch["tokens"], kv)[0]
        return (S.token_losses(logits, batch["labels"], 0.0) * batch["weights"]).sum(), logits

    both = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (l1, z1), g1 = both(params, True)
    (l0, z0), g0 = both(params, False)
    np.testing.assert_allclose(z1, z0, atol=2e-5, rtol=1e-5)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], atol=1e-6, rtol=1e-4, err_msg=k)
