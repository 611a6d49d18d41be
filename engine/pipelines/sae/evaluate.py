"""What a layer's SAE keeps, measured over every frame of the layer, and its features' languages.

At evaluation an SAE of either kind is applied per frame as the exported weights are: ``z = TopK_k(ReLU((x -
b_dec) @ W_enc + b_enc))`` (a BatchTopK SAE's batch-level choice depends on what else is in the batch; per frame it
keeps k on every frame, its training average).

- ``fvu``: fraction of variance unexplained, ``sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over all valid frames;
- ``l0``: active features per frame; ``dead_share``: features that fire on no frame; ``dense_share``: features that
  fire on more than ``DENSE`` of the frames;
- ``r1``, ``r1_reconstructed``: SeqSim R@1 of translations (mean over directed language pairs) on the first
  ``eval_utterances`` utterances of each language, the states as stored and as reconstructed;
- ``lid``, ``lid_reconstructed``: the probes job's language-ID probe (``lid_layer``) on the same utterances' mean-
  pooled states, as stored and reconstructed;
- per feature and language, the share of frames it fires on, and LAPE over languages (``stages.lape``: the entropy
  the neurons job ranks feed-forward units by, so both read alike). LAPE's own selection is a quota (the 1% lowest),
  the same share at every depth; here a live feature is **language-selective** when its entropy is below
  ``SELECTIVE`` of the most it can be (``log`` of the languages), and belongs to the language it fires most in; it
  is **shared** when it fires at LAPE's threshold rate (``tau``, the 95th percentile of all rates) in every language.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from engine.pipelines.sae.data import Frames
from engine.pipelines.stages import lape as lape_lib
from engine.pipelines.stages.lid import lid_layer
from kernels import sae
from kernels.metrics import retrieval_metrics
from kernels.seqsim import seqsim_matrix

DENSE = 0.1  # a feature firing on more than this share of frames is dense
SELECTIVE = 0.5  # a feature whose LAPE is below this share of log(languages) is language-selective
CHUNK = 2048  # frames per encoder call (one compiled shape)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    layer: int
    fvu: float
    l0: float
    dead_share: float
    dense_share: float
    r1: float
    r1_reconstructed: float
    lid: float
    lid_reconstructed: float
    frames: int
    languages: tuple[str, ...]
    rates: np.ndarray  # f64[language, feature]: share of the language's frames the feature fires on
    entropy: np.ndarray  # f64[feature]: LAPE, NaN for a feature that never fires
    threshold: float  # LAPE's tau
    selective: np.ndarray  # bool[feature]
    belongs: np.ndarray  # bool[language, feature]: selective, and the language it fires most in
    shared: np.ndarray  # bool[feature]
    activations: dict  # language -> {"ids", "offsets", "indices", "values"} (sparse, the kept utterances)


@functools.partial(jax.jit, static_argnames=("k",))
def _apply(params: dict, x: jax.Array, scale: float, k: int):
    z = sae.encode(params, x * scale, k, "topk")
    values, index = jax.lax.top_k(z, k)
    return sae.decode(params, z) / scale, values, index


def apply(params: dict, scale: float, k: int, x: np.ndarray):
    """(x_hat f32[n, d], values f32[n, k], indices i32[n, k]) of frames ``x`` in the store's space, CHUNK at a time."""
    outs = []
    for start in range(0, len(x), CHUNK):
        part = x[start : start + CHUNK]
        padded = np.zeros((CHUNK, x.shape[1]), np.float32)
        padded[: len(part)] = part
        outs.append([np.asarray(o)[: len(part)] for o in _apply(params, jnp.asarray(padded), scale, k)])
    return tuple(np.concatenate(parts) for parts in zip(*outs, strict=True))


def _pad(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(f) for f in frames], np.int32)
    out = np.zeros((len(frames), int(lengths.max()), frames[0].shape[1]), np.float32)
    for i, f in enumerate(frames):
        out[i, : len(f)] = f
    return out, lengths


def _mean_r1(kept: dict, ids: dict) -> float:
    """SeqSim R@1 of translations, the mean over directed language pairs with shared ids and more than one
    candidate (NaN if none)."""
    values = []
    padded = {lang: _pad(frames) for lang, frames in kept.items()}
    for a, b in itertools.combinations(kept, 2):
        scores = np.asarray(seqsim_matrix(*padded[a], *padded[b]))
        for s, rows, cols in ((scores, ids[a], ids[b]), (scores.T, ids[b], ids[a])):
            metrics = retrieval_metrics(s, rows, cols, ks=(1,))
            # one candidate is found whatever the states: R@1 1 by construction, not measured (a probe's 1.0/1.0)
            if metrics.queries and metrics.random_recall[1] < 1:
                values.append(metrics.recall[1])
    return float(np.mean(values)) if values else float("nan")


def _lid(kept: dict, ids: dict, layer: int, seed: int) -> float:
    pooled = [f.mean(axis=0) for lang in kept for f in kept[lang]]
    labels = np.concatenate([np.full(len(kept[lang]), i) for i, lang in enumerate(kept)])
    groups = [str(u) for lang in kept for u in ids[lang]]
    if len(set(groups)) < 5 or len(kept) < 2:
        return float("nan")
    return lid_layer(layer, np.stack(pooled), labels, groups, seed=seed).accuracy


def evaluate(frames: Frames, params: dict, scale: float, k: int, ids_of: dict, eval_utterances: int,
             activations: int, seed: int, bar=None) -> Evaluation:  # fmt: skip
    """Every measure of the module docstring for one trained layer. ``ids_of``: language -> the store's utterance
    ids (by index). ``bar``: a progress bar of ``len(frames.utterances) + 4``, advanced by each utterance scanned and
    by each of the 4 measures after the scan (R@1 and LID, stored and reconstructed)."""
    advance = bar.update if bar is not None else lambda n=1: None
    d_sae = params["W_enc"].shape[1]
    langs = list(frames.langs)
    counts = np.zeros((len(langs), d_sae), np.int64)
    n_frames = np.zeros(len(langs), np.int64)
    sse = total = 0.0
    sums, squares, l0 = 0.0, 0.0, 0
    original = {lang: [] for lang in langs}
    rebuilt = {lang: [] for lang in langs}
    kept_ids = {lang: [] for lang in langs}
    sparse = {lang: {"ids": [], "lengths": [], "indices": [], "values": []} for lang in langs}
    for lang, u, x in frames.scan():
        i = langs.index(lang)
        x_hat, values, index = apply(params, scale, k, x)
        x64 = x.astype(np.float64)
        sse += float(np.sum((x64 - x_hat) ** 2))
        sums = sums + x64.sum(axis=0)
        squares += float(np.sum(x64**2))
        total += len(x)
        fired = values > 0
        l0 += int(fired.sum())
        np.add.at(counts[i], index[fired], 1)
        n_frames[i] += len(x)
        if len(original[lang]) < eval_utterances:
            original[lang].append(x)
            rebuilt[lang].append(x_hat)
            kept_ids[lang].append(ids_of[lang][u])
        if len(sparse[lang]["ids"]) < activations:
            sparse[lang]["ids"].append(ids_of[lang][u])
            sparse[lang]["lengths"].append(len(x))
            sparse[lang]["indices"].append(np.where(fired, index, -1).astype(np.int32))
            sparse[lang]["values"].append(np.where(fired, values, 0).astype(np.float32))
        advance()
    variance = squares - float(np.sum(sums**2)) / total
    rates = counts / n_frames[:, None]
    ranked = lape_lib.lape(langs, counts[:, None, :], n_frames)
    entropy = ranked.entropy[0]
    with np.errstate(invalid="ignore"):
        selective = np.isfinite(entropy) & (entropy < SELECTIVE * np.log(len(langs)))
    belongs = selective[None] & (rates == rates.max(axis=0, keepdims=True))
    shared = (rates >= ranked.threshold).all(axis=0)
    overall = counts.sum(axis=0) / total
    measured = []
    for measure, states in ((_mean_r1, original), (_mean_r1, rebuilt), (_lid, original), (_lid, rebuilt)):
        args = (states, kept_ids) if measure is _mean_r1 else (states, kept_ids, frames.layer, seed)
        measured.append(measure(*args))
        advance()
    r1, r1_reconstructed, lid, lid_reconstructed = measured
    return Evaluation(
        layer=frames.layer, fvu=sse / variance, l0=l0 / total, dead_share=float(np.mean(overall == 0)),
        dense_share=float(np.mean(overall > DENSE)), r1=r1, r1_reconstructed=r1_reconstructed, lid=lid,
        lid_reconstructed=lid_reconstructed, frames=int(total), languages=tuple(langs),
        rates=rates, entropy=entropy, threshold=ranked.threshold, selective=selective, belongs=belongs,
        shared=shared, activations=sparse,
    )  # fmt: skip
