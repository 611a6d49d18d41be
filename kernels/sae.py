"""Sparse autoencoders (TopK and BatchTopK, Gao et al. 2024 "Scaling and evaluating sparse autoencoders"; Bussmann
et al. 2024 "BatchTopK"), their loss with the auxiliary loss against dead features, and one training step.

Parameters are sae-lens's names and layouts: ``W_enc f32[d_in, d_sae]``, ``b_enc f32[d_sae]``, ``W_dec f32[d_sae,
d_in]`` (a feature's direction is a row, of unit norm), ``b_dec f32[d_in]``::

    pre = ReLU((x - b_dec) @ W_enc + b_enc)
    z   = TopK(pre)          topk: the k largest of each row; batchtopk: the k * B largest of the batch;
                             with a threshold (BatchTopK at inference): pre where pre > threshold
    x_hat = z @ W_dec + b_dec

The training objective is dictionary-learning's (saprmarks/dictionary_learning, its TopK and BatchTopK trainers, the
reference of tests/kernels/test_sae.py): ``sum_d (x - x_hat)^2`` averaged over the batch, plus ``auxk_alpha`` times
the auxiliary loss: the residual ``e`` reconstructed from the ``k_aux = min(d_in // 2, dead)`` largest pre-activations
of dead features alone (no ``b_dec``), its squared error over ``e``'s own variance (OpenAI's normalisation), 0 when
no feature is dead. A feature is dead when it has not fired for ``dead_tokens`` frames, this batch's included.
One step: the gradient, its component along each decoder row removed (the rows stay unit norm to first order), the
global norm clipped to 1 (as torch's ``clip_grad_norm_``: scaled by ``1 / (norm + 1e-6)`` when above), Adam, then
each decoder row renormalised.

``reference_*`` are the NumPy twins, float64.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

KINDS = ("topk", "batchtopk")
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
ROW_EPS = float(np.finfo(np.float32).eps)  # decoder rows renormalised by norm + eps (dictionary-learning's)
PARALLEL_EPS = 1e-6  # the gradient's parallel component: rows over norm + 1e-6 (dictionary-learning's)


@dataclasses.dataclass(frozen=True)
class Spec:
    d_in: int
    d_sae: int
    k: int
    kind: str = "batchtopk"
    auxk_alpha: float = 1 / 32
    dead_tokens: int = 10_000_000

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")

    @property
    def k_aux(self) -> int:
        return max(1, self.d_in // 2)


class State(NamedTuple):
    params: dict  # NAMES -> arrays
    opt: optax.OptState
    since_fired: jax.Array  # i32[d_sae]: frames since each feature last fired
    step: jax.Array  # i32[]


def init_params(spec: Spec, key: jax.Array) -> dict:
    """Decoder rows random and unit norm, the encoder their transpose, biases zero (b_dec: ``geometric_median`` of
    the first batch, set by the caller)."""
    w = jax.random.normal(key, (spec.d_sae, spec.d_in), jnp.float32)
    w = w / (jnp.linalg.norm(w, axis=1, keepdims=True) + ROW_EPS)
    return {"W_enc": w.T, "b_enc": jnp.zeros(spec.d_sae), "W_dec": w, "b_dec": jnp.zeros(spec.d_in)}


def pre_activations(params: dict, x: jax.Array) -> jax.Array:
    return jax.nn.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])


def select(pre: jax.Array, k: int, kind: str) -> jax.Array:
    """The kept activations (zeros elsewhere): per row (topk) or over the whole batch (batchtopk: XLA's top-k of the
    flattened batch; a two-stage choice, each row's largest first, measured 4.5x slower on a CPU for its scatter:
    2.09 s against 0.47 s at 4096 x 4096)."""
    if kind == "topk":
        values, index = jax.lax.top_k(pre, k)
        rows = jnp.arange(pre.shape[0])[:, None]
        return jnp.zeros_like(pre).at[rows, index].set(values)
    flat = pre.reshape(-1)
    values, index = jax.lax.top_k(flat, k * pre.shape[0])
    return jnp.zeros_like(flat).at[index].set(values).reshape(pre.shape)


def encode(params: dict, x: jax.Array, k: int, kind: str, threshold: float | None = None) -> jax.Array:
    """f32[B, d_sae] feature activations; with ``threshold``, every pre-activation above it (BatchTopK's inference)."""
    pre = pre_activations(params, x)
    if threshold is not None:
        return pre * (pre > threshold)
    return select(pre, k, kind)


def decode(params: dict, z: jax.Array) -> jax.Array:
    return z @ params["W_dec"] + params["b_dec"]


def _aux_loss(params: dict, residual: jax.Array, pre: jax.Array, dead: jax.Array, k_aux: int) -> jax.Array:
    """0 without dead features, without computing anything (its top-k is a fifth of a CPU step)."""
    n_dead = dead.sum()

    def aux(_):
        masked = jnp.where(dead[None], pre, -jnp.inf)
        values, index = jax.lax.top_k(masked, min(k_aux, pre.shape[1]))
        keep = jnp.arange(values.shape[1])[None] < jnp.minimum(n_dead, k_aux)  # the first min(k_aux, dead) only
        values = jnp.where(keep, values, 0.0)
        rows = jnp.arange(pre.shape[0])[:, None]
        latent = jnp.zeros_like(pre).at[rows, index].add(values)
        recon = latent @ params["W_dec"]
        error = jnp.sum((residual - recon) ** 2, axis=-1).mean()
        denominator = jnp.sum((residual - residual.mean(axis=0)) ** 2, axis=-1).mean()
        return jnp.nan_to_num(error / denominator)

    return jax.lax.cond(n_dead > 0, aux, lambda _: jnp.zeros((), pre.dtype), None)


def loss_terms(params: dict, x: jax.Array, since_fired: jax.Array, spec: Spec):
    """(loss, (l2, aux, z, since_fired, dead)): the objective of the module docstring, its parts, the activations,
    the frames since each feature fired counted with this batch, and the dead features the auxiliary loss used.

    As dictionary-learning counts it, this batch counts first: ``since_fired + B``, zero where a feature fired (topk:
    every selected index; batchtopk: a positive sum over the batch), and dead where that reaches ``dead_tokens``."""
    pre = pre_activations(params, x)
    z = select(pre, spec.k, spec.kind)
    if spec.kind == "topk":
        _, index = jax.lax.top_k(pre, spec.k)
        fired = jnp.zeros(pre.shape[1], bool).at[index.reshape(-1)].set(True)
    else:
        fired = z.sum(axis=0) > 0
    since = jnp.where(fired, 0, since_fired + x.shape[0])
    dead = since >= spec.dead_tokens
    residual = x - decode(params, z)
    l2 = jnp.sum(residual**2, axis=-1).mean()
    aux = _aux_loss(params, jax.lax.stop_gradient(residual), pre, dead, spec.k_aux)
    return l2 + spec.auxk_alpha * aux, (l2, aux, z, since, dead)


def optimizer(lr: float, warmup: int) -> optax.GradientTransformation:
    """Adam (0.9, 0.999, eps 1e-8) with the learning rate rising linearly from 0 over ``warmup`` steps."""
    schedule = optax.linear_schedule(0.0, lr, max(warmup, 1)) if warmup > 0 else lr
    return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)


def new_state(params: dict, tx: optax.GradientTransformation, spec: Spec) -> State:
    params = {name: jnp.asarray(params[name], jnp.float32) for name in NAMES}
    return State(params, tx.init(params), jnp.zeros(spec.d_sae, jnp.int32), jnp.zeros((), jnp.int32))


def _project(grads: dict, params: dict) -> dict:
    w = params["W_dec"]
    unit = w / (jnp.linalg.norm(w, axis=1, keepdims=True) + PARALLEL_EPS)
    g = grads["W_dec"]
    return {**grads, "W_dec": g - jnp.sum(g * unit, axis=1, keepdims=True) * unit}


def _clip(grads: dict, max_norm: float = 1.0) -> dict:
    norm = jnp.sqrt(sum(jnp.sum(g**2) for g in grads.values()))
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return {name: g * scale for name, g in grads.items()}


@functools.partial(jax.jit, static_argnames=("spec", "tx"))
def train_step(state: State, x: jax.Array, spec: Spec, tx: optax.GradientTransformation):
    """One step on batch ``x: f32[B, d_in]``. Returns (state, metrics: loss, l2, aux, l0, dead share), each before
    the update, as dictionary-learning's ``update`` returns its loss."""
    terms = jax.value_and_grad(loss_terms, has_aux=True)(state.params, x, state.since_fired, spec)
    (loss, (l2, aux, z, since, dead)), grads = terms
    grads = _clip(_project(grads, state.params))
    updates, opt = tx.update(grads, state.opt, state.params)
    params = optax.apply_updates(state.params, updates)
    w = params["W_dec"]
    params = {**params, "W_dec": w / (jnp.linalg.norm(w, axis=1, keepdims=True) + ROW_EPS)}
    l0 = (z > 0).sum(axis=1).mean()
    metrics = {"loss": loss, "l2": l2, "aux": aux, "l0": l0, "dead": dead.mean()}
    return State(params, opt, since, state.step + 1), metrics


def geometric_median(points, max_iter: int = 100, tol: float = 1e-5) -> np.ndarray:
    """Weiszfeld's iteration from the mean (dictionary-learning's ``geometric_median``): the initial ``b_dec``."""
    points = np.asarray(points, np.float32)
    guess = points.mean(axis=0)
    for _ in range(max_iter):
        prev = guess
        weights = 1 / np.linalg.norm(points - guess, axis=1)
        weights = weights / weights.sum()
        guess = (weights[:, None] * points).sum(axis=0)
        if np.linalg.norm(guess - prev) < tol:
            break
    return guess


# ----------------------------------------------------------------------------------------------------------------
# NumPy twins, float64.


def reference_encode(params: dict, x, k: int, kind: str) -> np.ndarray:
    p = {n: np.asarray(params[n], np.float64) for n in NAMES}
    pre = np.maximum((np.asarray(x, np.float64) - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0.0)
    out = np.zeros_like(pre)
    if kind == "topk":
        for row in range(len(pre)):
            top = np.argsort(-pre[row], kind="stable")[:k]
            out[row, top] = pre[row, top]
    else:
        top = np.argsort(-pre.ravel(), kind="stable")[: k * len(pre)]
        out.flat[top] = pre.ravel()[top]
    return out


def reference_loss(params: dict, x, dead, spec: Spec) -> tuple[float, float, float]:
    """(loss, l2, aux) as the module docstring, a loop over rows for the auxiliary top-k."""
    p = {n: np.asarray(params[n], np.float64) for n in NAMES}
    x = np.asarray(x, np.float64)
    z = reference_encode(params, x, spec.k, spec.kind)
    residual = x - (z @ p["W_dec"] + p["b_dec"])
    l2 = float(np.mean(np.sum(residual**2, axis=1)))
    dead = np.asarray(dead, bool)
    aux = 0.0
    if dead.any():
        pre = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0.0)
        latent = np.zeros_like(pre)
        k_aux = min(spec.k_aux, int(dead.sum()))
        for row in range(len(pre)):
            candidates = np.flatnonzero(dead)
            top = candidates[np.argsort(-pre[row, candidates], kind="stable")[:k_aux]]
            latent[row, top] = pre[row, top]
        error = np.mean(np.sum((residual - latent @ p["W_dec"]) ** 2, axis=1))
        aux = float(error / np.mean(np.sum((residual - residual.mean(axis=0)) ** 2, axis=1)))
    return l2 + spec.auxk_alpha * aux, l2, aux
