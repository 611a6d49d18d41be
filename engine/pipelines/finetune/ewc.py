"""Elastic weight consolidation (Kirkpatrick et al. 2017) for the decoder: a diagonal Fisher of the original model
on its own task, X -> English translation, from stored states.

``F = mean over examples of (d loss / d theta)^2``, each example's gradient taken alone (batch of one: the Fisher
is a mean of per-example squares, not the square of a batch mean), with the English reference as the label (the
empirical Fisher). The penalty ``ewc_lambda * sum F (theta - theta0)^2 / 2`` (``engine.pipelines.finetune.step``)
pulls the
trainable parameters towards the original ``theta0``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from engine.pipelines.finetune import step as S


@functools.partial(jax.jit, static_argnames=("graph",))
def _grad(trainable, frozen, batch, graph):
    fn = functools.partial(S.loss_fn, graph=graph, compute_dtype=jnp.float32, label_smoothing=0.0)
    return jax.grad(lambda p: fn(p, frozen, batch)[0])(trainable)


def fisher_from_pairs(trainer, graph, trainable, frozen, pairs, en_texts, held_out, n_examples) -> dict:
    """``{"fisher": {name: f32[...]}, "anchor": trainable}`` over up to ``n_examples`` training recordings of each
    source language (``pairs``) that have an English text; held-out ids are left out. ``trainer``: the model's
    ``Trainer``, ``graph`` its ``split()`` graph; the prompt is the source language's with task translate."""
    fisher = {k: jnp.zeros_like(v, jnp.float32) for k, v in trainable.items()}
    count = 0
    for p in pairs:
        prompt = trainer.prompt("translate", trainer.language(p.lang))
        picked = [i for i, u in enumerate(p.ids) if u in en_texts and u not in held_out][:n_examples]
        for i in picked:
            text = trainer.tokens(en_texts[p.ids[i]])[: trainer.n_text_ctx - len(prompt) - 1]
            batch = S.make_batch(prompt, [text], trainer.eot, len(prompt) + len(text))
            batch["xa"], batch["valid"] = p.xa[i : i + 1], p.valid[i : i + 1]
            g = _grad(trainable, frozen, batch, graph)
            fisher = jax.tree.map(lambda f, x: f + jnp.square(x.astype(jnp.float32)), fisher, g)
            count += 1
    if not count:
        raise ValueError("EWC needs source recordings with an English text in the store; none were found")
    return {"fisher": jax.tree.map(lambda f: f / count, fisher), "anchor": {k: jnp.array(v) for k, v in
                                                                              trainable.items()}}  # fmt: skip


def n_fisher(fisher: dict) -> int:
    return int(sum(np.size(v) for v in fisher.values()))
