"""Language identification per layer: a linear probe on mean-pooled states (ML-SUPERB's LID task, linear), as the
probes job reports it and the neurons, heads and sae jobs read their changes through it.

The probe is multinomial logistic regression on standardised features, fitted with optax's L-BFGS to a gradient
tolerance, minimising

    mean_i CE(softmax(W x_i + b), y_i) + l2 / 2 * |W|^2          (b not penalised)

which has the minimiser of scikit-learn's ``LogisticRegression(C=1 / (l2 * n_train))`` (it minimises
``sum_i CE + |W|^2 / (2 C)``); the tests compare the two on the same features.

Evaluation, per layer:

- outer folds split by utterance id (``group_folds``): every recording and every translation of a sentence (FLEURS
  and the demo share ids across languages) sits in one fold, so a sentence is never in both train and test;
- inner validation: in each outer training set, the next fold is held out; ``l2`` is the value of ``L2_GRID`` with
  the lowest validation cross-entropy (smoother than accuracy on a few hundred utterances), and the probe is refitted
  on the whole outer training set with it;
- accuracy and macro-F1 over the pooled out-of-fold predictions: each utterance is predicted once, by the probe that
  never saw its sentence; ``chance`` is the accuracy of always answering the most frequent language.

Every fit of a layer (folds x L2 values, then the refits) has the same shapes: a training set is a 0/1 weight per
utterance, so one compiled function serves them all.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine.errors import BabelgridError, ShapeError

FOLDS = 5  # outer folds, split by utterance id (the probes job's --folds default, engine.pipelines.probes.config)
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # candidate l2 (per-utterance scale, features standardised)
MAX_ITER = 500  # L-BFGS iterations; the logistic loss of a few thousand utterances converges in 50-200
GRAD_TOL = 1e-5  # stop when |gradient| (all parameters) falls below this
STD_FLOOR = 1e-6  # a feature constant over the training set is centred, not blown up


class LidError(BabelgridError, ValueError):
    """The language-ID probe cannot run: fewer than two languages, or fewer utterance ids than folds."""


@dataclasses.dataclass(frozen=True)
class LidScore:
    """Out-of-fold language ID at one layer. ``l2``: the value chosen in each outer fold."""

    layer: int
    accuracy: float
    macro_f1: float
    n: int  # utterances predicted (each once)
    chance: float  # accuracy of always answering the most frequent language
    l2: tuple[float, ...]


def group_folds(groups: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """i32[item]: the fold of each item, all items of one group (utterance id) in the same fold. Groups are dealt
    round-robin in a seeded order, so folds differ in size by at most one group."""
    names = sorted(set(groups))
    if len(names) < folds:
        fix = "lower --folds or add data" if len(names) >= 3 else "add utterances (the probe needs 3 folds at least)"
        raise LidError(f"{len(names)} distinct utterance ids cannot fill {folds} folds: {fix}")
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[g]: i % folds for i, g in enumerate(order)}
    return np.array([fold_of[g] for g in groups], np.int32)


def _standardise(x, w):
    """(x - mean) / std with the weighted (training-set) statistics: x f32[n, d], w f32[n]."""
    total = jnp.sum(w)
    mean = w @ x / total
    var = w @ (x - mean) ** 2 / total
    return (x - mean) / jnp.maximum(jnp.sqrt(var), STD_FLOOR)


def _loss(params, x, y, w, l2):
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(w * ce) / jnp.sum(w) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


def _fit_one(x, y, w, l2, *, classes: int, max_iter: int, tol: float):
    """One probe: standardised x f32[n, d] (by w's statistics), labels i32[n], training weights f32[n], l2 f32[].
    Returns (params {"w": f32[d, classes], "b": f32[classes]}, iterations)."""
    params = {"w": jnp.zeros((x.shape[1], classes), x.dtype), "b": jnp.zeros((classes,), x.dtype)}
    loss = functools.partial(_loss, x=x, y=y, w=w, l2=l2)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, i + 1

    def running(carry):
        _, state, i = carry
        grad = optax.tree_utils.tree_get(state, "grad")
        return (i == 0) | ((i < max_iter) & (optax.tree_utils.tree_norm(grad) >= tol))

    params, _, iterations = jax.lax.while_loop(running, step, (params, opt.init(params), 0))
    return params, iterations


@functools.partial(jax.jit, static_argnames=("classes", "max_iter", "tol"))
def fit_predict(x, y, train, l2, *, classes: int, max_iter: int = MAX_ITER, tol: float = GRAD_TOL):
    """Fits one probe on a training set and predicts every item with it.

    x: f32[n, d] features; y: i32[n] labels in 0..classes-1; train: f32[n] 0/1 weights (1 = in the training set);
    l2: f32[]. Returns (log-probabilities f32[n, classes], iterations i32[]). Features are standardised with the
    training set's own statistics.
    """
    xs = _standardise(x, train)
    params, iterations = _fit_one(xs, y, train, l2, classes=classes, max_iter=max_iter, tol=tol)
    return jax.nn.log_softmax(xs @ params["w"] + params["b"]), iterations


def fit_all(x, y, train: np.ndarray, l2: np.ndarray, classes: int) -> np.ndarray:
    """fit_predict for each row of train: f32[fit, n] and l2: f32[fit] -> log-probabilities f32[fit, n, classes].

    One fit after the other through one compiled function (the shapes are the same): vmapped, the nested while
    loops of L-BFGS and its line search ran every fit to the slowest one's iterations, 20x slower on the demo."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    return np.stack(
        [np.asarray(fit_predict(x, y, w, lam, classes=classes)[0]) for w, lam in zip(train, l2, strict=True)]
    )


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> float:
    """Unweighted mean over labels 0..classes-1 of F1 = 2 TP / (2 TP + FP + FN); a label with no true and no
    predicted item scores 0 (scikit-learn's ``f1_score(average="macro", labels=range(classes), zero_division=0)``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in range(classes):
        tp = np.sum((y_true == c) & (y_pred == c))
        denominator = 2 * tp + np.sum((y_true != c) & (y_pred == c)) + np.sum((y_true == c) & (y_pred != c))
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def lid_layer(
    layer: int,
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    *,
    folds: int = FOLDS,
    l2_grid: Sequence[float] = L2_GRID,
    seed: int = 0,
) -> LidScore:
    """Cross-validated language ID at one layer (module docstring).

    features: f32[utterance, embed] mean-pooled states; labels: i32[utterance] language index; groups: the utterance
    ids (str[utterance]) that folds keep together.
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.int32)
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(groups) != x.shape[0]:
        raise ShapeError(
            f"features must be f32[utterance, embed] with labels and groups of length utterance, got {x.shape}, "
            f"{y.shape}, {len(groups)}"
        )
    classes = _classes(y, folds)
    fold = group_folds(groups, folds, seed)
    chosen = _chosen_l2(x, y, fold, folds, l2_grid, classes)
    outer = np.stack([fold != k for k in range(folds)]).astype(np.float32)
    logp = fit_all(x, y, outer, np.asarray(chosen, np.float32), classes)
    predicted = logp[fold, np.arange(len(y))].argmax(axis=1)
    counts = np.bincount(y, minlength=classes)
    return LidScore(
        layer=layer,
        accuracy=float(np.mean(predicted == y)),
        macro_f1=macro_f1(y, predicted, classes),
        n=len(y),
        chance=float(counts.max() / len(y)),
        l2=tuple(chosen),
    )


def _classes(y: np.ndarray, folds: int) -> int:
    classes = int(y.max()) + 1 if len(y) else 0
    if classes < 2 or folds < 3:
        raise LidError(f"the language-ID probe needs >= 2 languages and >= 3 folds, got {classes} and {folds}")
    return classes


def _chosen_l2(x, y, fold: np.ndarray, folds: int, l2_grid: Sequence[float], classes: int) -> list[float]:
    """The l2 of each outer fold k: the grid value with the lowest cross-entropy on fold k + 1 when fitted on the
    folds other than k and k + 1."""
    grid = np.asarray(l2_grid, np.float32)
    inner = np.stack([(fold != k) & (fold != (k + 1) % folds) for k in range(folds) for _ in grid]).astype(np.float32)
    logp = fit_all(x, y, inner, np.tile(grid, folds), classes).reshape(folds, len(grid), len(y), classes)
    chosen = []
    for k in range(folds):
        val = fold == (k + 1) % folds
        val_ce = -logp[k][:, val, :][:, np.arange(val.sum()), y[val]].mean(axis=1)
        chosen.append(float(grid[int(np.argmin(val_ce))]))
    return chosen


def lid_transfer(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    changed: Sequence[np.ndarray],
    *,
    folds: int = FOLDS,
    l2_grid: Sequence[float] = L2_GRID,
    seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Out-of-fold language ID of the same utterances before and after a change to the model.

    The probes are ``lid_layer``'s (the same folds, l2 choice and refits), fitted on ``features`` (f32[utterance,
    embed], the unchanged model's pooled states) only; each probe then predicts its own test fold both in
    ``features`` and in each array of ``changed`` (the same utterances, same order, encoded by a changed model). So
    a prediction never comes from a probe that saw the sentence, and a change is read by the probe trained on the
    unchanged model: what the intervention literature measures. Returns (predicted i32[utterance], one predicted
    i32[utterance] per ``changed``).
    """
    x = np.asarray(features, np.float32)
    y = np.asarray(labels, np.int32)
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(groups) != x.shape[0]:
        raise ShapeError(f"features must be f32[utterance, embed] with labels and groups of its length, got {x.shape}")
    bad = [c.shape for c in changed if c.shape != x.shape]
    if bad:
        raise ShapeError(f"each changed array must have the features' shape {x.shape}, got {bad}")
    classes = _classes(y, folds)
    fold = group_folds(groups, folds, seed)
    chosen = _chosen_l2(x, y, fold, folds, l2_grid, classes)
    blocks = 1 + len(changed)
    x_all = np.concatenate([x, *(np.asarray(c, np.float32) for c in changed)])
    y_all = np.tile(y, blocks)
    train = np.zeros((folds, len(x_all)), np.float32)
    train[:, : len(x)] = np.stack([fold != k for k in range(folds)])  # only the unchanged states train
    logp = fit_all(x_all, y_all, train, np.asarray(chosen, np.float32), classes)
    predicted = logp[np.tile(fold, blocks), np.arange(len(x_all))].argmax(axis=1).reshape(blocks, len(x))
    return predicted[0], list(predicted[1:])
