"""Switching a language's selected units off, and what it does to language ID and retrieval (``--intervene``).

The evaluation set is the first ``--intervene_utterances`` utterances of every language. It is encoded once with the
model unchanged, and once per condition with a set of feed-forward units set to zero after the nonlinearity (the
family's ``ffn_scaled_sums``: each stored layer's states summed over the valid frames, nothing per frame kept):

- ``off-<lang>``: every unit LAPE selected for ``lang`` (``Lape.belongs``), in every layer;
- ``random<k>-<lang>``, k = 1 .. ``--random_draws``: as many units per layer as ``off-<lang>`` switches off, drawn
  (seeded by ``--seed``, ``lang`` and k) among the units selected for no language. The draws are the null: if the
  selected units matter for ``lang`` more than any units do, ``off-<lang>`` moves ``lang``'s numbers more than the
  random draws do.

The test (``intervention_test.csv``, ``TEST_COLUMNS``): per language switched off and metric (language ID and R@1 of
its own group), the effect of a condition is its largest fall over the layers (the most negative change; each
condition at its own layer, so selected and random units are scored alike). ``p_value = (1 + #{draws whose fall is
at least the selected one's}) / (draws + 1)``: the share of random unit sets that hurt as much, counting the selected
set as one of them (so 9 draws give p >= 0.1, 19 give p >= 0.05); NA without draws.

Each stored layer's states are mean-pooled per utterance (windows of long audio summed, then divided by the valid
frames). Two measures per layer, each before and after, for the utterances of ``lang`` ("self") and of every other
language ("others"):

- **language ID**: the probes job's linear probe (``engine.pipelines.stages.lid.lid_transfer``): trained on the
  unchanged states with folds by utterance id, each probe predicting its own test fold before and after. The
  accuracy over the group's utterances.
- **retrieval R@1** of mean-pooled cosine similarity: for an ordered pair of languages (a, b), the share of a's
  utterances whose most similar utterance of b is its translation (queries with no translation in b are left out; a
  pair with none is not measured, NaN). "self": the mean over pairs with ``lang`` on either side, "others": over
  pairs without it.

Files: ``intervention/pooled/<condition>.npz`` (``none``, ``off-<lang>``, ``random<k>-<lang>``: pooled f32[layer,
utterance, embed], the utterances present, the units switched off), written as each condition is done, with digests:
a rerun reads them back. ``intervention/settings.json`` records what they were made with (``--intervene_utterances``,
``--seed``, the units ranked: ``--rate_quantile``, ``--lape_share``); a rerun with other values deletes the passes
and makes them again, and never the counts (``manifest.json`` does not pin these settings). ``intervention.csv``,
``intervention_test.csv`` and ``figures/intervention.png`` from the conditions of this run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import zlib

import numpy as np
import tensorstore as ts

from engine import captions
from engine.pipelines.neurons.config import NeuronsConfig, NeuronsError
from engine.pipelines.stages.lid import FOLDS, lid_transfer
from engine.pipelines.stages.retrieval import r1_of_similarity
from engine.pipelines.stages.windows import NoClaims, Task, batches, prefetched
from engine.runtime.runs import RunSummary
from engine.stores.integrity import read_output, write_outputs
from engine.stores.kv import read_json, read_value, write_value
from engine.stores.records import csv_bytes, json_bytes, npz_bytes, read_npz

log = logging.getLogger(__name__)

POOLED = "intervention/pooled/"
SETTINGS = "intervention/settings.json"  # what the passes were made with (module docstring)
SETTING_FIELDS = ("intervene_utterances", "seed", "rate_quantile", "lape_share")
CLAIMS = "neurons-intervene"  # the claims of the intervention's passes (engine.runtime.claims), one per condition
CSV = "intervention.csv"
TEST_CSV = "intervention_test.csv"
FIGURE = "figures/intervention.png"
COLUMNS = ("lang", "control", "draw", "units_off", "layer", "group", "utterances", "lid_before", "lid_after",
           "lid_change", "r1_before", "r1_after", "r1_change")  # fmt: skip
TEST_COLUMNS = ("lang", "metric", "units_off", "selected_change", "selected_layer", "draws", "null_mean", "null_min",
                "p_value")  # fmt: skip
METRICS = {"language_id": COLUMNS.index("lid_change"), "r1": COLUMNS.index("r1_change")}
GROUPS = ("self", "others")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The utterances re-encoded: ``tasks`` in order, their language index and parallel id."""

    langs: tuple[str, ...]
    tasks: tuple[Task, ...]
    label: np.ndarray  # i32[utterance]
    ids: tuple[str, ...]


def evaluation_set(source, langs, split: str, per_language: int) -> Evaluation:
    tasks, label, ids = [], [], []
    for li, lang in enumerate(langs):
        for utt in source.utterances(lang, split)[:per_language]:
            tasks.append(Task(lang, len(tasks), lang, utt, None, None))
            label.append(li)
            ids.append(str(utt.id))
    return Evaluation(tuple(langs), tuple(tasks), np.asarray(label, np.int32), tuple(ids))


def check_evaluation_set(source, langs, split: str, per_language: int) -> None:
    """Refuses, from the dataset's listing alone, an evaluation set whose language-ID probe cannot be fitted: its
    utterance ids must fill the probe's folds (``lid_transfer``'s ``FOLDS``, by id) and two languages must hold one.
    Checked before anything is counted: the probe ran only after the counting pass and every intervention pass."""
    evaluation = evaluation_set(source, langs, split, per_language)
    ids = len(set(evaluation.ids))
    held = [lang for li, lang in enumerate(langs) if (evaluation.label == li).any()]
    if len(held) < 2:
        raise NeuronsError(f"--intervene: the language-ID probe needs utterances of two or more languages; of {langs} "
                           f"only {held} have any in split {split!r}")  # fmt: skip
    if ids < FOLDS:
        raise NeuronsError(
            f"--intervene_utterances {per_language}: the evaluation set has {ids} distinct utterance ids, and the "
            f"language-ID probe splits them into {FOLDS} folds by id; raise --intervene_utterances (ids are shared "
            f"across languages where they are translations) or add utterances. Nothing was counted"
        )


def conditions(ranked, targets, draws: int, seed: int) -> dict[str, np.ndarray]:
    """{condition name: f32[layer, unit] scale}: 0 for the units switched off, 1 elsewhere (module docstring). Draw
    k's units depend on the seed, the language and k only, so more draws keep the passes of the first ones."""
    out = {}
    free = ~ranked.selected
    for lang in targets:
        off = ranked.belongs[ranked.languages.index(lang)]
        out[f"off-{lang}"] = np.where(off, 0, 1).astype(np.float32)
        for k in range(1, draws + 1):
            rng = np.random.default_rng([seed, zlib.crc32(lang.encode()), k])
            scale = np.ones(off.shape, np.float32)
            for layer, n in enumerate(off.sum(axis=1)):
                pool = np.flatnonzero(free[layer])
                scale[layer, rng.choice(pool, size=min(int(n), len(pool)), replace=False)] = 0
            out[f"random{k}-{lang}"] = scale
    return out


def condition(name: str) -> tuple[str, str, int]:
    """(control, language, draw) of a condition's name: ``off-en`` -> ("selected", "en", 0), ``random3-en`` ->
    ("random", "en", 3)."""
    head, lang = name.split("-", 1)
    return ("selected", lang, 0) if head == "off" else ("random", lang, int(head[len("random") :]))


def pooled_pass(encoder, evaluation: Evaluation, scale: np.ndarray, config: NeuronsConfig, summary, progress):
    """(pooled f32[layer, utterance, embed], present bool[utterance]): every stored layer mean-pooled over each
    utterance's valid frames (its windows together), with the feed-forward units scaled by ``scale``."""
    n = len(evaluation.tasks)
    sums, frames = None, np.zeros(n, np.int64)
    with concurrent.futures.ThreadPoolExecutor(config.prefetch) as pool:
        prepared = prefetched(pool, iter(evaluation.tasks), encoder, config.long_audio, config.prefetch * 4)
        for batch, parts in batches(prepared, config.batch_size, summary, NoClaims(progress), encoder.collate):
            valid = np.zeros(config.batch_size, np.int32)
            for p, start, take, row in parts:
                valid[row : row + take] = p.frames[start : start + take]
            got, got_frames = encoder.ffn_scaled_sums(batch, valid, scale)
            if sums is None:
                sums = np.zeros((got.shape[0], n, got.shape[2]), np.float64)
            for p, start, take, row in parts:
                i = p.task.index
                sums[:, i] += got[:, row : row + take].sum(axis=1)
                frames[i] += int(np.sum(got_frames[row : row + take]))
                progress.update(int(start + take == len(p.mel)))
    present = frames > 0
    if sums is None or not present.any():
        raise NeuronsError("intervention: no utterance of the evaluation set could be read")
    pooled = np.where(present[None, :, None], sums / np.maximum(frames, 1)[None, :, None], 0)
    return pooled.astype(np.float32), present


def pooled_conditions(encoder, evaluation, scales: dict, config, summary, kv, url, fix, progress_bar, claim) -> dict:
    """{condition: (pooled, present)} for ``none`` and each of ``scales``: read back where a former run (or another
    worker) stored it, else claimed (``claim(names, is_done, progress)`` yields the names this process takes: one
    pass each), encoded and stored at once (a kill loses at most the condition in progress)."""
    width = next(iter(scales.values())).shape if scales else None
    todo = {"none": np.ones(width, np.float32), **scales} if width else {}

    def key(name: str) -> str:
        return f"{POOLED}{name}.npz"

    def stored(name: str) -> bool:
        return read_value(kv, key(name), url).state == "value"

    missing = [name for name in todo if not stored(name)]
    progress = progress_bar(len(missing) * len(evaluation.tasks), "intervene", "utt")
    for name in claim(missing, stored, progress):
        # the skips of a pass are the baseline's (the same audio is read each time): count them once
        skips = summary if name == "none" else RunSummary()
        pooled, present = pooled_pass(encoder, evaluation, todo[name], config, skips, progress)
        write_outputs(kv, {key(name): npz_bytes({"pooled": pooled, "present": present, "scale": todo[name]})}, url)
        log.info("intervention %s: encoded %d utterances", name, int(present.sum()))
    progress.close()
    out = {}
    for name, scale in todo.items():
        found = read_output(kv, key(name), url, fix=fix)
        if found is None:
            raise NeuronsError(f"{url}/{key(name)} is missing after every pass was done: rerun to redo it")
        data = read_npz(found, key(name), url, fix)
        if data["pooled"].shape[1] != len(evaluation.tasks) or not np.array_equal(data["scale"], scale):
            raise NeuronsError(
                f"{url}/{key(name)} holds another evaluation set or other units: use a new output folder"
            )
        out[name] = data["pooled"], data["present"]
    return out


def r1_by_pair(pooled: np.ndarray, label: np.ndarray, ids, n_langs: int) -> np.ndarray:
    """f64[language, language]: R@1 of mean-pooled cosine for every ordered pair (a, b), a != b (module docstring);
    NaN on the diagonal and where a and b share no id. ``pooled``: f32[utterance, embed] of one layer."""
    x = np.asarray(pooled, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1)
    return r1_of_similarity(x @ x.T, label, ids, n_langs)


def _group_mean(r1: np.ndarray, lang: int) -> tuple[float, float]:
    """(mean R@1 over the measured pairs with ``lang`` on either side, over those without it); NaN if none."""
    n = len(r1)
    involved = np.zeros((n, n), bool)
    involved[lang, :] = involved[:, lang] = True
    measured = np.isfinite(r1)

    def mean(mask):
        return float(r1[mask & measured].mean()) if (mask & measured).any() else float("nan")

    return mean(involved), mean(~involved)


def measure(evaluation: Evaluation, pooled: dict, scales: dict, seed: int) -> list[tuple]:
    """The rows of ``intervention.csv`` (``COLUMNS``), per condition, layer and group."""
    names = list(scales)
    present = pooled["none"][1].copy()
    for name in names:
        present &= pooled[name][1]
    label, ids = evaluation.label[present], [i for i, keep in zip(evaluation.ids, present, strict=True) if keep]
    n_langs, n_layers = len(evaluation.langs), pooled["none"][0].shape[0]
    rows = []
    for layer in range(n_layers):
        base = pooled["none"][0][layer][present]
        changed = [pooled[name][0][layer][present] for name in names]
        before, after = lid_transfer(base, label, ids, changed, seed=seed)
        r1_base = r1_by_pair(base, label, ids, n_langs)
        for name, predicted, states in zip(names, after, changed, strict=True):
            control, lang, draw = condition(name)
            li = evaluation.langs.index(lang)
            r1_after = _group_mean(r1_by_pair(states, label, ids, n_langs), li)
            r1_before = _group_mean(r1_base, li)
            units = int(np.sum(scales[name] == 0))
            for g, group in enumerate(GROUPS):
                mask = label == li if group == "self" else label != li
                lid_b = float(np.mean(before[mask] == label[mask])) if mask.any() else float("nan")
                lid_a = float(np.mean(predicted[mask] == label[mask])) if mask.any() else float("nan")
                rows.append((lang, control, draw, units, layer, group, int(mask.sum()), lid_b, lid_a, lid_a - lid_b,
                             r1_before[g], r1_after[g], r1_after[g] - r1_before[g]))  # fmt: skip
    return rows


def _largest_fall(rows: list, lang: str, control: str, draw: int, column: int) -> tuple[float, int]:
    """(the most negative change over the layers, its layer) of one condition's own group; NaN where unmeasured."""
    got = [(r[column], r[4]) for r in rows if (r[0], r[1], r[2], r[5]) == (lang, control, draw, "self")]
    got = [(v, layer) for v, layer in got if np.isfinite(v)]
    return min(got, key=lambda x: (x[0], -x[1])) if got else (float("nan"), -1)


def test_rows(rows: list) -> list[tuple]:
    """The rows of ``intervention_test.csv`` (``TEST_COLUMNS``, module docstring) from ``measure``'s."""
    out = []
    for lang in dict.fromkeys(r[0] for r in rows):
        units = next(r[3] for r in rows if r[0] == lang and r[1] == "selected")
        draws = sorted({r[2] for r in rows if r[0] == lang and r[1] == "random"})
        for metric, column in METRICS.items():
            change, layer = _largest_fall(rows, lang, "selected", 0, column)
            null = np.array([_largest_fall(rows, lang, "random", k, column)[0] for k in draws], np.float64)
            null = null[np.isfinite(null)]
            p = (1 + np.sum(null <= change + 1e-12)) / (len(null) + 1) if len(null) and np.isfinite(change) else None
            out.append((lang, metric, units, change, layer, len(null), float(null.mean()) if len(null) else None,
                        float(null.min()) if len(null) else None, None if p is None else float(p)))  # fmt: skip
    return out


def settle(kv, url: str, config, fix: str) -> None:
    """The passes of an earlier run made with other settings (``SETTINGS``) are deleted and the new settings
    recorded: only the intervention is redone, never the counts. Called by the process that opens the run, before any
    other joins (``engine.runtime.runs.output_run``'s ``prepare``)."""
    want = {name: getattr(config, name) for name in SETTING_FIELDS}
    stored = read_json(kv, SETTINGS, url, sealed=True, fix=fix)
    if stored is not None and {k: stored.get(k) for k in want} == want:
        return
    if stored is not None:
        changed = ", ".join(f"{k} {stored.get(k)!r} -> {v!r}" for k, v in want.items() if stored.get(k) != v)
        log.warning("intervention settings changed (%s): its passes are made again; the counts are kept", changed)
        kv.delete_range(ts.KvStore.KeyRange(POOLED, POOLED[:-1] + "0")).result()
    write_value(kv, SETTINGS, json_bytes(want), url)


def run_intervention(config, encoder, source, langs, ranked, kv, url, fix, summary, progress_bar,
                     claim) -> dict[str, bytes]:  # fmt: skip
    """The intervention's files (module docstring); ``summary.intervention`` gets the headline numbers. ``claim``:
    ``pooled_conditions``'. The passes stored were made with this run's settings (``settle``, at its start)."""
    owners = [lang for i, lang in enumerate(ranked.languages) if ranked.belongs[i].any()]
    targets = owners if list(config.intervene) == ["all"] else list(config.intervene)
    unknown = [lang for lang in targets if lang not in ranked.languages]
    if unknown:
        raise NeuronsError(f"--intervene names languages not counted here: {unknown} (counted: {list(langs)})")
    empty = [lang for lang in targets if lang not in owners]
    if empty:
        log.warning("no unit was selected for %s: nothing to switch off, left out", empty)
        summary.intervention_empty = empty
    targets = [lang for lang in targets if lang in owners]
    if not targets:
        raise NeuronsError(f"--intervene: none of {list(config.intervene)} owns a selected unit; owners: {owners}")
    evaluation = evaluation_set(source, langs, config.split, config.intervene_utterances)
    scales = conditions(ranked, targets, config.random_draws, config.seed)
    pooled = pooled_conditions(encoder, evaluation, scales, config, summary, kv, url, fix, progress_bar, claim)
    rows = measure(evaluation, pooled, scales, config.seed)
    summary.intervention = rows
    summary.intervention_test = test_rows(rows)
    from engine.pipelines.neurons import figures  # lazy: matplotlib only here

    per_language = np.bincount(evaluation.label, minlength=len(langs))
    subtitle = (f"{captions.source_line(encoder.name, {'dataset': config.dataset, 'split': config.split})}; "
                f"n = {per_language.min()}" + (f"-{per_language.max()}" if per_language.max() > per_language.min()
                                                else "") + " utterances per language")  # fmt: skip
    return {
        CSV: csv_bytes(COLUMNS, na(rows)),
        TEST_CSV: csv_bytes(TEST_COLUMNS, na(summary.intervention_test)),
        FIGURE: figures.intervention_png(rows, subtitle),
    }


def report_lines(rows: list, empty: list, tests: list = ()) -> list[str]:
    """Per language switched off: the layer where its own language ID fell most, what the other languages did there,
    and the verdict of the test against the random draws (``test_rows``)."""
    if not rows and not empty:
        return []
    lines = [f"intervention: no unit was selected for {', '.join(empty)}: left out"] if empty else []
    by = {(r[0], r[1], r[2], r[4], r[5]): r for r in rows}
    verdicts = {(t[0], t[1]): t for t in tests}
    for lang in dict.fromkeys(r[0] for r in rows):
        own = [r for r in rows if r[0] == lang and r[1] == "selected" and r[5] == "self"]
        worst = min(own, key=lambda r: (r[9], -r[4]))  # the largest fall; without one, the deepest layer
        layer = worst[4]
        others = by[lang, "selected", 0, layer, "others"]
        text = (f"intervention {lang} ({worst[3]} units off): at layer {layer} language ID of {lang} "
                f"{worst[7]:.2f} -> {worst[8]:.2f}, of the others {others[7]:.2f} -> {others[8]:.2f}; "
                f"R@1 with {lang} {worst[10]:.3f} -> {worst[11]:.3f}")  # fmt: skip
        lines.append(text)
        for metric, what in (("language_id", "language ID"), ("r1", "R@1")):
            t = verdicts.get((lang, metric))
            if t is None or t[8] is None:
                continue
            verdict = "larger than any random draw's" if t[3] < t[7] else "within the random draws'"
            lines.append(
                f"  {what} of {lang}: largest fall {-t[3]:.3f} (layer {t[4]}) with its units off; {t[5]} draws of as "
                f"many random units: mean {-t[6]:.3f}, largest {-t[7]:.3f}; p = {t[8]:.3g}: {verdict}"
            )
    return lines


def na(rows) -> list[list]:
    """Rows for a CSV: None and NaN written as NA (not measured), never as 0 or "nan"."""
    return [["NA" if x is None or (isinstance(x, float) and np.isnan(x)) else x for x in r] for r in rows]
