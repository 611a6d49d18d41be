"""The word-level probe: do layers pair cross-lingual synonyms (same meaning, other sound) above near-homophones
(similar sound, other meaning)? After Choi et al. 2024, as 2505.19606 uses it.

Data: a layer store of single-word clips whose id is the word's concept (``words-demo``:
``engine.data.synth.words``), and relations between words (``engine.pipelines.probe.relations``): rows
``lang_a, word_a, lang_b, word_b, relation`` with relation one of ``RELATIONS``. Without a relations file they are
generated for every language pair of the store: synonym = the same concept id; near_homophone = for each word, the
word of another concept in the other language nearest by phone distance (``engine.text.phones``, both directions,
duplicates once); unrelated = for each word, a seeded random word of another concept that is not its near-homophone.
A word is found in the store by its transcription (case folded).

Word lists recorded per concept often have no transcription. A language without any is probed by id: its clips are
found by their id (the concept, case folded), which is also the word written for them in relations.csv. Concept
retrieval and synonyms need only the ids and run everywhere; near-homophones (phone distances), the unrelated pairs
drawn apart from them and the AUC need the words and are left out in every language pair with such a language: NA
rows with n 0, named once in the log and the summary (``left_out_line``). With ``--relations`` the file's words in
such a language are read as ids. Only a store with no transcription and no id shared by two languages is refused.

Per language pair, layer and measure (``MEASURES``: cosine of mean-pooled or centre frames, and SeqSim):

- ``mean_sim_<relation>``: mean similarity over that relation's word pairs;
- ``auc``: P(similarity of a synonym pair > that of a near-homophone pair), ties 1/2 (ROC AUC with synonyms positive);
- ``r@1``, ``mrr``: retrieval of the same concept id among all words of the other language, both directions
  (``kernels.metrics.retrieval_metrics``).

``value`` is the estimate on all pairs; ``low`` / ``high`` the 2.5 / 97.5 percentiles over ``seeds`` bootstrap
resamples (relation pairs with replacement; queries with replacement for r@1 and mrr). With the default 5 seeds
they are close to the min and max: a rough spread, not a calibrated interval.

Writes ``OUT/probe.csv`` (``PROBE_COLUMNS``), ``OUT/relations.csv`` (the relations used, generated or read) and
``OUT/figures/probe_by_layer.png`` (mean similarity per relation by layer, averaged over language pairs, a panel per
measure, bands from the bootstrap percentiles).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from engine import captions, figures
from engine.pipelines.probe.config import ProbeConfig, ProbeError
from engine.pipelines.probe.relations import (  # noqa: F401  (RELATION_COLUMNS: read as probe's by tests)
    RELATION_COLUMNS,
    RELATIONS,
    generate_relations,
    read_relations,
    relations_csv_bytes,
    synonym_relations,
)
from engine.runtime.runs import RunSummary, job_lease, progress_bar
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import csv_bytes
from kernels.metrics import retrieval_metrics
from kernels.pooling import center_frame_cosine_matrix, mean_pooled_cosine_matrix
from kernels.seqsim import seqsim_matrix

PROBE_COLUMNS = ("lang_a", "lang_b", "layer", "measure", "pooling", "metric", "value", "low", "high", "n", "seeds")
MEASURES = (("cosine", "mean"), ("cosine", "centre"), ("seqsim", "frames"))  # (measure, pooling)
YLABELS = {("cosine", "mean"): "cosine of mean-pooled word frames", ("cosine", "centre"): "cosine of the words' centre "
           "frames", ("seqsim", "frames"): "SeqSim of the words' frames"}  # fmt: skip
PROBE_CSV, RELATIONS_CSV, PROBE_FIGURE = "probe.csv", "relations.csv", "figures/probe_by_layer.png"
# A clip's transcription is a word when it has at most this many words (a compound written apart: "ice cream") and
# characters (for scripts written without spaces); a store whose transcriptions are mostly longer holds sentences
WORD_MAX_WORDS, WORD_MAX_CHARS = 3, 32

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProbeSummary(RunSummary):
    rows: list = dataclasses.field(default_factory=list)  # PROBE_COLUMNS tuples
    relations: list = dataclasses.field(default_factory=list)  # RELATION_COLUMNS tuples used
    outputs: list = dataclasses.field(default_factory=list)
    left_out: str = ""  # the parts not run for want of transcriptions, named (``left_out_line``); "" when none

    def report(self) -> str:
        lines = [f"probe: {len(self.relations)} word pairs, {len(self.rows)} rows; skipped: {self.n_skipped}"]
        lines += [f"  {self.left_out}"] if self.left_out else []
        lines += self.skip_lines()
        for measure, pooling in MEASURES:
            own = [r for r in self.rows if (r[3], r[4]) == (measure, pooling)]
            if not own:
                continue
            lines.append(f"{measure}/{pooling}: mean over the language pairs that measured each metric")
            lines.append("  layer " + " ".join(f"{m:>22}" for m in _report_metrics()))
            for layer in sorted({r[2] for r in own}):
                cells = []
                for metric in _report_metrics():
                    values = [r[6] for r in own if r[2] == layer and r[5] == metric and np.isfinite(r[6])]
                    cells.append(f"{np.mean(values):22.3f}" if values else f"{'NA':>22}")
                lines.append(f"  {layer:>5} " + " ".join(cells))
        return "\n".join(lines)


def _report_metrics():
    return [f"mean_sim_{r}" for r in RELATIONS] + ["auc", "r@1"]


# --- metrics (plain NumPy, so that tests can check them against scikit-learn) ----------------------------------------


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive score > a negative score) + 1/2 P(equal): the ROC AUC with positives as class 1. NaN if either
    side is empty."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    equal = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * equal) / (len(positive) * len(negative)))


def relation_metrics(sims: np.ndarray, pairs: dict[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """metric -> (value, n) from ``sims: f32[N_a, N_b]`` and ``pairs[relation]: i32[n, 2]`` (row, column) indices."""
    out = {}
    for relation in RELATIONS:
        idx = pairs.get(relation, np.zeros((0, 2), int))
        values = sims[idx[:, 0], idx[:, 1]] if len(idx) else np.zeros(0)
        out[f"mean_sim_{relation}"] = (float(values.mean()) if len(values) else float("nan"), len(values))
    syn, near = (pairs.get(r, np.zeros((0, 2), int)) for r in ("synonym", "near_homophone"))
    value = auc(sims[syn[:, 0], syn[:, 1]], sims[near[:, 0], near[:, 1]])
    out["auc"] = (value, len(syn) + len(near) if np.isfinite(value) else 0)  # n 0: not measured
    return out


def retrieval(sims: np.ndarray, ids_a: Sequence[str], ids_b: Sequence[str]) -> dict[str, tuple[float, int]]:
    """r@1 and mrr of rows retrieving columns of the same id."""
    m = retrieval_metrics(sims, list(ids_a), list(ids_b), ks=(1,))
    return {"r@1": (m.recall[1], m.queries), "mrr": (m.mrr, m.queries)}


def bootstrap(fn, sizes: dict[str, int], seeds: int, seed: int) -> list[dict]:
    """``fn(resample)`` for ``seeds`` resamples; ``resample[name]``: indices drawn with replacement from
    ``range(sizes[name])``."""
    rng = np.random.default_rng(seed)
    return [fn({k: rng.integers(0, n, n) if n else np.zeros(0, int) for k, n in sizes.items()}) for _ in range(seeds)]


# --- the store -------------------------------------------------------------------------------------------------------


def similarity_matrices(store, a: str, b: str, layer: int, ua: Sequence[int], ub: Sequence[int]) -> dict:
    """(measure, pooling) -> f32[len(ua), len(ub)] between utterances ``ua`` of ``a`` and ``ub`` of ``b``."""
    la, lb = store.lengths(a)[list(ua)], store.lengths(b)[list(ub)]
    sa, la = store.language_layer(a, layer, utterances=list(ua), frames=int(la.max()), dtype=np.float32)
    sb, lb = store.language_layer(b, layer, utterances=list(ub), frames=int(lb.max()), dtype=np.float32)
    return {
        ("cosine", "mean"): np.asarray(mean_pooled_cosine_matrix(sa, la, sb, lb)),
        ("cosine", "centre"): np.asarray(center_frame_cosine_matrix(sa, la, sb, lb)),
        ("seqsim", "frames"): np.asarray(seqsim_matrix(sa, la, sb, lb)),
    }


def transcriptions(store, lang: str) -> list[str | None]:
    """The transcription of each clip of ``lang``, stripped; None for a clip without one (also when the utterance
    table has no transcription column)."""
    table = store.utterances_table(lang)
    if "transcription" not in table.column_names:
        return [None] * table.num_rows
    return [t.strip() or None if t else None for t in table.column("transcription").to_pylist()]


class WordIndex(NamedTuple):
    """A language's encoded clips: store rows ``utterances``, their ``ids``, ``position`` (case-folded word -> index
    into them, the first clip of each word), ``words`` (per clip: its transcription or None) and ``transcribed``
    (the language has a transcription; where it has none, ``position`` is keyed by clip id, the concept)."""

    utterances: list[int]
    ids: list[str]
    position: dict[str, int]
    words: list[str | None]
    transcribed: bool


def word_index(store, lang: str, summary: RunSummary) -> WordIndex:
    """The ``WordIndex`` of ``lang``; a clip not yet encoded is skipped (``not_encoded``)."""
    texts = transcriptions(store, lang)
    transcribed = any(texts)
    done = store.lengths(lang) >= 1
    index = WordIndex([], [], {}, [], transcribed)
    for u, (uid, text) in enumerate(zip(store.utterances_table(lang).column("id").to_pylist(), texts, strict=True)):
        if not done[u]:
            summary.skip("not_encoded", lang, uid)
            continue
        key = text if transcribed else str(uid)
        if key and key.casefold() not in index.position:
            index.position[key.casefold()] = len(index.utterances)
        index.utterances.append(u)
        index.ids.append(uid)
        index.words.append(text)
    return index


def _spelled(index: WordIndex) -> list[tuple[str, str]]:
    """[(concept id, word as transcribed)] of the first encoded clip of each word; where the language has no
    transcription, the word is the clip id."""
    return [(index.ids[p], index.words[p] if index.transcribed else index.ids[p]) for p in index.position.values()]


def left_out_line(untranscribed: Sequence[str], pairs: Sequence[tuple[str, str]], generated: bool) -> str:
    """One line naming what the probe does not run for want of transcriptions in ``untranscribed``; "" if none."""
    if not untranscribed:
        return ""
    touched = sum(1 for p in pairs if set(p) & set(untranscribed))
    head = f"no transcriptions in {list(untranscribed)}"
    if not generated:
        return (
            f"{head}: a relation's word there is read as the clip id (the concept); a row naming no id there is "
            "skipped (not_a_clip_id)"
        )
    return (
        f"{head}: left out, in the {touched} language pairs with one, near-homophones (phone distances with "
        "espeak-ng), unrelated pairs (drawn apart from the near-homophones) and the AUC (NA); synonyms and concept "
        "retrieval (r@1, mrr) pair clips by id"
    )


def check_word_store(store, langs: Sequence[str], url: str, *, given_relations: bool = False) -> list[str]:
    """Refuses a store that is not of single-word clips, before any work: the probe finds words by transcription and
    pairs them by id, so on a sentence store (FLEURS, the demo set) it phonemises and compares every sentence with
    every other (a FLEURS store ran 10 min 51 s and wrote nothing) to measure nothing a word probe means. Reads only
    the utterance tables. With ``given_relations`` (--relations) the user names the pairs, so a store of longer
    clips is theirs to choose. A language without transcriptions (a word list recorded per concept) is no sentence
    store: the probe runs on its ids (``left_out_line``); returned, in ``langs`` order. Refused only when no language
    has a transcription and no clip id is shared by two languages: then there is neither word nor concept to pair."""
    what = f"store {url!r} ({captions.dataset_label(store.manifest.get('created'))})"
    need = "probe needs a store of single-word clips (id = concept, transcription = the word: --dataset words-demo)"
    untranscribed, seen, shared = [], set(), False
    for lang in langs:
        texts = [t for t in transcriptions(store, lang) if t]
        if not texts:
            untranscribed.append(lang)
        long = [t for t in texts if len(t.split()) > WORD_MAX_WORDS or len(t) > WORD_MAX_CHARS]
        if 2 * len(long) > len(texts) and not given_relations:
            example = long[0] if len(long[0]) <= 40 else long[0][:37] + "..."
            raise ProbeError(
                f"{need}; {what} holds sentences: {len(long)} of {len(texts)} {lang} transcriptions have over "
                f"{WORD_MAX_WORDS} words or {WORD_MAX_CHARS} characters, e.g. {example!r}"
            )
        ids = set(map(str, store.utterances_table(lang).column("id").to_pylist()))
        shared, seen = shared or bool(ids & seen), seen | ids
    if len(untranscribed) == len(langs) and not shared:
        raise ProbeError(
            f"{need}; {what} has no transcription in {list(langs)} and no clip id shared by two of them, so no word "
            "to find and no concept to pair"
        )
    return untranscribed


def run_probe(config: ProbeConfig, store=None) -> ProbeSummary:
    """Scores every language pair and layer, writes probe.csv, relations.csv and the figure (module docstring).
    Refuses a store of sentences before any work (``check_word_store``), and before the output's writer lease, which
    it holds for the run."""
    store = open_store(config.store) if store is None else store
    available = list(store.languages())
    unknown = sorted(set(config.langs or ()) - set(available))
    if unknown:
        raise ProbeError(f"the store has no language {unknown}; it has {available}")
    langs = [lang for lang in available if config.langs is None or lang in config.langs]
    layers = list(store.info.layers) if config.layers is None else list(config.layers)
    bad = sorted(set(layers) - set(store.info.layers))
    if bad:
        raise ProbeError(f"the store has no layer {bad}; it holds {list(store.info.layers)}")
    if len(langs) < 2:  # its pairs are of two languages: one alone wrote an empty probe.csv
        raise ProbeError(f"probe scores word pairs across two languages; the run has {langs} (--langs, or the store's)")
    check_word_store(store, langs, config.store, given_relations=config.relations is not None)
    given = None
    if config.relations is not None:  # read before the lease: a malformed file is named before anything is made
        with open(config.relations, encoding="utf-8") as f:
            given = read_relations(f.read(), config.relations)
    with job_lease(config, "probe"):
        return _probe(config, store, langs, layers, given)


def _probe(config: ProbeConfig, store, langs: list[str], layers: list[int], given: list | None) -> ProbeSummary:
    summary = ProbeSummary()
    index = {lang: word_index(store, lang, summary) for lang in langs}
    pairs = list(itertools.combinations(langs, 2))
    untranscribed = [lang for lang in langs if not index[lang].transcribed]
    summary.left_out = left_out_line(untranscribed, pairs, generated=config.relations is None)
    if summary.left_out:
        log.info("probe: %s", summary.left_out)
    if config.relations is None:
        # The store's spelling (de "Gift", not "gift"), as relations.csv and readers expect it.
        words = {lang: _spelled(index[lang]) for lang in langs}
        spoken = [p for p in pairs if not set(p) & set(untranscribed)]
        log.info("probe: relations of %d words in %d language pairs (phone distances with espeak-ng in %d)",
                 sum(map(len, words.values())), len(pairs), len(spoken))  # fmt: skip
        relations = generate_relations(words, spoken, config.seed)
        relations += [row for a, b in pairs if (a, b) not in spoken for row in synonym_relations(words, a, b)]
    else:
        relations = given
    used, by_pair = [], {}
    for row in relations:
        la, wa, lb, wb, relation = row
        if (la, lb) not in pairs and (lb, la) in pairs:
            la, wa, lb, wb = lb, wb, la, wa
        if (la, lb) not in pairs:
            summary.skip("language_not_in_store", la if la not in langs else lb, f"{wa}/{wb}")
            continue
        missing = [(lang, w) for lang, w in ((la, wa), (lb, wb)) if w.casefold() not in index[lang].position]
        for lang, w in missing:
            summary.skip("word_not_in_store" if index[lang].transcribed else "not_a_clip_id", lang, w)
        if missing:
            continue
        used.append((la, wa, lb, wb, relation))
        by_pair.setdefault((la, lb), {}).setdefault(relation, []).append(
            (index[la].position[wa.casefold()], index[lb].position[wb.casefold()])
        )
    summary.relations = used
    log.info("probe: %d word pairs in %d language pairs x %d layers, %d measures each",
             len(used), len(pairs), len(layers), len(MEASURES))  # fmt: skip
    bar = progress_bar(len(pairs) * len(layers), "probe", "pair-layer", config.run.progress)
    for a, b in pairs:
        rel = {r: np.array(v, int).reshape(-1, 2) for r, v in by_pair.get((a, b), {}).items()}
        (ua, ids_a), (ub, ids_b) = index[a][:2], index[b][:2]
        if not ua or not ub:
            bar.update(len(layers))
            continue
        for layer in layers:
            for (measure, pooling), sims in similarity_matrices(store, a, b, layer, ua, ub).items():
                summary.rows += _pair_rows(a, b, layer, measure, pooling, sims, rel, ids_a, ids_b, config)
            bar.update()
    bar.close()
    out = config.run.out
    _, kv = open_kvstore(out)
    writes = {PROBE_CSV: probe_csv_bytes(summary.rows), RELATIONS_CSV: relations_csv_bytes(used)}
    figure = probe_figure(summary.rows, captions.source_line(store.info.model_name, store.manifest.get("created")))
    if figure is not None:
        writes[PROBE_FIGURE] = figure
    write_outputs(kv, writes, out)
    summary.outputs = [out.rstrip("/") + "/" + k for k in writes]
    return summary


def _pair_rows(a, b, layer, measure, pooling, sims, rel, ids_a, ids_b, config) -> list[tuple]:
    rows = []
    sizes = {r: len(v) for r, v in rel.items()}
    point = relation_metrics(sims, rel)
    boot = bootstrap(lambda s: relation_metrics(sims, {r: rel[r][s[r]] for r in rel}), sizes, config.seeds, config.seed)
    for metric, (value, n) in point.items():
        rows.append(_row(a, b, layer, measure, pooling, metric, value, [d[metric][0] for d in boot], n, config.seeds))
    for q, s, matrix, ids_q, ids_s in ((a, b, sims, ids_a, ids_b), (b, a, sims.T, ids_b, ids_a)):
        point = retrieval(matrix, ids_q, ids_s)

        def resampled(s, matrix=matrix, ids_q=ids_q, ids_s=ids_s):
            return retrieval(matrix[s["q"]], [ids_q[i] for i in s["q"]], ids_s)

        boot = bootstrap(resampled, {"q": len(ids_q)}, config.seeds, config.seed)
        for metric, (value, n) in point.items():
            rows.append(
                _row(q, s, layer, measure, pooling, metric, value, [d[metric][0] for d in boot], n, config.seeds)
            )
    return rows


def _row(a, b, layer, measure, pooling, metric, value, draws, n, seeds) -> tuple:
    draws = np.array(draws, float)
    finite = draws[np.isfinite(draws)]
    low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan)
    return (a, b, layer, measure, pooling, metric, float(value), float(low), float(high), int(n), seeds)


def probe_csv_bytes(rows: Sequence[tuple]) -> bytes:
    """``probe.csv``: PROBE_COLUMNS, NA for a value that is not finite."""
    return csv_bytes(
        PROBE_COLUMNS, (("NA" if isinstance(x, float) and not np.isfinite(x) else x for x in r) for r in rows)
    )


def probe_figure(rows: Sequence[tuple], subtitle: str = "") -> bytes | None:
    """PNG: mean similarity per relation against layer, a panel per (measure, pooling), averaged over language
    pairs, with a band between the averaged bootstrap percentiles. ``subtitle``: the model and dataset
    (``engine.captions``), to which the language pairs, the word pairs per relation and the relations not measured
    anywhere (no transcriptions: ``left_out_line``) are added. None when no word pair was measured: no blank figure."""
    sims = [r for r in rows if r[5].startswith("mean_sim_") and r[9]]
    if not sims:
        return None
    fig = figures.Figure(figsize=(4.3 * len(MEASURES), 3.4))
    axes = fig.subplots(1, len(MEASURES), squeeze=False)[0]
    for ax, (measure, pooling) in zip(axes, MEASURES, strict=True):
        for relation in RELATIONS:
            own = [r for r in rows if (r[3], r[4], r[5]) == (measure, pooling, f"mean_sim_{relation}") and r[9]]
            layers = sorted({r[2] for r in own})
            if not layers:
                continue
            mean = [np.nanmean([r[6] for r in own if r[2] == layer]) for layer in layers]
            low = [np.nanmean([r[7] for r in own if r[2] == layer]) for layer in layers]
            high = [np.nanmean([r[8] for r in own if r[2] == layer]) for layer in layers]
            line = ax.plot(layers, mean, "-o", markersize=3, label=relation.replace("_", "-"))
            ax.fill_between(layers, low, high, alpha=0.2, color=line[0].get_color())
        ax.set_title(f"{measure} ({pooling})", fontsize=9)
        ax.set_xlabel(figures.LAYER_LABEL, fontsize=7)
        # Each panel its own label: the measures differ (a cosine of pooled frames, SeqSim over frame pairs).
        ax.set_ylabel(YLABELS[measure, pooling], fontsize=7)
        ax.xaxis.set_major_locator(figures.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    pairs = len({(r[0], r[1]) for r in sims})
    n = (
        f"{pairs} language pair{'' if pairs == 1 else 's'}, "
        f"n = {captions.count_range([r[9] for r in sims], 'word pairs per relation and pair')}"
    )
    absent = [r.replace("_", "-") for r in RELATIONS if not any(row[5] == f"mean_sim_{r}" for row in sims)]
    absent_line = f"not measured: {', '.join(absent)}" if absent else ""
    title = "word probe: similarity per relation by layer (bands: bootstrap 2.5-97.5%)"
    figures.set_title(fig, title, "; ".join(p for p in (subtitle, n, absent_line) if p), fontsize=9)
    fig.tight_layout()
    return figures._png(fig)
