"""``--plan`` for the probes job: what a run reads and computes per layer, and its time here from a calibration.

Reads the store's lengths and the word tables (no states). Calibration, a few seconds, each timed after a first
call that compiles it: one LID fit per value of the l2 grid on random features of the run's shape (L-BFGS runs to a
tolerance, and small l2 takes many more iterations); one DTW similarity matrix of 48 random tokens as wide as the
typical language's longest word; one held-out PWCCA (fit, projection and QR) of the phone target's shape and one of
the word targets'.

The DTW kernel pads every token of a language to that language's longest word (``dtw_similarity_matrix``), so its
cells are counted as ``tokens^2 x longest^2`` per language, not from the mean length: on the demo the longest word
is 3-4x the mean, and the mean undercounted the run's DTW 5x (planned 14.7 s, ran 81.6 s; issue 50).
"""

from __future__ import annotations

import time

import numpy as np

from engine.listing import chosen as pick
from engine.pipelines.probes import cca, samediff
from engine.pipelines.probes.config import WORD_PROBES, ProbesConfig, ProbesError
from engine.pipelines.probes.run import word_tokens
from engine.pipelines.stages import lid
from engine.runtime.plan import Plan, Stage
from engine.stores.reader import open_store

LBFGS_ITERATIONS = 100  # assumed per fit: 40-120 measured on the demo's layers
DTW_SAMPLE = 48  # tokens of the DTW calibration


def _timed(fn, *args) -> float:
    fn(*args)  # compiles
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def plan_probes_run(config: ProbesConfig, device=None) -> Plan:
    """The plan of ``run_probes(config)``; ``device`` is not modelled (the probes are small dense work)."""
    store = open_store(config.store)
    langs = pick("language", config.langs, store.languages(), ProbesError, "the store")
    layers = pick("layer", config.layers, store.info.layers, ProbesError, "the store")
    chosen = config.chosen
    d = store.info.embed
    item = np.dtype(store.info.dtype if store.info.dtype != "bfloat16" else "float16").itemsize
    lengths = {lang: store.lengths(lang) for lang in langs}
    done = {lang: lengths[lang][lengths[lang] > 0] for lang in langs}
    n_utt = sum(len(v) for v in done.values())
    # read_blocks cuts each block at its longest utterance
    frames_read = sum(
        int(v[i : i + config.block].max()) * len(v[i : i + config.block])
        for v in done.values()
        for i in range(0, len(v), config.block)
    )
    tokens = {}
    if set(chosen) & set(WORD_PROBES):
        for lang in langs:
            ids = store.utterances_table(lang).column("id").to_pylist()
            tokens[lang], _ = word_tokens(config, store, lang, ids, lengths[lang])
    counts = [("languages", str(len(langs))), ("layers", str(len(layers))), ("utterances", str(n_utt))]
    stages = [Stage("read states", 0.0, frames_read * d * item * len(layers), 0.0, 0.0)]
    rng = np.random.default_rng(0)
    calibration = []
    if "lid" in chosen:
        fits = config.folds * (len(lid.L2_GRID) + 1)
        classes = len(langs)
        # class means in anisotropic noise (a decaying spectrum, as pooled states have): L-BFGS needs about the
        # iterations real layers need (2-3x those of white noise with random labels, measured on the demo's layers)
        y = rng.integers(0, classes, n_utt).astype(np.int32)
        basis = rng.standard_normal((d, d)) * (np.arange(1, d + 1) ** -0.7)[:, None]
        x = (0.3 * rng.standard_normal((classes, d))[y] + rng.standard_normal((n_utt, d)) @ basis).astype(np.float32)
        train = (rng.random(n_utt) < (config.folds - 1) / config.folds).astype(np.float32)  # an outer training set

        def fit(l2):
            return np.asarray(lid.fit_predict(x, y, train, np.float32(l2), classes=classes)[0])

        by_l2 = [_timed(fit, l2) for l2 in lid.L2_GRID]
        # per fold: every l2 of the grid once, then one refit with the chosen l2 (taken as the grid's mean)
        per_layer = config.folds * (sum(by_l2) + float(np.mean(by_l2)))
        flops = 6.0 * n_utt * d * classes * LBFGS_ITERATIONS * fits
        stages.append(Stage("lid fits", flops * len(layers), 0.0, 0.0, per_layer * len(layers)))
        counts.append(("lid fits per layer", f"{fits} ({config.folds} folds x {len(lid.L2_GRID)} l2 + refits)"))
        calibration.append(f"LID fits {min(by_l2) * 1e3:.0f}-{max(by_l2) * 1e3:.0f} ms by l2")
    if tokens:
        n_tok = {lang: len(t) for lang, t in tokens.items()}
        mean_len = float(np.mean(np.concatenate([t.length for t in tokens.values()]))) if any(n_tok.values()) else 1
        counts.append(("word tokens", f"{sum(n_tok.values())} (mean {mean_len:.1f} frames)"))
    if "samediff" in chosen and tokens:
        # the kernel pads every token of a language to its longest word: cells = tokens^2 x longest^2
        longest = {lang: int(t.length.max()) for lang, t in tokens.items() if len(t) >= 2}
        width = max(1, int(np.median(list(longest.values())))) if longest else 1
        sample = rng.standard_normal((DTW_SAMPLE, width, d)).astype(np.float32)
        lens = np.full(DTW_SAMPLE, width, np.int32)
        per_cell = _timed(lambda: np.asarray(samediff.dtw_similarity_matrix(sample, lens, sample, lens)))
        per_cell /= DTW_SAMPLE**2 * width**2
        cells = float(sum(n_tok[lang] ** 2 * w**2 for lang, w in longest.items()))
        stages.append(Stage("samediff dtw", 2.0 * d * cells * len(layers), 0.0, 0.0, per_cell * cells * len(layers)))
        counts.append(("samediff pairs per layer", str(sum(n * (n - 1) // 2 for n in n_tok.values()))))
        counts.append(("longest word", f"{width} frames in the median language (every token padded to it)"))
        calibration.append(f"DTW {per_cell * 1e9:.2f} ns a cell")
    if "cca" in chosen and tokens:
        n_frames = min(cca.MAX_FRAMES, int(sum(t.length.sum() for t in tokens.values())))
        n_words = sum(n_tok.values())
        fit_seconds = {}
        for name, rows, width in (("phone", n_frames // 2, 64), ("word", n_words // 2, d)):  # 64: about the phones
            x = rng.standard_normal((max(rows, 2), d)).astype(np.float32)
            target = rng.standard_normal((max(rows, 2), width)).astype(np.float32)
            # the whole held-out score (fit, projections, QR), on a test half as large as the fit half
            fit_seconds[name] = _timed(lambda x=x, t=target: cca.heldout_pwcca(x, t, x, t, cca.EPSILON))
        # each target fitted twice (score, shuffled chance): phone on frames; word and semantic on tokens (the
        # semantic target's width, the text encoder's, taken for both)
        seconds = 2 * fit_seconds["phone"] + 4 * fit_seconds["word"]
        flops = 2 * 4.0 * (n_frames // 2) * d * d + 4 * 4.0 * (n_words // 2) * d * d
        stages.append(Stage("cca fits", flops * len(layers), 0.0, 0.0, seconds * len(layers)))
        counts.append(("cca examples", f"{n_frames} phone frames, {n_words} word tokens"))
        calibration.append(
            f"CCA fits of {n_frames // 2} frames {fit_seconds['phone']:.2f} s, {n_words // 2} words "
            f"{fit_seconds['word']:.2f} s"
        )
    block_bytes = config.block * max((int(v.max()) for v in done.values() if len(v)), default=0) * d * 4
    lang_bytes = max((len(v) for v in done.values()), default=0) * d * 4 + block_bytes * 2
    peak = lang_bytes + (cca.MAX_FRAMES * d * 4 * 3 if "cca" in chosen else 0)
    memory = [f"one block of {config.block} utterances read as float32, the pooled vectors and the word frames"]
    return Plan(
        "probes",
        counts,
        stages,
        float(peak),
        memory,
        None,
        "; ".join(calibration) or "nothing to calibrate",
        [
            f"L-BFGS runs {LBFGS_ITERATIONS} iterations a fit (the FLOP count; the time is the calibrated fit's)",
            "the word-identity target is as wide as the semantic one (it has fewer columns: errs long)",
            "reading states at local-disk speed is not timed",
            "building the CCA targets (espeak-ng phones, the text encoder) is not timed: 3.6 s on the demo",
        ],
    )
