"""Cross-lingual retrieval on a similarity-matrix store: R@k and MRR per directed pair, layer and measure.

A similarity store (``engine.stores.similarity``) holds, per measure and stored language pair (a, b), scores
``f32[layer, utterance_a, utterance_b]``. Retrieval runs both ways: a -> b ranks b's utterances for each of a's
(``matrix(measure, a, b, layer)``), b -> a ranks a's for each of b's (``matrix(measure, b, a, layer)``). In every
table and figure ``lang_a`` is the query language and ``lang_b`` the searched one.

Before scoring, utterances that were not encoded when a matrix was computed are dropped and counted (``dropped_a``,
``dropped_b``): the similarity store's done marker records which rows and columns each matrix scored. Queries whose
id has no partner among the remaining columns are excluded and counted by ``kernels.metrics.retrieval_metrics``
(``excluded``).

A measure of ``NAN_MEASURES`` (``ot``) writes NaN for a score it could not measure (a pair whose Sinkhorn did not
converge, listed as ``nonconverged`` in the done marker). A query holding such a score among the scored columns
cannot be ranked (where its unknown candidate would land is unknown), so it is left out of that (direction, layer,
measure) and counted (``unranked``), with a warning naming the remedy; the same pair leaves out the other query in
the other direction. Every query is then counted once: ``queries + excluded + unranked + dropped_a`` = the query
language's utterances. NaN or inf among scored utterances of any other measure, or inf in ``ot``, is a damaged
store: ``RetrievalError``. Writes::

    OUT/retrieval.csv                    one row per (lang_a, lang_b, layer, measure, metric)
    OUT/figures/retrieval_heatmap.png    R@1, query language x searched language, at one layer, a panel per measure
    OUT/figures/retrieval_by_layer.png   R@1 against layer per directed pair, a panel per measure, random dashed

``OUT`` is any TensorStore kvstore location; it defaults to the similarity store itself when that is local.

With ``subset`` (a challenge-set folder from ``jobs.challenge``), queries and candidates of each pair are restricted
to the pair's kept ids, so ``retrieval.csv`` scores the challenge set (its ``random`` is 1/N_kept for R@1). As a
smaller pool alone raises R@1, it also writes ``OUT/subset_comparison.csv`` (``engine.pipelines.retrieval.subset``
SUBSET_COLUMNS): the full set, the challenge set and ``subset_draws`` seeded random subsets of the full set with as
many ids as were kept (mean and 95% interval), and ``OUT/figures/subset_by_layer.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
from collections.abc import Sequence

import numpy as np

from engine.errors import BabelgridError, ShapeError
from engine.stores.kv import open_kvstore, write_all
from engine.stores.similarity import SimilarityError, open_similarity
from kernels.metrics import DEFAULT_KS, TIE_RULES, RetrievalMetrics, retrieval_metrics, unmeasured

log = logging.getLogger(__name__)

CSV_NAME = "retrieval.csv"
FIGURES_DIR = "figures/"
HEATMAP_NAME = "retrieval_heatmap.png"
BY_LAYER_NAME = "retrieval_by_layer.png"
CSV_COLUMNS = (
    "lang_a",  # query language
    "lang_b",  # searched language
    "layer",  # babelgrid layer index: 0 = conv stem, 1..L = blocks, L+1 = ln_post
    "measure",
    "metric",  # R@k or MRR
    "value",
    "random",  # expectation of the metric under uniformly random rankings
    "queries",  # query utterances scored
    "excluded",  # encoded query utterances whose id has no partner among lang_b's encoded utterances
    "dropped_a",  # query utterances not encoded (all-NaN row)
    "dropped_b",  # searched utterances not encoded (all-NaN column)
    "unranked",  # scored query utterances left out because a score of theirs was not measured (ot: not converged)
)
# Measures that write NaN for a score they could not measure (ot: Sinkhorn did not converge within its iterations).
NAN_MEASURES = frozenset({"ot"})
NAN_REMEDY = (
    "rerun python -m jobs.seqsim into the same --out with a larger --ot_iterations or --ot_epsilon: it recomputes "
    "those layers (their markers' options differ)"
)
FIGURE_MEASURE = "seqsim"  # measure whose best mean R@1 picks the figure layer


class RetrievalError(BabelgridError, ValueError):
    """Retrieval cannot run as asked: unknown measure, layer or language, no output folder, bad scores."""


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    """What to score and where to write it. ``None`` means everything the similarity store holds.

    similarity: similarity store URL (local path or TensorStore kvstore URL).
    out: output folder; None = the similarity store itself when it is local.
    figure_layer: the heatmap's layer; None = the layer with the best mean R@1 of ``seqsim`` (else the first
      measure) over directed pairs.
    ties: ``kernels.metrics`` tie rule; scores with many ties (``duration``) deserve a second run with the other.
    """

    similarity: str
    out: str | None = None
    measures: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    langs: tuple[str, ...] | None = None
    figure_layer: int | None = None
    ks: tuple[int, ...] = DEFAULT_KS
    ties: str = "optimistic"
    subset: str | None = None  # challenge-set folder (jobs.challenge --out): score only each pair's kept ids
    subset_draws: int = 20  # size-matched random subsets of the full set drawn per directed pair
    subset_seed: int = 0

    def __post_init__(self):
        if self.subset_draws < 1:
            raise RetrievalError(f"subset_draws must be >= 1, got {self.subset_draws!r}")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise RetrievalError(f"ks must be positive integers such as (1, 5, 10), got {self.ks!r}")
        if self.ties not in TIE_RULES:
            raise RetrievalError(f"ties must be one of {TIE_RULES}, got {self.ties!r}")


@dataclasses.dataclass(frozen=True)
class DirectedScore:
    """Retrieval from ``lang_a`` (queries) into ``lang_b`` at one layer under one measure."""

    lang_a: str
    lang_b: str
    layer: int
    measure: str
    metrics: RetrievalMetrics
    dropped_a: int  # rows of utterances not encoded
    dropped_b: int  # columns of utterances not encoded
    unranked: int = 0  # scored queries left out: a score of theirs was not measured (NaN, ot not converged)

    def values(self) -> list[tuple[str, float, float]]:
        """(metric name, value, random baseline) for R@k in ks order, then MRR."""
        m = self.metrics
        return [(f"R@{k}", m.recall[k], m.random_recall[k]) for k in m.recall] + [("MRR", m.mrr, m.random_mrr)]


def mean_over_pairs(scores: Sequence[DirectedScore], measure: str, metric: str) -> dict[int, tuple[float, float]]:
    """layer -> (mean value, mean random baseline) of ``metric`` over the directed pairs that have queries."""
    by_layer: dict[int, list[tuple[float, float]]] = {}
    for s in scores:
        if s.measure == measure and s.metrics.queries:
            value, random = next((v, r) for name, v, r in s.values() if name == metric)
            by_layer.setdefault(s.layer, []).append((value, random))
    return {layer: tuple(np.mean(v, axis=0)) for layer, v in sorted(by_layer.items())}


@dataclasses.dataclass(frozen=True)
class RetrievalResult:
    """Every directed score, where they were written, and the layers that were not in the store yet."""

    scores: tuple[DirectedScore, ...]
    out: str
    csv_path: str
    figure_paths: tuple[str, ...]
    figure_layer: int | None
    missing: tuple[tuple[str, str, str, int], ...]  # (measure, lang_a, lang_b, layer) asked for but not done
    comparison: tuple[tuple, ...] = ()  # with a subset: SUBSET_COLUMNS rows (full, challenge, size-matched)

    def mean_over_pairs(self, measure: str, metric: str = "R@1") -> dict[int, tuple[float, float]]:
        """layer -> (mean value, mean random baseline) over directed pairs that have queries."""
        return mean_over_pairs(self.scores, measure, metric)

    def report(self) -> str:
        """Per measure: one line per layer with mean R@k and MRR over directed pairs, then their random baselines."""
        if not self.scores:
            return "no scores: the similarity store has no finished layer for the pairs, measures and layers asked"
        metrics = [name for name, _, _ in self.scores[0].values()]
        header = " ".join(f"{m:>6}" for m in metrics)
        lines = ["retrieval: mean over directed pairs (query -> searched language); * = figure layer"]
        for measure in dict.fromkeys(s.measure for s in self.scores):
            own = [s for s in self.scores if s.measure == measure]
            pairs = len({(s.lang_a, s.lang_b) for s in own if s.metrics.queries})
            lines += [
                f"\n{measure} ({pairs} directed pairs measured)",
                f"{'layer':>6} {header}  | random {header}  | queries excluded",
            ]
            means = {m: self.mean_over_pairs(measure, m) for m in metrics}
            for layer in means[metrics[0]]:
                mark = "*" if layer == self.figure_layer else " "
                values = " ".join(f"{means[m][layer][0]:6.3f}" for m in metrics)
                randoms = " ".join(f"{means[m][layer][1]:6.3f}" for m in metrics)
                at = [s for s in own if s.layer == layer]
                counts = f"{sum(s.metrics.queries for s in at):>7} {sum(s.metrics.excluded for s in at):>8}"
                lines.append(f"{layer:>5}{mark} {values}  |        {randoms}  | {counts}")
        lines.append(f"\nlayers: 0 = conv stem, L+1 = ln_post. csv: {self.csv_path}")
        lines += [f"figure: {p}" for p in self.figure_paths]
        if self.missing:
            lines.append(
                f"{len(self.missing)} (measure, directed pair, layer) not in the similarity store yet, skipped"
            )
        tiny = tiny_scores(self.scores)
        if tiny:
            least = min(tiny, key=lambda s: s.metrics.queries)
            fewest = f"{least.metrics.queries}, {least.measure} {least.lang_a}->{least.lang_b}"
            lines.append(
                f"WARNING: {len(tiny)} scores rest on fewer than {TINY_SET} queries (the fewest: {fewest}); each "
                "query moves R@k by 1/n, so read them as anecdotes"
            )
        unranked = unranked_summary(self.scores)
        if unranked:
            lines.append(f"WARNING: {unranked}")
        unmeasured = unmeasured_pairs(self.scores)
        if unmeasured:
            named = ", ".join(f"{m} {a}->{b}" for m, a, b in unmeasured)
            lines.append(f"not measured (no shared ids; NA in the CSV): {named}")
        return "\n".join(lines)


def drop_not_encoded(scores: np.ndarray, row_ids: Sequence, col_ids: Sequence, scored=None, *, measure=None):
    """Keeps the rows and columns of utterances that were scored (done in the layer store when the matrix was made).

    scores: f32[N, M]. ``scored``: ``(bool[N], bool[M])`` as the similarity store's done marker records them
    (``SimilarityReader.scored``). Only for matrices written before markers recorded them (``scored=None``) are
    they inferred: a column is dropped when it is NaN on every row, a row when it is NaN on every remaining column.
    Returns (scores f32[n, m], row_ids, col_ids, dropped rows, dropped columns). NaN or inf left among scored
    utterances is an error (the store is damaged), except NaN where ``measure`` is one of ``NAN_MEASURES``: those
    scores were not measured and are kept as NaN for ``drop_unranked``.
    """
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2 or scores.shape != (len(row_ids), len(col_ids)):
        expected = [len(row_ids), len(col_ids)]
        raise ShapeError(f"scores must be f32[len(row_ids), len(col_ids)] = {expected}, got {list(scores.shape)}")
    if scored is None:
        nan = np.isnan(scores)
        keep_cols = ~nan.all(axis=0)
        keep_rows = ~nan[:, keep_cols].all(axis=1) if keep_cols.any() else np.zeros(len(row_ids), bool)
    else:
        keep_rows, keep_cols = (np.asarray(m, bool) for m in scored)
        if keep_rows.shape != (len(row_ids),) or keep_cols.shape != (len(col_ids),):
            raise ShapeError(f"scored masks must be bool[{len(row_ids)}] and bool[{len(col_ids)}]")
    kept = scores[np.ix_(keep_rows, keep_cols)]
    bad = np.isinf(kept) if measure in NAN_MEASURES else ~np.isfinite(kept)
    if bad.any():
        which = "inf" if measure in NAN_MEASURES else "NaN or inf"
        raise RetrievalError(
            f"{int(bad.sum())} scores{'' if measure is None else f' of measure {measure!r}'} are {which} in rows and "
            "columns of encoded utterances: the similarity store is damaged or incomplete (only "
            f"{sorted(NAN_MEASURES)} write NaN, for scores they could not measure): recompute the pair "
            "(python -m jobs.seqsim; delete its done markers to force it)"
        )
    rows = [r for r, k in zip(row_ids, keep_rows, strict=True) if k]
    cols = [c for c, k in zip(col_ids, keep_cols, strict=True) if k]
    return kept, rows, cols, int((~keep_rows).sum()), int((~keep_cols).sum())


def drop_unranked(scores: np.ndarray, row_ids: Sequence) -> tuple[np.ndarray, list, int]:
    """Leaves out the queries (rows) that hold a NaN score: a candidate whose score is unknown makes the query's
    ranking unknown. Returns (scores f32[n', m], row_ids, rows left out)."""
    ranked = ~np.isnan(scores).any(axis=1)
    rows = [r for r, k in zip(row_ids, ranked, strict=True) if k]
    return scores[ranked], rows, int((~ranked).sum())


def score_matrix(
    scores, row_ids, col_ids, *, scored=None, ks=DEFAULT_KS, ties="optimistic", measure=None
) -> tuple[RetrievalMetrics, int, int, int]:
    """RetrievalMetrics of one f32[N, M] matrix over its scored utterances (``drop_not_encoded``) and ranked
    queries (``drop_unranked``), with the counts of rows and columns not encoded and of queries unranked."""
    kept, rows, cols, dropped_rows, dropped_cols = drop_not_encoded(scores, row_ids, col_ids, scored, measure=measure)
    kept, rows, unranked = drop_unranked(kept, rows)
    if not rows or not cols:
        return unmeasured(ks, excluded=len(rows)), dropped_rows, dropped_cols, unranked
    return retrieval_metrics(kept, rows, cols, ks=ks, ties=ties), dropped_rows, dropped_cols, unranked


def resolve_out(similarity: str, out: str | None) -> str:
    """The output folder: ``out``, else the similarity store itself when it is a local folder."""
    if out:
        return out
    if "://" not in similarity or similarity.startswith("file://"):
        return similarity
    raise RetrievalError(
        f"similarity store {similarity!r} is not a local folder, so the results need an output folder: "
        "give one (--out / RetrievalConfig.out), a local path or a TensorStore kvstore URL"
    )


def _select(name: str, asked, available) -> list:
    available = list(available)
    if asked is None:
        return available
    unknown = [a for a in asked if a not in available]
    if unknown:
        raise RetrievalError(f"the similarity store has no {name} {unknown}; it has {available}")
    return [a for a in available if a in asked]


def _done(reader, measure: str, query: str, searched: str) -> set[int]:
    """Layers whose (query, searched) matrix is complete; none when that direction is not stored at all (a directional
    measure such as ``seqsim_a2b`` answers the reverse direction only if ``seqsim_b2a`` was computed too)."""
    try:
        return set(reader.done(measure, query, searched))
    except SimilarityError:
        return set()


def score_subset(matrix, row_ids, col_ids, scored, kept_ids: set, draws: dict, key, config, where, comparison: list):
    """Like ``score_matrix``, on the ids of ``kept_ids`` only; appends the full / challenge / size-matched rows of
    ``where`` = (lang_a, lang_b, layer, measure) to ``comparison``. ``draws[key]``: the random subsets of the pair,
    drawn at its first scored matrix from the ids shared by its rows and columns, then reused for every layer. The
    sets are taken before unranked queries are left out (``drop_unranked``, over all scored columns, as in
    ``score_matrix``), so that non-converged pairs remove those queries only, never candidates or draws."""
    from engine.pipelines.retrieval import subset
    measure = where[3]
    full, rows, cols, dropped_a, dropped_b = drop_not_encoded(matrix, row_ids, col_ids, scored, measure=measure)
    pool = set(rows) & set(cols)
    full, rows, unranked = drop_unranked(full, rows)
    if not pool or not rows:
        return unmeasured(tuple(config.ks), excluded=len(rows)), dropped_a, dropped_b, unranked
    kept = kept_ids & pool
    if key not in draws:
        draws[key] = subset.size_matched_draws(pool, len(kept), config.subset_draws, config.subset_seed, *key)
    compared = subset.compare_subsets(full, rows, cols, kept, draws[key], ks=tuple(config.ks), ties=config.ties)
    n_ids = {"full": len(pool), "challenge": len(kept), "size_matched": len(kept)}
    comparison += subset.comparison_rows(*where, compared, n_ids)
    return compared["challenge"], dropped_a, dropped_b, unranked


def compute_scores(reader, config: RetrievalConfig, comparison: list | None = None):
    """Scores every stored pair of ``reader`` (an ``engine.stores.similarity.SimilarityReader``) in both directions.

    Returns (tuple of DirectedScore, tuple of missing (measure, lang_a, lang_b, layer)). With ``config.subset``,
    scores the challenge set and appends SUBSET_COLUMNS rows to ``comparison``.
    """
    if config.subset is not None:
        from engine.pipelines.challenge.run import read_kept

        comparison = [] if comparison is None else comparison
        kept_by_pair, draws = {}, {}
    measures = _select("measure", config.measures, reader.measures())
    layers = _select("layer", config.layers, reader.layers)
    scores, missing = [], []
    for measure in measures:
        pairs = [
            (a, b)
            for a, b in reader.pairs(measure)
            if config.langs is None or (a in config.langs and b in config.langs)
        ]
        if config.langs is not None and not pairs:
            raise RetrievalError(f"measure {measure!r} has no stored pair within languages {list(config.langs)}")
        if config.subset is not None:
            # Only the pairs the challenge set was built for: the others have no kept ids to score.
            for a, b in pairs:
                if (a, b) not in kept_by_pair:
                    kept_by_pair[a, b] = read_kept(config.subset, a, b, missing_ok=True)
            without = [f"{a}-{b}" for a, b in pairs if kept_by_pair[a, b] is None]
            pairs = [(a, b) for a, b in pairs if kept_by_pair[a, b] is not None]
            if not pairs:
                raise RetrievalError(
                    f"challenge set {config.subset!r} has no file for any pair of measure {measure!r} "
                    f"({', '.join(without)}); build them with python -m jobs.challenge --pairs ..."
                )
            if without:
                log.info("--subset: %d pairs have no challenge file and are not scored: %s", len(without), without)
        for a, b in pairs:
            directions = ((a, b), (b, a))
            done = {d: _done(reader, measure, *d) for d in directions}
            found = {d: [] for d in directions}
            # Both directions of a layer one after the other: where they share a stored matrix (symmetric measures),
            # the reader reads it once.
            for layer in layers:
                for query, searched in directions:
                    if layer not in done[query, searched]:
                        missing.append((measure, query, searched, layer))
                        continue
                    matrix, row_ids, col_ids = reader.matrix(measure, query, searched, layer)
                    scored = reader.scored(measure, query, searched, layer)
                    if config.subset is None:
                        metrics, dropped_a, dropped_b, unranked = score_matrix(
                            matrix,
                            row_ids,
                            col_ids,
                            scored=scored,
                            ks=tuple(config.ks),
                            ties=config.ties,
                            measure=measure,
                        )
                    else:
                        where = (query, searched, layer, measure)
                        metrics, dropped_a, dropped_b, unranked = score_subset(
                            matrix,
                            row_ids,
                            col_ids,
                            scored,
                            kept_by_pair[a, b],
                            draws,
                            (a, b),
                            config,
                            where,
                            comparison,
                        )
                    score = DirectedScore(query, searched, layer, measure, metrics, dropped_a, dropped_b, unranked)
                    found[query, searched].append(score)
            for d in directions:
                scores += found[d]
    if missing:
        log.warning("%d (measure, directed pair, layer) are not in the similarity store yet; skipped", len(missing))
    unranked = unranked_summary(scores)
    if unranked:
        log.warning("%s", unranked)
    unmeasured = unmeasured_pairs(scores)
    if unmeasured:
        log.warning(
            "%d directed pairs have no utterance id in common%s, so nothing was measured for them (NA in the CSV, "
            "blank in the figures): %s",
            len(unmeasured),
            "" if config.subset is None else " among the challenge set's kept ids",
            ", ".join(f"{m} {a}->{b}" for m, a, b in unmeasured),
        )
    return tuple(scores), tuple(missing)


def csv_bytes(scores: Sequence[DirectedScore]) -> bytes:
    """The ``retrieval.csv`` table: CSV_COLUMNS, one row per directed pair, layer, measure and metric."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in scores:
        for metric, value, random in s.values():
            m = s.metrics
            writer.writerow(
                [s.lang_a, s.lang_b, s.layer, s.measure, metric, _na(value), _na(random), m.queries, m.excluded]
                + [s.dropped_a, s.dropped_b, s.unranked]
            )
    return buf.getvalue().encode()


def _na(value: float):
    """NA for a metric that was not measured (no query with a partner), so that no reader takes it for 0."""
    return "NA" if math.isnan(value) else value


def unranked_summary(scores: Sequence[DirectedScore]) -> str:
    """A warning line on the queries left out because a score of theirs was not measured, per measure; "" if none."""
    by_measure: dict[str, list[int]] = {}
    for s in scores:
        if s.unranked:
            count = by_measure.setdefault(s.measure, [0, 0])
            count[0] += s.unranked
            count[1] += 1
    if not by_measure:
        return ""
    named = ", ".join(f"{m}: {n} in {d} (directed pair, layer)" for m, (n, d) in by_measure.items())
    empty = [
        f"{s.measure} {s.lang_a}->{s.lang_b} layer {s.layer}" for s in scores if s.unranked and not s.metrics.queries
    ]
    every = f"; every query unranked, so NA in the CSV: {', '.join(empty)}" if empty else ""
    return (
        f"queries left out because a score of theirs was not measured (NaN: Sinkhorn did not converge, listed as "
        f"'nonconverged' in the done markers), counted as 'unranked' in {CSV_NAME}: {named}{every}. To measure "
        "them, " + NAN_REMEDY
    )


def unmeasured_pairs(scores: Sequence[DirectedScore]) -> list[tuple[str, str, str]]:
    """(measure, query language, searched language) with no query that has a partner at any layer: no shared ids.
    Pairs with unranked queries are left to ``unranked_summary``, which names where every query was unranked."""
    measured = {(s.measure, s.lang_a, s.lang_b) for s in scores if s.metrics.queries or s.unranked}
    return sorted({(s.measure, s.lang_a, s.lang_b) for s in scores} - measured)


def pick_figure_layer(scores: Sequence[DirectedScore], asked: int | None) -> int | None:
    """``asked`` if scored, else the layer with the best mean R@k (the first k asked) of seqsim (or of the first
    measure)."""
    layers = sorted({s.layer for s in scores})
    if asked is not None:
        if asked not in layers:
            raise RetrievalError(f"figure layer {asked} was not scored; choose one of {layers}")
        return asked
    if not scores:
        return None
    measures = list(dict.fromkeys(s.measure for s in scores))
    measure = FIGURE_MEASURE if FIGURE_MEASURE in measures else measures[0]
    first_recall = scores[0].values()[0][0]
    means = {layer: value for layer, (value, _) in mean_over_pairs(scores, measure, first_recall).items()}
    return max(layers, key=lambda layer: (means.get(layer, -1.0), -layer))  # ties: the earlier layer


TINY_SET = 20  # a score resting on fewer queries than this is flagged: a few hits swing it by 0.05 or more


def rests_on(scores: Sequence[DirectedScore]) -> str:
    """What the scores rest on, for subtitles and reports: pairs and queries per directed pair."""
    measured = [s.metrics.queries for s in scores if s.metrics.queries]
    if not measured:
        return "no directed pair measured"
    pairs = len({(s.lang_a, s.lang_b) for s in scores if s.metrics.queries})
    low, high = min(measured), max(measured)
    return f"{pairs} directed pairs, n = {low if low == high else f'{low}-{high}'} queries each"


def tiny_scores(scores: Sequence[DirectedScore]) -> list[DirectedScore]:
    """Measured scores that rest on fewer than TINY_SET queries."""
    return [s for s in scores if 0 < s.metrics.queries < TINY_SET]


def _figures(scores: Sequence[DirectedScore], figure_layer: int, subtitle: str, top_layer: int) -> dict[str, bytes]:
    from engine import figures  # matplotlib is only needed here

    measures = list(dict.fromkeys(s.measure for s in scores))
    langs = sorted({s.lang_a for s in scores} | {s.lang_b for s in scores})
    index = {lang: i for i, lang in enumerate(langs)}
    first_k = next(iter(scores[0].metrics.recall))
    metric = f"R@{first_k}"
    grids = {m: np.full((len(langs), len(langs)), np.nan) for m in measures}
    curves: dict[str, dict[str, tuple[list[int], list[float], list[float]]]] = {m: {} for m in measures}
    for s in scores:
        if not s.metrics.queries:
            continue  # nothing measured: an empty heatmap cell and no curve, never a 0
        recall, random = s.metrics.recall[first_k], s.metrics.random_recall[first_k]
        if s.layer == figure_layer:
            grids[s.measure][index[s.lang_a], index[s.lang_b]] = recall
        layers, values, randoms = curves[s.measure].setdefault(f"{s.lang_a}\u2192{s.lang_b}", ([], [], []))
        layers.append(s.layer)
        values.append(recall)
        randoms.append(random)
    at = f"{metric} at layer {figure_layer}" + (" = L+1, the ln_post output" if figure_layer == top_layer else "")
    heatmap_scores = [s for s in scores if s.layer == figure_layer]
    return {
        HEATMAP_NAME: figures.heatmap_png(
            grids, langs, title=at, metric=metric, subtitle=f"{subtitle}\n{rests_on(heatmap_scores)}"
        ),
        BY_LAYER_NAME: figures.by_layer_png(curves, metric=metric, subtitle=f"{subtitle}\n{rests_on(scores)}"),
    }


def write_results(
    out: str, scores: Sequence[DirectedScore], figure_layer: int | None, subtitle: str = "", top_layer: int = -1
) -> tuple[str, list[str]]:
    """Writes the CSV and the figures under ``out``; returns their locations. ``subtitle``: the model and stores
    the figures name; ``top_layer``: L+1, named as the ln_post output."""
    _, kv = open_kvstore(out)
    root = out.rstrip("/") + "/"
    writes = {CSV_NAME: csv_bytes(scores)}
    if scores and figure_layer is not None:
        writes |= {FIGURES_DIR + name: png for name, png in _figures(scores, figure_layer, subtitle, top_layer).items()}
    write_all(kv, writes, out)
    paths = [root + key for key in writes]
    return paths[0], paths[1:]


def run_retrieval(config: RetrievalConfig, reader=None) -> RetrievalResult:
    """Scores, writes ``retrieval.csv`` and the figures, and returns everything (see the module docstring).

    ``reader``: an already open similarity store (notebooks, tests); default ``open_similarity(config.similarity)``.
    """
    out = resolve_out(config.similarity, config.out)
    if reader is None:
        reader = open_similarity(config.similarity)
    comparison: list = []
    scores, missing = compute_scores(reader, config, comparison)
    figure_layer = pick_figure_layer(scores, config.figure_layer)
    manifest = reader.manifest
    subtitle = f"{manifest['model_name']}; layer store {manifest['layer_store']}"
    csv_path, figure_paths = write_results(out, scores, figure_layer, subtitle, max(reader.layers))
    if config.subset is not None and comparison:
        from engine.pipelines.retrieval import subset
        _, kv = open_kvstore(out)
        metric = f"R@{config.ks[0]}"
        writes = {
            subset.SUBSET_CSV: subset.subset_csv_bytes(comparison),
            subset.SUBSET_FIGURE: subset.subset_figure(comparison, metric, f"{subtitle}; subset {config.subset}"),
        }
        write_all(kv, writes, out)
        figure_paths = [*figure_paths, *(out.rstrip("/") + "/" + k for k in writes)]
    return RetrievalResult(scores, out, csv_path, tuple(figure_paths), figure_layer, missing, tuple(comparison))
