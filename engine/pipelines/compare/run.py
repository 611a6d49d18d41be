"""Compare models and layers: retrieval on a common depth axis, and layer x layer similarity across layer stores.

Takes several layer stores of the same audio (different models, or one model at two settings; a store may be
compared with itself) and writes::

    OUT/by_depth.csv                           depth.DEPTH_COLUMNS: R@1 and MRR per model, layer, directed pair, all
    OUT/challenge_table.csv                    depth.CHALLENGE_COLUMNS (with a challenge set): full vs challenge R@1
    OUT/layer_similarity.parquet               layers.ROW_COLUMNS: one row per (model_a, layer_a, model_b, layer_b,
                                               language, level, measure) with value (null = not computable) and n
    OUT/figures/by_depth.png                   R@1 and MRR against depth, one line per model, random dashed
    OUT/figures/layers_<a>__<b>_<level>.png    heatmaps of the pooled (`all`) similarity, a panel per measure

Model pairs are every unordered pair of stores, each store with itself included, in the order given (a before b).
Levels (``engine.pipelines.compare.states``): ``utterance`` = mean-pooled states of the utterances both stores
hold; ``frame`` = frames paired by time, at most ``frame_sample`` of them per language drawn at random (seeded, the
same draw for every layer), and for ``all`` an equal share of each language's draw. The seed and the pairing make
every number reproducible from the stores.

Languages are matched across code systems (``engine.pipelines.compare.languages``): each store is read under its own
code for a language (``fr_fr`` in one, ``fra_Latn`` in another), and the outputs name the language by the first
store's code.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time

import numpy as np
import pyarrow as pa

from engine import captions
from engine.models.family import FAMILIES
from engine.pipelines.compare import depth, layers, null, states
from engine.pipelines.compare.config import CompareConfig, CompareError
from engine.pipelines.compare.languages import Language, languages_of
from engine.pipelines.compare.layers import ALL, MeasureOptions, View
from engine.pipelines.compare.plan import plan_compare_run
from engine.pipelines.compare.progress import Progress, SetTicks
from engine.runtime.budget import HOST_SHARE, host_memory
from engine.runtime.plan import duration, size
from engine.runtime.runs import output_run
from engine.stores.challenge import read_kept
from engine.stores.integrity import parquet_bytes, write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import StoreReader, open_store

log = logging.getLogger(__name__)

BY_DEPTH = "by_depth.csv"
CHALLENGE_TABLE = "challenge_table.csv"
LAYER_SIMILARITY = "layer_similarity.parquet"
FIGURES = "figures/"
SCHEMA = pa.schema(
    [("model_a", pa.string()), ("layer_a", pa.int32()), ("model_b", pa.string()), ("layer_b", pa.int32())]
    + [("language", pa.string()), ("level", pa.string()), ("measure", pa.string()), ("value", pa.float64())]
    + [("n", pa.int64())]
    + [(column, pa.float64()) for column in layers.NULL_COLUMNS]
)


@dataclasses.dataclass(frozen=True)
class CompareResult:
    out: str
    names: tuple[str, ...]
    depth_rows: tuple[tuple, ...]
    challenge_rows: tuple[tuple, ...]  # the paper's table (pooled over pairs)
    similarity: pa.Table
    paths: tuple[str, ...]
    seconds: float

    def report(self) -> str:
        lines = [
            f"compare: {', '.join(self.names)} ({self.seconds:.1f} s)",
            "retrieval R@1 by depth (mean over pairs):",
        ]
        for r in sorted((r for r in self.depth_rows if r[3] == ALL and r[6] == "R@1"), key=lambda r: (r[0], r[2])):
            lines.append(f"  {r[0]:<20} layer {r[1]:>2}  depth {r[2]:.2f}  R@1 {r[7]:.3f}  random {r[8]:.3f}  n {r[9]}")
        if self.challenge_rows:
            lines.append("full vs challenge set R@1 (mean over pairs with a challenge set):")
            lines += [
                f"  {r[0]:<20} layer {r[1]:>2}  {r[5]:<9} {r[6]:.3f}  random {r[7]:.3f}  n {r[8]}"
                for r in self.challenge_rows
            ]
        table = self.similarity.to_pylist()
        self_cka = [
            r["value"]
            for r in table
            if r["measure"] == "cka"
            and r["model_a"] == r["model_b"]
            and r["layer_a"] == r["layer_b"]
            and r["value"] is not None
        ]
        if self_cka:
            lines.append(f"CKA of a layer with itself: min {min(self_cka):.6f}, max {max(self_cka):.6f}")
        lines.append(f"{len(table)} layer-similarity rows")
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines)


class _Cache:
    """Mean-pooled states per (store, language, layer), read once (each read ticks ``progress``)."""

    def __init__(self, progress: Progress):
        self._pooled: dict[tuple, np.ndarray] = {}
        self.progress = progress

    def pooled(self, reader: StoreReader, lang: str, layer: int, index: np.ndarray) -> np.ndarray:
        key = (reader.url, lang, layer)
        if key not in self._pooled:
            every = np.arange(len(reader.lengths(lang)))
            done = reader.done(lang)
            table = np.zeros((len(every), reader.info.embed), np.float32)
            table[done] = states.pooled(reader, lang, layer, every[done])
            self._pooled[key] = table
            self.progress.read(reader, int(reader.lengths(lang)[done].sum()), f"reading {lang} layer {layer}")
        return self._pooled[key][index]


def _names(config: CompareConfig, readers: list[StoreReader]) -> tuple[str, ...]:
    names = tuple(config.names or (r.info.model_name for r in readers))
    by_name: dict[str, str] = {}
    for name, reader in zip(names, readers, strict=True):
        if by_name.setdefault(name, reader.url) != reader.url:
            raise CompareError(
                f"stores {by_name[name]!r} and {reader.url!r} are both named {name!r}: pass --names, one per store"
            )
    return names


def _frame_views(a, b, name_a, name_b, lang: str, pairing: states.Pairing, config, progress) -> tuple[View, View]:
    """``lang``: the language's name in the outputs (the seed of its draw); the stores read under ``pairing``'s
    codes. Each layer read ticks ``progress``."""
    len_a, len_b = a.lengths(pairing.lang)[pairing.index_a], b.lengths(pairing.lang_b)[pairing.index_b]
    rate_a, rate_b = a.info.frame_rate, b.info.frame_rate
    pairs = [states.frame_pairs(int(x), int(y), rate_a, rate_b) for x, y in zip(len_a, len_b, strict=True)]
    owner = np.concatenate([np.full(len(p[0]), u) for u, p in enumerate(pairs)])
    fa, fb = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    rng = np.random.default_rng([config.seed, *lang.encode()])
    pick = rng.permutation(len(owner))[: config.frame_sample]

    def gather(reader, code, index, frames, name):
        stack = []
        for layer in reader.info.layers:
            padded, lengths = states.read_layer(reader, code, layer, index)
            stack.append(padded[owner[pick], frames[pick]])
            progress.read(reader, int(np.sum(lengths)), f"reading {code} layer {layer} (frames)")
        return View(name, reader.info.layers, tuple(stack))

    view_a = gather(a, pairing.lang, pairing.index_a, fa, name_a)
    return view_a, (view_a if b is a else gather(b, pairing.lang_b, pairing.index_b, fb, name_b))


def _similarity(config, readers, names, langs: list[Language], cache: _Cache) -> list[tuple]:
    options = MeasureOptions(config.knn_k, config.svcca_keep, config.cca_epsilon)
    rows: list[tuple] = []
    for i in range(len(readers)):
        for j in range(i, len(readers)):
            a, b = readers[i], readers[j]
            pooled_views: dict[str, list[View]] = {level: [] for level in config.levels}
            for language in langs:
                lang, code_a, code_b = language.name, language.codes[i], language.codes[j]
                pairing = states.pair_utterances(a, b, (code_a, code_b), config.allow_mismatch)
                if len(pairing.keys) < states.MIN_SHARED:
                    log.warning("%s: fewer than %d utterances done in both %s and %s; skipped", lang, states.MIN_SHARED,
                                names[i], names[j])  # fmt: skip
                    continue
                if "utterance" in config.levels and len(pairing.keys) < states.MIN_POOLED:  # pooled with the rest
                    log.warning("%s: %d utterances done in both %s and %s: too few for the utterance level on its own "
                                "(two points make CKA 1 whatever they are); in the pooled set only", lang,
                                len(pairing.keys), names[i], names[j])  # fmt: skip
                views = {}
                if "utterance" in config.levels:
                    va = View(
                        names[i],
                        a.info.layers,
                        tuple(cache.pooled(a, code_a, la, pairing.index_a) for la in a.info.layers),
                    )
                    vb = (
                        va
                        if j == i
                        else View(
                            names[j],
                            b.info.layers,
                            tuple(cache.pooled(b, code_b, lb, pairing.index_b) for lb in b.info.layers),
                        )
                    )
                    views["utterance"] = (va, vb)
                if "frame" in config.levels:
                    views["frame"] = _frame_views(a, b, names[i], names[j], lang, pairing, config, cache.progress)
                for level, (va, vb) in views.items():
                    pooled_views[level].append((va, vb))
                    if level == "utterance" and va.n < states.MIN_POOLED:
                        continue  # pooled with the other languages only (warned above)
                    measures = config.measures if level == "utterance" else config.frame_measures
                    ticks = cache.progress.for_set(a, b, va.n, level, f"{names[i]} x {names[j]}, {lang}, {level}")
                    rows += layers.similarity_rows(
                        va, vb, lang, level, measures, options, _null(config, va, vb, lang, level, ticks), ticks
                    )
                log.info("compared %s x %s on %s", names[i], names[j], lang)
            for level, per_lang in pooled_views.items():
                if not per_lang:
                    continue
                measures = config.measures if level == "utterance" else config.frame_measures
                share = math.ceil(config.frame_sample / len(per_lang)) if level == "frame" else None
                va, vb = (_concat([v[side] for v in per_lang], share) for side in (0, 1))
                vb = va if j == i else vb
                if level == "utterance" and va.n < states.MIN_POOLED:
                    log.warning("%s x %s: %d utterances pooled, too few for the utterance level", names[i], names[j],
                                va.n)  # fmt: skip
                    continue
                ticks = cache.progress.for_set(a, b, va.n, level, f"{names[i]} x {names[j]}, {ALL}, {level}")
                null_fn = _null(config, va, vb, ALL, level, ticks)
                rows += layers.similarity_rows(va, vb, ALL, level, measures, options, null_fn, ticks)
    return rows


def _null(config: CompareConfig, va: View, vb: View, language: str, level: str, ticks: SetTicks):
    """The permutation null of one set (``compare.null``), or None with ``--null_permutations 0``."""
    if not config.null_permutations or level not in config.null_levels:
        return None
    perms = null.permutations(config.seed, level, language, va.n, config.null_permutations)
    options = MeasureOptions(config.knn_k, config.svcca_keep, config.cca_epsilon)

    def scores(measure, grid, shared):
        return null.null_grid(measure, va, vb, options, shared, perms, grid, ticks.share(f"null {measure}"))

    return scores


def _concat(views: list[View], share: int | None) -> View:
    first = views[0]
    return View(
        first.model,
        first.layers,
        tuple(np.concatenate([v.states[k][:share] for v in views]) for k in range(len(first.layers))),
    )


def _retrieval(config, readers, names, langs: list[Language], cache, read: dict) -> tuple[list[tuple], list[tuple]]:
    depth_rows, challenge_rows = [], []
    codes = {lang.name: lang.codes for lang in langs}
    for k, (reader, name) in enumerate(zip(readers, names, strict=True)):
        # each layer's place on the depth axis, as its family places it (a speech LLM's projector past its tower)
        n_layer = FAMILIES[reader.info.family].store_depth(reader.info)
        if k in read:  # a retrieval folder of store k, read before the lease (``_read_retrieval``)
            got = read[k]
        else:

            def pooled(lang, layer, reader=reader, k=k):
                code = codes[lang][k]
                done = np.flatnonzero(reader.done(code))
                ids = [reader.arrays(code).rows[u].id for u in done]
                return cache.pooled(reader, code, layer, done), ids

            kept = None
            if config.challenge:

                def kept(a, b):
                    """The challenge folder's pair under the first store's codes, else under another store's."""
                    for pair in dict.fromkeys(zip(codes[a], codes[b], strict=True)):
                        ids = read_kept(config.challenge, *pair, missing_ok=True)
                        if ids is not None:
                            return ids
                    return None

            got = depth.computed_rows(name, n_layer, reader.info.layers, [lang.name for lang in langs], pooled, kept)
        depth_rows += got[0]
        challenge_rows += got[1]
    return depth_rows + depth.pooled_rows(depth_rows), depth.challenge_table(challenge_rows)


def _figures(result_rows, table: pa.Table, names, subtitle: str) -> dict[str, bytes]:
    from engine.pipelines.compare import figures  # lazy: matplotlib is only needed here

    writes = {}
    curves: dict[str, dict] = {metric: {} for metric in depth.METRICS}
    pairs = {(r[0], r[1], r[6]): 0 for r in result_rows}
    for r in result_rows:
        if r[3] != ALL:
            pairs[r[0], r[1], r[6]] += 1
    for r in sorted((r for r in result_rows if r[3] == ALL), key=lambda r: r[2]):
        d, v, rnd, _ = curves[r[6]].setdefault(r[0], ([], [], [], 0))
        d.append(r[2])
        v.append(r[7])
        rnd.append(r[8])
        curves[r[6]][r[0]] = (d, v, rnd, r[9] // max(1, pairs[r[0], r[1], r[6]]))
    if any(np.isfinite(np.asarray(v, float)).any() for models in curves.values() for _, v, _, _ in models.values()):
        writes[FIGURES + "by_depth.png"] = figures.by_depth_png(curves, subtitle=subtitle + "; n = queries per pair")
    rows = [r for r in table.to_pylist() if r["language"] == ALL]
    for level in dict.fromkeys(r["level"] for r in rows):
        for a in names:
            for b in names[names.index(a) :]:
                sel = [r for r in rows if r["level"] == level and r["model_a"] == a and r["model_b"] == b]
                if not sel:
                    continue
                la, lb = sorted({r["layer_a"] for r in sel}), sorted({r["layer_b"] for r in sel})
                grids, p_values, null_means = {}, {}, {}
                for r in sel:
                    cell = la.index(r["layer_a"]), lb.index(r["layer_b"])
                    grid = grids.setdefault(r["measure"], np.full((len(la), len(lb)), np.nan))
                    grid[cell] = np.nan if r["value"] is None else r["value"]
                    p = p_values.setdefault(r["measure"], np.full((len(la), len(lb)), np.nan))
                    p[cell] = np.nan if r["p_value"] is None else r["p_value"]
                    mean = null_means.setdefault(r["measure"], np.full((len(la), len(lb)), np.nan))
                    mean[cell] = np.nan if r["null_mean"] is None else r["null_mean"]
                if not any(np.isfinite(grid).any() for grid in grids.values()):
                    continue  # nothing measured between these models at this level: no blank figure
                n = sel[0]["n"]
                what = "utterances (mean-pooled)" if level == "utterance" else "frames paired by time"
                writes[FIGURES + f"layers_{_file_name(a)}__{_file_name(b)}_{level}.png"] = figures.heatmaps_png(
                    grids,
                    la,
                    lb,
                    model_a=a,
                    model_b=b,
                    title=f"{a} x {b}: layer similarity, all languages",
                    subtitle=f"{subtitle}; n = {n} {what}",
                    p_values=p_values,
                    null_means=null_means,
                )
    return writes


def _file_name(model: str) -> str:
    """A model name as a file-name part: 'whisper-base (packaged)' -> 'whisper-base_packaged'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"


def run_compare(config: CompareConfig) -> CompareResult:
    """Reads the stores, computes, writes the outputs of the module docstring and returns them. The run holds the
    output folder's writer lease and records its settings there (``engine.runtime.runs.output_run``)."""
    start = time.perf_counter()
    readers = [open_store(url) for url in config.stores]
    names = _names(config, readers)
    langs = languages_of(config, readers)
    if not langs:
        raise CompareError(f"the stores share no language: {[r.languages() for r in readers]}")
    for i, a in enumerate(readers):  # the same audio in every store: checked before the lease, from the tables
        for j in range(i + 1, len(readers)):
            for lang in langs:
                states.pair_utterances(a, readers[j], (lang.codes[i], lang.codes[j]), config.allow_mismatch)
    _check_languages(config, readers, langs)
    read = _read_retrieval(config, readers, names, langs)
    _check_null_cost(config)
    with output_run(config, "compare", CompareError):
        return _compare(config, readers, names, langs, start, read)


def _check_languages(config: CompareConfig, readers, langs: list[Language]) -> None:
    """What the stores' tables tell before the lease: every store has done utterances to compare in some language
    (each pair's layer similarity skips a language one of them has none of), and a challenge table, made of pairs of
    languages, has two. Retrieval by depth ranks one language's utterances in another's: with one language its rows
    are empty, said here; the layer similarity is still measured."""
    for k, reader in enumerate(readers):
        done = {lang.name: int(reader.done(lang.codes[k]).sum()) for lang in langs}
        single = [name for name, n in done.items() if n == 1]
        if single:  # compared with itself, as every store is: refused there after the other pairs' work
            raise CompareError(f"store {reader.url!r} has one done utterance of {single}: a similarity needs two or "
                               "more; encode more, or leave them out with --langs")  # fmt: skip
        if not any(done.values()):
            raise CompareError(f"store {reader.url!r} has no done utterance of {list(done)}: nothing of it to compare")
    if len(langs) < 2:
        if config.challenge:
            raise CompareError(
                "--challenge: the challenge table compares retrieval between two languages; the run has "
                f"{[lang.name for lang in langs]} (--langs, or the languages the stores share)"
            )
        log.warning("one language (%s): retrieval by depth, between two languages, has no rows; the layer similarity "
                    "is measured", langs[0].name)  # fmt: skip


def _read_retrieval(config: CompareConfig, readers, names, langs: list[Language]) -> dict[int, tuple]:
    """{store index: (depth rows, challenge rows)} of the stores given a ``--retrieval`` folder, read before the lease:
    a folder without retrieval.csv or the measure was refused after the other stores' retrieval was computed."""
    read = {}
    for k, (reader, name) in enumerate(zip(readers, names, strict=True)):
        folder = config.retrieval[k] if config.retrieval else ""
        if folder:  # its rows name the languages by store k's codes
            n_layer = FAMILIES[reader.info.family].store_depth(reader.info)
            rename = {lang.codes[k]: lang.name for lang in langs}
            read[k] = depth.read_rows(name, n_layer, folder, config.retrieval_measure, rename)
    return read


NULL_ESTIMATED = 1000  # permutations above which the null's cost is estimated (the plan) before the run starts
NULL_CAP_HOURS = 24.0  # an estimate above this is refused: a null that would run for days is a typo, not a study


def _check_null_cost(config: CompareConfig) -> None:
    """A large ``--null_permutations`` gets the plan's estimate of the whole run (``plan_compare_run``): refused when
    its memory is over the share of RAM a job may use (``engine.runtime.budget``) or its time over
    ``NULL_CAP_HOURS`` on this machine, else a warning saying how long it will take; nothing written either way."""
    if config.null_permutations <= NULL_ESTIMATED:
        return
    plan = plan_compare_run(config, None)
    seconds, usable = plan.seconds_here, host_memory() * HOST_SHARE
    if plan.peak_memory > usable:  # the permutations and their scores alone: a billion of them do not fit
        scaled = max(int(config.null_permutations * usable / plan.peak_memory), 1)
        raise CompareError(
            f"--null_permutations {config.null_permutations} holds about {size(plan.peak_memory)} (the permutations "
            f"and their scores, --plan), more than the {size(usable)} this job may use here; about {scaled} "
            "permutations fit. Nothing was written"
        )
    said = f"--null_permutations {config.null_permutations} makes the run take about {duration(seconds)} here (--plan)"
    if seconds > NULL_CAP_HOURS * 3600:
        scaled = max(int(config.null_permutations * NULL_CAP_HOURS * 3600 / seconds), 1)
        raise CompareError(
            f"{said}, more than the {NULL_CAP_HOURS:.0f} h this job takes on; about {scaled} permutations fit in that "
            "(200, the default, gives p-values to 0.005). Nothing was written"
        )
    log.warning("%s", said)


def _compare(config: CompareConfig, readers, names, langs, start: float, read: dict) -> CompareResult:
    cache = _Cache(Progress(config, readers))
    finished = False
    try:
        depth_rows, challenge_rows = _retrieval(config, readers, names, langs, cache, read)
        rows = _similarity(config, readers, names, langs, cache)
        finished = True
    finally:
        cache.progress.close(finished)
    table = pa.Table.from_pylist([dict(zip(layers.ROW_COLUMNS, r, strict=True)) for r in rows], schema=SCHEMA)
    writes = {BY_DEPTH: depth.csv_bytes(depth.DEPTH_COLUMNS, depth_rows), LAYER_SIMILARITY: parquet_bytes(table)}
    if challenge_rows:
        writes[CHALLENGE_TABLE] = depth.csv_bytes(depth.CHALLENGE_COLUMNS, challenge_rows)
    datasets = ", ".join(dict.fromkeys(captions.dataset_label(r.manifest.get("created")) for r in readers))
    subtitle = f"{', '.join(names)}; {datasets}; {len(langs)} languages"
    writes |= _figures(depth_rows, table, names, subtitle)
    _, kv = open_kvstore(config.run.out)
    write_outputs(kv, writes, config.run.out)
    root = config.run.out.rstrip("/") + "/"
    return CompareResult(
        config.run.out,
        names,
        tuple(depth_rows),
        tuple(challenge_rows),
        table,
        tuple(root + k for k in writes),
        time.perf_counter() - start,
    )
