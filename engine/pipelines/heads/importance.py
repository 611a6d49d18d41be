"""Gradient head importance (Michel, Levy and Neubig 2019): the derivative of a loss with respect to each head's mask
value, at the unablated model (every mask value 1), in one forward and backward pass over the evaluation set.

Every window gets a mask of its own (``f[row, blocks, heads]``, all ones), so the backward pass gives each window's
share of the gradient at no extra cost; the importance of head h for a language is the mean, over that language's
utterances, of ``|dL/dmask_h|`` summed over the utterance's windows (Michel et al.'s expectation of the absolute
gradient), and ``importance_signed`` keeps the sign (positive: scaling the head down would lower the loss, so it
hurts the objective). Two losses:

- ``contrastive``: retrieval of translations from mean-pooled states at the last scored layer. With ``p_u`` the
  utterance's pooled state normalised to unit length, for every query u and every other language b holding its
  translation v: ``-log softmax_b(p_u . p_w / temperature)[v]``, the softmax over b's utterances w; the loss is the
  mean over those (query, language) terms. It depends on the mask only through the pooled states, so its gradient is
  the vector-Jacobian product of the encoder with ``dL/dp`` (computed first, on the host), batch by batch: exact, and
  the backward pass never holds more than ``--grad_batch`` windows.
- ``ce``: the text decoder's cross-entropy of the store's transcription (its prompt, text tokens and end-of-text,
  teacher-forced; ``engine.models.interface.Trainer``) from the last stored layer, summed over the text tokens and
  the end-of-text. Utterances longer than one window are left out of it (counted in the summary), as are those
  without a transcription or a prompt token.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine.pipelines.heads.ablate import Evaluation


@dataclasses.dataclass(frozen=True)
class Importance:
    """Per utterance, the gradient of a loss with respect to the mask, and the loss."""

    loss: str
    value: float  # the loss at the unablated model
    grads: np.ndarray  # f64[utterance, blocks, heads]: summed over the utterance's windows
    used: np.ndarray  # bool[utterance]: the utterances the loss covers
    left_out: int  # utterances it could not cover (CE: over one window, no transcription or prompt token)


def contrastive_cotangent(pooled: np.ndarray, label: np.ndarray, ids, temperature: float) -> tuple[float, np.ndarray]:
    """(the contrastive loss, ``dL/dpooled f32[utterance, embed]``) of mean-pooled states (module docstring)."""
    ids = np.asarray(ids)
    queries, targets, groups = [], [], []
    for b in np.unique(label):
        cols = np.flatnonzero(label == b)
        for u in np.flatnonzero(label != b):
            match = cols[ids[cols] == ids[u]]
            if len(match):
                queries.append(u)
                targets.append(int(np.flatnonzero(cols == match[0])[0]))
                groups.append(cols)
    if not queries:
        return float("nan"), np.zeros_like(pooled)
    width = max(len(g) for g in groups)
    cand = np.array([np.pad(g, (0, width - len(g)), constant_values=-1) for g in groups])

    def loss(x):
        p = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        logits = jnp.einsum("qd,qkd->qk", p[np.asarray(queries)], p[np.maximum(cand, 0)]) / temperature
        logits = jnp.where(cand >= 0, logits, -jnp.inf)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(targets)))

    value, grad = jax.value_and_grad(loss)(jnp.asarray(pooled, jnp.float64 if jax.config.x64_enabled else jnp.float32))
    return float(value), np.asarray(grad, np.float32)


def contrastive_importance(masked, evaluation: Evaluation, pooled: np.ndarray, position: int, config, collate,
                           progress) -> Importance:  # fmt: skip
    """``Importance`` of the contrastive loss; ``pooled``: the unablated pooled states ``f32[utterance, embed]`` of the
    layer ``masked.layers[position]``."""
    value, cot = contrastive_cotangent(pooled, evaluation.label, evaluation.ids, config.temperature)
    totals = np.bincount(evaluation.owner, weights=evaluation.frames, minlength=evaluation.n)
    fn = masked.function()

    def linear(params, masks, cotangent, *batch):  # sum over rows and frames of states . cotangent: its gradient is
        return jnp.sum(fn(params, masks, *batch)[position] * cotangent)  # the VJP

    # The weights are arguments, not constants folded into the program (which took seconds to compile, per batch shape)
    grad = jax.jit(jax.grad(linear, argnums=1))
    grads = np.zeros((evaluation.n, masked.blocks, masked.heads))
    size, widths = config.grad_batch, {}
    for start in range(0, len(evaluation.inputs), size):
        windows = np.arange(start, min(start + size, len(evaluation.inputs)))
        batch = collate([evaluation.inputs[w] for w in windows], size)
        width = _frames(batch, masked, widths)
        cotangent = np.zeros((size, width, pooled.shape[1]), np.float32)
        for r, w in enumerate(windows):
            u = evaluation.owner[w]
            cotangent[r, : evaluation.frames[w]] = cot[u] / totals[u]
        masks = jnp.ones((size, masked.blocks, masked.heads), jnp.float32)
        got = np.asarray(grad(masked.params, masks, jnp.asarray(cotangent), *(jnp.asarray(x) for x in batch)))
        np.add.at(grads, evaluation.owner[windows], got[: len(windows)])
        progress.update(len(windows))
    used = np.isin(np.arange(evaluation.n), _with_partner(evaluation))
    return Importance("contrastive", value, grads, used, int(evaluation.n - used.sum()))


def ce_importance(masked, evaluation: Evaluation, trainer, prompts: dict, position: int, config, collate,
                  progress) -> Importance:  # fmt: skip
    """``Importance`` of the decoder's cross-entropy (module docstring); ``prompts``: the prompt language of each store
    language (None: no token); the memory is ``masked.layers[position]``, the last stored layer."""
    graph, params = trainer.split()
    fn = masked.function()
    windows_of = np.bincount(evaluation.owner, minlength=evaluation.n)
    rows = []  # (window, utterance, tokens, first scored position)
    for w, u in enumerate(evaluation.owner):
        lang = evaluation.langs[evaluation.label[u]]
        text, language = evaluation.texts[u], prompts.get(lang)
        if windows_of[u] != 1 or not text or language is None:
            continue
        prompt = trainer.prompt("transcribe", language)
        sequence = [*prompt, *trainer.tokens(text), trainer.eot][: trainer.n_text_ctx]
        rows.append((w, int(u), sequence, len(prompt)))

    def total(encoder_params, decoder_params, masks, tokens, weights, valid, *batch):
        memory = fn(encoder_params, masks, *batch)[position]
        memory = _fit_memory(memory, trainer.memory_frames)
        logits = graph.logits(decoder_params, tokens[:, :-1], memory, valid)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:])
        return jnp.sum(ce * weights), jnp.sum(ce * weights)

    grad = jax.jit(jax.grad(total, argnums=2, has_aux=True))  # weights as arguments, as above
    # Every row padded to the longest (end-of-text tokens of weight 0 after the sequence, which a causal decoder's
    # earlier positions never read: the loss and gradient of the unpadded rows): one compiled gradient for the run,
    # where one per text length cost seconds each; the decoder is a small part of a row's cost beside the encoder.
    length = max((len(seq) for _, _, seq, _ in rows), default=2)
    grads = np.zeros((evaluation.n, masked.blocks, masked.heads))
    value, size = 0.0, config.grad_batch
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        batch = collate([evaluation.inputs[w] for w, *_ in chunk], size)
        tokens = np.full((size, length), trainer.eot, np.int32)
        weights = np.zeros((size, length - 1), np.float32)
        valid = np.zeros(size, np.int32)
        for r, (w, _, seq, first) in enumerate(chunk):
            tokens[r, : len(seq)] = seq
            weights[r, first - 1 : len(seq) - 1] = 1  # the positions that predict the text and the end-of-text
            valid[r] = evaluation.frames[w]
        masks = jnp.ones((size, masked.blocks, masked.heads), jnp.float32)
        got, loss = grad(masked.params, params, masks, jnp.asarray(tokens), jnp.asarray(weights), jnp.asarray(valid),
                         *(jnp.asarray(x) for x in batch))  # fmt: skip
        value += float(loss)
        np.add.at(grads, [u for _, u, _, _ in chunk], np.asarray(got)[: len(chunk)])
        progress.update(len(chunk))
    used = np.zeros(evaluation.n, bool)
    used[[u for _, u, _, _ in rows]] = True
    return Importance("ce", value / max(len(rows), 1) if rows else float("nan"), grads, used,
                      int(evaluation.n - used.sum()))  # fmt: skip


def _frames(batch, masked, known: dict) -> int:
    """The frame axis of the states a batch gives, from the shapes alone (``jax.eval_shape``, which traces the model:
    once per batch shape, ``known`` keeps it)."""
    key = tuple(np.shape(x) for x in batch)
    if key not in known:
        shapes = jax.eval_shape(masked.function(), masked.params, jnp.ones((masked.blocks, masked.heads)), *batch)
        known[key] = int(shapes.shape[2])
    return known[key]


def _fit_memory(memory, frames: int):
    """The decoder's memory ``f[batch, frames, embed]``: a window of fewer frames padded (masked past ``valid`` by a
    decoder that does not read padding); Whisper's and OWSM's windows are full already."""
    have = memory.shape[1]
    if have >= frames:
        return memory[:, :frames]
    return jnp.pad(memory, ((0, 0), (0, frames - have), (0, 0)))


def _with_partner(evaluation: Evaluation) -> np.ndarray:
    """The utterances that have a translation in another language: the contrastive loss's queries."""
    ids = np.asarray(evaluation.ids)
    out = []
    for u in range(evaluation.n):
        others = (evaluation.label != evaluation.label[u]) & (ids == ids[u])
        if others.any():
            out.append(u)
    return np.asarray(out, np.int64)
