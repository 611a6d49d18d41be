"""The teacher-forced train step of a model's text decoder, as a module-level pure function, whatever the family.

The encoder never runs: ``xa f[batch, frame, embed]`` is the final encoder layer read from a store, its padding
frames filled as the family's ``Trainer.memory`` says, and ``valid i32[batch]`` its valid frames. The decoder's
parameters travel as two flat dicts (``Trainer.split``), ``trainable`` (differentiated, updated by the optimiser)
and ``frozen`` (closed over as constants), so that parameters outside ``--trainable`` cannot change: they get no
gradient, no optimiser state and no weight decay. The logits come from the family's ``TrainGraph``.

Batch (``make_batch``): ``tokens i32[batch, t]`` the decoder input ``prompt text...``, ``labels i32[batch, t]`` the
next token at each position, ``weights f32[batch, t]`` 1 where the label is a text token or end-of-text, 0 on the
prompt and on padding. The loss is the mean cross-entropy over weighted positions, Hugging Face's ``labels=-100``
convention (``tests/models/whisper/test_train_parity.py`` checks it and one AdamW step against
``WhisperForConditionalGeneration`` + ``torch.optim.AdamW``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine.pipelines.finetune.config import TRAINABLE, OptimConfig


def schedule(config: OptimConfig) -> optax.Schedule:
    lr, warm, total = config.learning_rate, config.warmup_steps, config.total_steps
    if config.decay == "constant":
        decay = optax.constant_schedule(lr)
    elif config.decay == "linear":
        decay = optax.linear_schedule(lr, 0.0, max(total - warm, 1))
    else:
        decay = optax.cosine_decay_schedule(lr, max(total - warm, 1))
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def optimizer(config: OptimConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule(config), config.b1, config.b2, config.eps, weight_decay=config.weight_decay)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
    return adamw


# -- parameters as flat dicts ----------------------------------------------------------------------------------------


def trainable_names(names: Iterable[str], groups: Sequence[str], patterns: Mapping[str, str]) -> tuple[str, ...]:
    """The parameter names that ``--trainable`` groups (``TRAINABLE``, a union) select, sorted; ``patterns``: the
    family's regular expression of each group (``Trainer.groups``)."""
    for g in groups:
        if g not in TRAINABLE or g not in patterns:
            raise ValueError(f"--trainable group {g!r} is unknown; choose from {', '.join(TRAINABLE)}")
    pattern = re.compile("|".join(f"(?:{patterns[g]})" for g in groups))
    picked = tuple(sorted(n for n in names if pattern.fullmatch(n)))
    if not picked:
        raise ValueError(f"--trainable {','.join(groups)} selects no decoder parameter")
    return picked


def partition(params: Mapping, names: Sequence[str]) -> tuple[dict, dict]:
    """``(trainable, frozen)``: ``params`` split by ``names``."""
    chosen = set(names)
    return {k: v for k, v in params.items() if k in chosen}, {k: v for k, v in params.items() if k not in chosen}


# -- batches ---------------------------------------------------------------------------------------------------------


def make_batch(prompt: Sequence[int], texts: Sequence[Sequence[int]], eot: int, length: int) -> dict[str, np.ndarray]:
    """Teacher-forcing arrays for token lists ``texts`` (without prompt or end-of-text), padded to ``length``.

    Returns ``tokens, labels: i32[batch, length]`` and ``weights: f32[batch, length]`` (module docstring).
    ``length`` must be at least ``len(prompt) + max(len(text))``: the input drops the final end-of-text.
    """
    n = len(prompt)
    tokens = np.full((len(texts), length), eot, np.int32)
    labels = np.full((len(texts), length), eot, np.int32)
    weights = np.zeros((len(texts), length), np.float32)
    for i, text in enumerate(texts):
        seq = [*prompt, *text, eot]
        if len(seq) - 1 > length:
            raise ValueError(f"text {i} needs {len(seq) - 1} positions, more than length={length}")
        tokens[i, : len(seq) - 1] = seq[:-1]
        labels[i, : len(seq) - 1] = seq[1:]
        weights[i, n - 1 : len(seq) - 1] = 1.0  # labels from the first text token to end-of-text
    return {"tokens": tokens, "labels": labels, "weights": weights}


# -- loss and step ---------------------------------------------------------------------------------------------------


def token_losses(logits, labels, label_smoothing: float):
    """logits f32[batch, t, vocab], labels i32[batch, t] -> f32[batch, t]; torch's CrossEntropyLoss smoothing."""
    return _token_losses(logits.astype(jnp.float32), labels, float(label_smoothing))


# The cross-entropy's gradient written out, ``softmax - (1 - s) onehot - s / vocab``: one elementwise pass over the
# logits. Differentiating the log-softmax and take_along_axis instead made XLA fill a zero f32[batch, t, vocab], scatter
# the labels into it and build the gradient twice, once per layout the two products of the tied projection read.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _token_losses(logits, labels, label_smoothing):
    return _token_losses_fwd(logits, labels, label_smoothing)[0]


def _token_losses_fwd(logits, labels, label_smoothing):
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * (logits.mean(-1) - lse)
    return nll, (logits, labels, lse)


def _token_losses_bwd(label_smoothing, res, g):
    logits, labels, lse = res
    hit = jnp.arange(logits.shape[-1], dtype=labels.dtype) == labels[..., None]
    d = jnp.exp(logits - lse[..., None]) - jnp.where(hit, 1 - label_smoothing, 0.0) - label_smoothing / logits.shape[-1]
    return g[..., None] * d, None


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd)


def loss_fn(trainable, frozen, batch, *, graph, compute_dtype, label_smoothing):
    """Mean cross-entropy over weighted positions (f32 scalar) and the weight total; ``graph``: the family's
    ``TrainGraph``, ``batch["valid"]`` (optional) the memory's valid frames."""
    params = {k: v.astype(compute_dtype) for k, v in {**frozen, **trainable}.items()}
    logits = graph.logits(params, batch["tokens"], batch["xa"].astype(compute_dtype), batch.get("valid"))
    w = batch["weights"]
    n = jnp.maximum(w.sum(), 1.0)
    return (token_losses(logits, batch["labels"], label_smoothing) * w).sum() / n, w.sum()


def ewc_penalty(trainable, ewc):
    """``sum F (theta - theta0)^2 / 2`` over trainable tensors; ``ewc = {"fisher": ..., "anchor": ...}``."""
    total = jnp.float32(0)
    for k, v in trainable.items():
        d = v.astype(jnp.float32) - ewc["anchor"][k].astype(jnp.float32)
        total = total + 0.5 * jnp.sum(ewc["fisher"][k] * d * d)
    return total


def train_step(state, frozen, batch, ewc, *, graph, tx, compute_dtype, label_smoothing, ewc_lambda):
    """One AdamW step: ``state = {"step", "params", "opt_state"}`` -> (new state, {"loss", "ewc", "tokens"}).

    ``ewc`` is None or ``{"fisher", "anchor"}`` over the trainable names; its penalty ``ewc_lambda * ewc_penalty``
    is added to the loss that is differentiated, while ``loss`` reports the cross-entropy alone.
    """

    def objective(trainable):
        ce, n = loss_fn(
            trainable, frozen, batch, graph=graph, compute_dtype=compute_dtype, label_smoothing=label_smoothing
        )
        pen = ewc_penalty(trainable, ewc) if ewc is not None else jnp.float32(0)
        return ce + ewc_lambda * pen, (ce, pen, n)

    grads, (ce, pen, n) = jax.grad(objective, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, {"loss": ce, "ewc": pen, "tokens": n}


def jit_train_step(graph, config: OptimConfig, compute_dtype, ewc_lambda: float = 0.0):
    """``train_step`` bound to its static parts and jitted; the caller shards ``batch`` over the mesh's data axis
    and replicates the rest (``jit`` partitions by the inputs' ``NamedSharding``). ``state`` is donated."""
    step = functools.partial(
        train_step,
        graph=graph,
        tx=optimizer(config),
        compute_dtype=compute_dtype,
        label_smoothing=config.label_smoothing,
        ewc_lambda=float(ewc_lambda),
    )
    return jax.jit(step, donate_argnums=(0,))


def init_state(trainable: Mapping[str, jax.Array], config: OptimConfig) -> dict:
    """The train state at step 0 (parameters in float32: the master copy whatever the compute dtype).

    The parameters are copies: the step donates its state, which must not delete the model's own arrays.
    """
    params = {k: jnp.array(v, jnp.float32, copy=True) for k, v in trainable.items()}
    return {"step": jnp.int32(0), "params": params, "opt_state": optimizer(config).init(params)}
