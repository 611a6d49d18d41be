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
    OUT/asymmetry.csv                    per stored pair, layer and measure: R@1 a -> b against b -> a on the ids
                                         scored both ways, with an exact sign test (``asymmetry``)
    OUT/figures/retrieval_asymmetry.png  that asymmetry against layer, a line per pair, p < 0.05 marked

``OUT`` is any TensorStore kvstore location; it defaults to the similarity store itself when that is local.

With ``subset`` (a challenge-set folder from ``jobs.challenge``), queries and candidates of each pair are restricted
to the pair's kept ids, so ``retrieval.csv`` scores the challenge set (its ``random`` is 1/N_kept for R@1). As a
smaller pool alone raises R@1, it also writes ``OUT/subset_comparison.csv`` (``engine.pipelines.retrieval.subset``
SUBSET_COLUMNS): the full set, the challenge set and ``subset_draws`` seeded random subsets of the full set with as
many ids as were kept (mean and 95% interval), and ``OUT/figures/subset_by_layer.png``.

The room: ``scores`` scores one matrix (dropped, unranked, R@k and MRR, per-id hits at rank 1), ``output`` writes the
CSV and the figures, ``asymmetry`` compares each pair's two directions, ``subset`` is the challenge-set path; this
module walks the store and reports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from engine import captions
from engine.data.pairing import HOW_IDS_ARE_MADE
from engine.errors import BabelgridError
from engine.listing import chosen
from engine.pipelines.retrieval import asymmetry, delta, subset
from engine.pipelines.retrieval.config import RetrievalConfig, RetrievalError
from engine.pipelines.retrieval.output import CSV_NAME, TINY_SET, pick_figure_layer, tiny_scores, write_results
from engine.pipelines.stages.retrieval import (
    DirectedScore,
    mean_over_pairs,
    score_matrix,
)
from engine.runtime.options import canonical_location
from engine.runtime.runs import inputs_settled, writer_lease
from engine.stores.challenge import check_built_on, read_kept
from engine.stores.integrity import DIGEST_SUFFIX, write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import json_bytes
from engine.stores.similarity import SimilarityError, open_similarity

log = logging.getLogger(__name__)
SOURCE = "retrieval.json"  # in an --out of its own: the similarity store scored and its layer store

NAN_REMEDY = (
    "rerun python -m jobs.seqsim into the same --out with a larger --ot_iterations or --ot_epsilon: it recomputes "
    "those layers (their markers' options differ)"
)


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
    baseline_rows: tuple[tuple, ...] = ()  # with a baseline: delta.DELTA_COLUMNS rows
    asymmetry: tuple[asymmetry.Asymmetry, ...] = ()  # asymmetry.csv's rows: each stored pair's two directions

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
        lines.append(asymmetry.asymmetry_report(self.asymmetry, self.out))
        if self.missing:
            lines.append(
                f"{len(self.missing)} (measure, directed pair, layer) not in the similarity store yet, skipped"
            )
        trivial = sorted({k for s in self.scores for k, r in s.metrics.random_recall.items() if r == 1.0})
        if trivial:  # a pair with 3 candidates printed R@5 = R@10 = 1.000 on every layer (newcomer probe)
            n = sum(any(s.metrics.random_recall.get(k) == 1.0 for k in trivial) for s in self.scores)
            lines.append(f"R@{', R@'.join(map(str, trivial))}: {n} scores searched no more candidates than k, so they "
                         "are 1 by construction, as is their random baseline: no information")  # fmt: skip
        tiny = tiny_scores(self.scores)
        if tiny:
            least = min(tiny, key=lambda s: s.metrics.queries)
            fewest = f"{least.metrics.queries}, {least.measure} {least.lang_a}->{least.lang_b}"
            lines.append(
                f"WARNING: {len(tiny)} scores rest on fewer than {TINY_SET} queries (the fewest: {fewest}); each "
                "query moves R@k by 1/n, so read them as anecdotes"
            )
        if self.baseline_rows:
            lines.append(delta.delta_report(self.baseline_rows))
        unranked = unranked_summary(self.scores)
        if unranked:
            lines.append(f"WARNING: {unranked}")
        unmeasured = unmeasured_pairs(self.scores)
        if unmeasured:
            named = ", ".join(f"{m} {a}->{b}" for m, a, b in unmeasured)
            lines.append(f"not measured (no shared ids; NA in the CSV): {named}")
        return "\n".join(lines)


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


def _done(reader, measure: str, query: str, searched: str) -> set[int] | None:
    """Layers whose (query, searched) matrix is complete; None when that direction is not stored at all (a
    directional measure such as ``seqsim_a2b`` answers the reverse direction only if ``seqsim_b2a`` was computed
    too)."""
    try:
        return set(reader.done(measure, query, searched))
    except SimilarityError:
        return None


def _refuse_unfinished(planned, layers, config: RetrievalConfig, url: str) -> None:
    """Refuses a store whose seqsim run has not finished (a layer done for some stored pairs of a measure and not for
    others: a run that stopped), unless ``--allow_partial``: the table's means and the figure layer would rest on
    other pairs at each layer, and the CSV would lack their rows. A layer no pair has is not asked of any (seqsim
    --layers)."""
    unfinished, total = [], 0
    for measure, _, done in planned:
        stored = [(d, have) for pair in done.values() for d, have in pair.items() if have is not None]
        asked = set().union(*(have for _, have in stored)) & set(layers)
        total += len(asked) * len(stored)
        unfinished += [(measure, *d, layer) for d, have in stored for layer in sorted(asked - have)]
    if unfinished and not config.allow_partial:
        shown = ", ".join(f"{m} {a}->{b} layer {layer}" for m, a, b, layer in unfinished[:3])
        raise RetrievalError(
            f"{len(unfinished)} of {total} (measure, directed pair, layer) of {url!r} are not computed yet ({shown}"
            f"{', ...' if len(unfinished) > 3 else ''}): its seqsim run stopped before them. Rerun seqsim with the "
            "same flags to finish it, or pass --allow_partial to score what is there (the rest is named, not "
            "scored). Nothing was written"
        )


def compute_scores(reader, config: RetrievalConfig, comparison: list | None = None):
    """Scores every stored pair of ``reader`` (an ``engine.stores.similarity.SimilarityReader``) in both directions.

    Returns (tuple of DirectedScore, tuple of missing (measure, lang_a, lang_b, layer)). With ``config.subset``,
    scores the challenge set and appends SUBSET_COLUMNS rows to ``comparison``.
    """
    if config.subset is not None:
        comparison = [] if comparison is None else comparison
        kept_by_pair, draws = {}, {}
    measures = chosen("measure", config.measures, reader.measures(), RetrievalError, "the similarity store")
    layers = chosen("layer", config.layers, reader.layers, RetrievalError, "the similarity store")
    scores, missing, planned = [], [], []
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
        done = {(a, b): {d: _done(reader, measure, *d) for d in ((a, b), (b, a))} for a, b in pairs}
        planned.append((measure, pairs, done))
    _refuse_unfinished(planned, layers, config, reader.url)
    for measure, pairs, done_by_pair in planned:
        # A layer no pair of the measure has done was not asked of the seqsim run (its --layers): not "missing"
        computed = set().union(*(have for pair in done_by_pair.values() for have in pair.values() if have))
        for a, b in pairs:
            directions = ((a, b), (b, a))
            done = {d: done_by_pair[a, b][d] or set() for d in directions}
            found = {d: [] for d in directions}
            # Both directions of a layer one after the other: where they share a stored matrix (symmetric measures),
            # the reader reads it once.
            for layer in layers:
                for query, searched in directions:
                    if layer not in done[query, searched]:
                        if layer in computed:
                            missing.append((measure, query, searched, layer))
                        continue
                    matrix, row_ids, col_ids = reader.matrix(measure, query, searched, layer)
                    scored = reader.scored(measure, query, searched, layer)
                    if config.subset is None:
                        metrics, dropped_a, dropped_b, unranked, firsts = score_matrix(
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
                        metrics, dropped_a, dropped_b, unranked, firsts = subset.score_subset(
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
                    score = DirectedScore(
                        query, searched, layer, measure, metrics, dropped_a, dropped_b, unranked, firsts
                    )
                    found[query, searched].append(score)
            for d in directions:
                scores += found[d]
    if missing:
        log.warning("%d (measure, directed pair, layer) are not in the similarity store %s yet; skipped", len(missing),
                    reader.url)  # fmt: skip
    unranked = unranked_summary(scores)
    if unranked:
        log.warning("%s", unranked)
    unmeasured = unmeasured_pairs(scores)
    if unmeasured:
        log.warning(
            "%d (measure, directed pair) have no utterance id in common%s, so nothing was measured for them (NA in "
            "the CSV, blank in the figures): %s",
            len(unmeasured),
            "" if config.subset is None else " among the challenge set's kept ids",
            ", ".join(f"{m} {a}->{b}" for m, a, b in unmeasured),
        )
    return tuple(scores), tuple(missing)


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


def figure_subtitle(manifest: dict) -> str:
    """What a figure names: the model and the dataset the layer store was encoded from (never a machine's path)."""
    try:
        created = open_store(manifest["layer_store"]).manifest.get("created", {})
    except BabelgridError:  # the layer store moved or is unreachable: the similarity store alone is enough here
        created = {}
    return captions.source_line(manifest["model_name"], created)


def run_retrieval(config: RetrievalConfig, reader=None) -> RetrievalResult:
    """Scores, writes ``retrieval.csv`` and the figures, and returns everything (see the module docstring).

    ``reader``: an already open similarity store (notebooks, tests); default ``open_similarity(config.similarity)``.
    """
    out = resolve_out(config.similarity, config.run.out)
    inputs_settled(config, "retrieval")  # a similarity store still being computed is refused, not scored in part
    if reader is None:
        reader = open_similarity(config.similarity)
    baseline = check_request(config, reader)
    with writer_lease(out, "retrieval", config.run.break_lease):  # one writer of OUT: a second retrieval is refused
        return _retrieval(config, reader, out, baseline)


def check_request(config: RetrievalConfig, reader):
    """Refuses, from the similarity store's listing and ids alone, what the scoring would refuse after reading every
    matrix (or, for --baseline, after writing retrieval.csv): measures, layers, --figure_layer and --langs the store
    does not hold, a --subset folder with no file for a pair, pairs of no shared utterance id, a --baseline of another
    grid. Returns the baseline's reader (None without one)."""
    measures = chosen("measure", config.measures, reader.measures(), RetrievalError, "the similarity store")
    layers = chosen("layer", config.layers, reader.layers, RetrievalError, "the similarity store")
    if config.figure_layer is not None and config.figure_layer not in layers:
        raise RetrievalError(f"figure layer {config.figure_layer} is not scored; choose one of {list(layers)}")
    shared = False
    if config.subset is not None:  # a set judged on other sentences under the same ids
        check_built_on(config.subset, reader.manifest, RetrievalError)
    if config.langs is not None:  # a typo ("fr_fr") would otherwise drop a language without a word
        stored = {lang for measure in measures for pair in reader.pairs(measure) for lang in pair}
        unknown = sorted(set(config.langs) - stored)
        if unknown:
            raise RetrievalError(f"--langs: {unknown} not in the similarity store {config.similarity!r} (for the "
                                 f"measures asked), which has {sorted(stored)}. Nothing was written")  # fmt: skip
    for measure in measures:
        pairs = [(a, b) for a, b in reader.pairs(measure) if config.langs is None or {a, b} <= set(config.langs)]
        if config.langs is not None and not pairs:
            raise RetrievalError(f"measure {measure!r} has no stored pair within languages {list(config.langs)}")
        if config.subset is not None:
            without = [f"{a}-{b}" for a, b in pairs if read_kept(config.subset, a, b, missing_ok=True) is None]
            if len(without) == len(pairs):
                raise RetrievalError(
                    f"challenge set {config.subset!r} has no file for any pair of measure {measure!r} "
                    f"({', '.join(without)}); build them with python -m jobs.challenge --pairs ..."
                )
        for a, b in pairs if not shared else ():  # one pair with a shared id is enough: few ids.json are read
            ids = reader.ids(measure, a, b) or {}
            shared = bool(set(ids.get("row_ids", ())) & set(ids.get("col_ids", ())))
            if shared:
                break
    if not shared:
        raise RetrievalError(
            f"no directed pair of {config.similarity!r} has an utterance id in common, so there is nothing to "
            f"retrieve: {HOW_IDS_ARE_MADE}. Nothing was written"
        )
    if config.baseline is None:
        return None
    baseline = open_similarity(config.baseline)
    delta.check_baseline(reader.manifest, baseline.manifest, config.similarity, config.baseline)
    return baseline


def _retrieval(config: RetrievalConfig, reader, out: str, baseline) -> RetrievalResult:
    comparison: list = []
    scores, missing = compute_scores(reader, config, comparison)
    if scores and not any(s.metrics.queries for s in scores):
        raise RetrievalError(
            f"no directed pair of {config.similarity!r} has an utterance id in common, so there is nothing to "
            f"retrieve: {HOW_IDS_ARE_MADE}. Nothing was written"
        )
    figure_layer = pick_figure_layer(scores, config.figure_layer)
    subtitle = figure_subtitle(reader.manifest)
    csv_path, figure_paths = write_results(out, scores, figure_layer, subtitle, max(reader.layers))
    asymmetry_rows = asymmetry.asymmetry_rows(scores)
    writes = asymmetry.asymmetry_writes(asymmetry_rows, subtitle)
    if canonical_location(out) != canonical_location(config.similarity):  # a folder of its own: what it scored
        source = {k: reader.manifest.get(k) for k in ("layer_store", "layer_store_identity")}
        writes[SOURCE] = json_bytes({"format": "babelgrid-retrieval", "similarity": config.similarity, **source})
    write_outputs(open_kvstore(out)[1], writes, out)
    figure_paths = [*figure_paths, *(out.rstrip("/") + "/" + k for k in writes if k.endswith(".png"))]
    # what an earlier run with --subset or --baseline wrote here, which this one does not: stale beside its numbers
    stale = [*([] if config.subset else [subset.SUBSET_CSV, subset.SUBSET_FIGURE]),
             *([] if baseline else [delta.DELTA_CSV, delta.DELTA_FIGURE])]  # fmt: skip
    kv = open_kvstore(out)[1]
    for key in (k for name in stale for k in (name, name + DIGEST_SUFFIX)):
        kv.write(key, None).result()  # None deletes; absent: nothing
    if config.subset is not None and comparison:
        _, kv = open_kvstore(out)
        metric = f"R@{config.ks[0]}"
        writes = {
            subset.SUBSET_CSV: subset.subset_csv_bytes(comparison),
            subset.SUBSET_FIGURE: subset.subset_figure(comparison, metric, f"{subtitle}; subset {config.subset}"),
        }
        write_outputs(kv, writes, out)
        figure_paths = [*figure_paths, *(out.rstrip("/") + "/" + k for k in writes)]
    baseline_rows: list = []
    if baseline is not None:  # opened and checked before the lease (check_request)
        baseline_scores, _ = compute_scores(baseline, config)
        transforms = (delta.settings_label(m) for m in (reader.manifest, baseline.manifest))
        baseline_rows = delta.delta_rows(scores, baseline_scores, *transforms)
        writes = {delta.DELTA_CSV: delta.delta_csv(baseline_rows)}
        if baseline_rows:
            writes[delta.DELTA_FIGURE] = delta.delta_figure(baseline_rows, subtitle)
        write_outputs(open_kvstore(out)[1], writes, out)
        figure_paths = [*figure_paths, *(out.rstrip("/") + "/" + k for k in writes if k.endswith(".png"))]
    return RetrievalResult(scores, out, csv_path, tuple(figure_paths), figure_layer, missing, tuple(comparison),
                           tuple(baseline_rows), tuple(asymmetry_rows))  # fmt: skip
