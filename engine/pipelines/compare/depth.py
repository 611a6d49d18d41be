"""Retrieval on a common depth axis, and the paper's table of full-set against challenge-set R@1.

Depth is a model's layer index over its last one, ``layer / (n_audio_layer + 1)`` in babelgrid's indexing (0 = conv
stem, L + 1 = ``ln_post``), so that models of different depths share one axis from 0 to 1.

Each model's retrieval comes from one of two places:
- a retrieval output folder (``jobs.retrieval --out``): its ``retrieval.csv`` rows of one measure, and its
  ``subset_comparison.csv`` (written with ``--subset``) for the challenge table, their language codes (the store's)
  renamed to the comparison's names (the first store's codes, ``compare.languages``);
- else computed here from the layer store: cosine of mean-pooled states (the ``mean`` measure of ``jobs.seqsim``),
  every directed pair of the languages, scored by ``kernels.metrics.retrieval_metrics``; with a challenge folder
  (``jobs.challenge --out``), also on each pair's kept ids.

``pooled`` rows (``lang_a = lang_b = all``) are the unweighted mean over the directed pairs that have queries, as in
``jobs.retrieval``'s report; their ``n`` is the sum of the pairs' queries.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from engine.pipelines.compare.config import CompareError
from engine.pipelines.compare.layers import ALL
from engine.pipelines.stages.retrieval import restrict
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore
from engine.stores.records import csv_cell
from kernels.metrics import retrieval_metrics
from kernels.pooling import cosine_matrix

log = logging.getLogger(__name__)

DEPTH_COLUMNS = (
    "model",
    "layer",  # babelgrid layer index: 0 = conv stem, 1..L = blocks, L+1 = ln_post
    "depth",  # layer / (L + 1): 0 = conv stem, 1 = ln_post
    "lang_a",  # query language, `all` for the mean over directed pairs
    "lang_b",  # searched language
    "measure",  # the similarity measure ranked (mean = cosine of mean-pooled states when computed here)
    "metric",  # R@1 or MRR
    "value",
    "random",  # expectation under uniformly random rankings
    "n",  # queries scored (pooled: summed over directed pairs)
)
CHALLENGE_COLUMNS = (
    "model",
    "layer",
    "depth",
    "lang_a",
    "lang_b",
    "set",  # full (every shared id) or challenge (the challenge job's kept ids)
    "value",  # R@1
    "random",
    "n",  # queries scored (read from a retrieval folder's subset_comparison.csv: its distinct ids)
)
METRICS = ("R@1", "MRR")


def depth_of(layer: int, n_audio_layer) -> float:
    """``layer / (L + 1)`` for ``n_audio_layer`` L, or the family's rule (``Family.store_depth``) when given that."""
    return n_audio_layer(layer) if callable(n_audio_layer) else layer / (n_audio_layer + 1)


def _metric_rows(model, layer, depth, a, b, measure, m) -> list[tuple]:
    values = {"R@1": (m.recall[1], m.random_recall[1]), "MRR": (m.mrr, m.random_mrr)}
    return [(model, layer, depth, a, b, measure, k, *values[k], m.queries) for k in METRICS]


def computed_rows(
    model: str,
    n_audio_layer: int | Callable[[int], float],
    layers: Sequence[int],
    langs: Sequence[str],
    pooled: Callable[[str, int], tuple[np.ndarray, list[str]]],
    kept: Callable[[str, str], set[str] | None] | None = None,
) -> tuple[list[tuple], list[tuple]]:
    """(DEPTH_COLUMNS rows, CHALLENGE_COLUMNS rows) from ``pooled(lang, layer) -> (f32[n, embed], ids)``.
    ``kept(a, b)``: the challenge set's kept ids of a pair (None: no challenge set for it)."""
    depth_rows, challenge_rows, unshared = [], [], set()
    for layer in layers:
        depth = depth_of(layer, n_audio_layer)
        states = {lang: pooled(lang, layer) for lang in langs}
        for a in langs:
            for b in langs:
                if a == b:
                    continue
                scores = np.asarray(cosine_matrix(states[a][0], states[b][0]))
                full = retrieval_metrics(scores, states[a][1], states[b][1], ks=(1,))
                if full.queries:
                    depth_rows += _metric_rows(model, layer, depth, a, b, "mean", full)
                else:
                    unshared.add(f"{a}-{b}" if a < b else f"{b}-{a}")
                ids = kept(a, b) if kept is not None else None
                if ids is None or not full.queries:
                    continue
                sub = retrieval_metrics(*restrict(scores, states[a][1], states[b][1], ids), ks=(1,))
                for name, m in (("full", full), ("challenge", sub)):
                    value = m.recall[1] if m.queries else float("nan")
                    challenge_rows.append((model, layer, depth, a, b, name, value, m.random_recall[1], m.queries))
    if unshared:  # by_depth.csv came out as its header alone, without a word
        log.warning("%s: no utterance id shared by %s: retrieval by depth (a query's translation is the utterance of "
                    "its id) has no rows for them", model, ", ".join(sorted(unshared)))  # fmt: skip
    return depth_rows, challenge_rows


def _read_csv(folder: str, name: str) -> list[dict] | None:
    _, kv = open_kvstore(folder)
    data = read_output(kv, name, folder, fix=repair_hint(folder, "retrieval"))
    return None if data is None else list(csv.DictReader(io.StringIO(data.decode())))


def _renamed(rows: list[dict] | None, rename: Mapping[str, str] | None) -> list[dict] | None:
    """``rows`` with their ``lang_a`` and ``lang_b`` codes renamed by ``rename`` (the others as they are)."""
    if rows is None or not rename:
        return rows
    return [{**r, **{k: rename.get(r[k], r[k]) for k in ("lang_a", "lang_b")}} for r in rows]


def _number(text: str) -> float:
    return float("nan") if text in ("", "NA") else float(text)


def read_rows(
    model: str,
    n_audio_layer: int | Callable[[int], float],
    folder: str,
    measure: str,
    rename: Mapping[str, str] | None = None,
) -> tuple[list[tuple], list[tuple]]:
    """The same rows from a retrieval output folder (``retrieval.csv``, ``subset_comparison.csv`` if there).
    ``rename``: the folder's language codes -> the names the outputs give them (the others are kept as they are)."""
    rows = _renamed(_read_csv(folder, "retrieval.csv"), rename)
    if rows is None:
        raise CompareError(f"{folder!r} has no retrieval.csv: pass the --out folder of jobs.retrieval for {model}")
    measures = sorted({r["measure"] for r in rows})
    if measure not in measures:
        raise CompareError(f"{folder}/retrieval.csv has no measure {measure!r}; it has {measures}")
    depth_rows = [
        (model, int(r["layer"]), depth_of(int(r["layer"]), n_audio_layer), r["lang_a"], r["lang_b"], measure)
        + (r["metric"], _number(r["value"]), _number(r["random"]), int(r["queries"]))
        for r in rows
        if r["measure"] == measure and r["metric"] in METRICS and int(r["queries"])
    ]
    challenge_rows = [
        (model, int(r["layer"]), depth_of(int(r["layer"]), n_audio_layer), r["lang_a"], r["lang_b"], r["set"])
        + (_number(r["value"]), _number(r["random"]), int(r["ids"]))
        for r in _renamed(_read_csv(folder, "subset_comparison.csv"), rename) or []
        if r["measure"] == measure and r["metric"] == "R@1" and r["set"] in ("full", "challenge")
    ]
    return depth_rows, challenge_rows


def pooled_rows(depth_rows: Sequence[tuple]) -> list[tuple]:
    """The ``all`` rows: per (model, layer, measure, metric) the mean over directed pairs, n summed."""
    groups: dict[tuple, list[tuple]] = {}
    for r in depth_rows:
        groups.setdefault((r[0], r[1], r[2], r[5], r[6]), []).append(r)
    return [
        (model, layer, depth, ALL, ALL, measure, metric)
        + (float(np.mean([r[7] for r in rs])), float(np.mean([r[8] for r in rs])), sum(r[9] for r in rs))
        for (model, layer, depth, measure, metric), rs in groups.items()
    ]


def challenge_table(challenge_rows: Sequence[tuple]) -> list[tuple]:
    """The paper's table: per (model, layer, set) the mean R@1 over the pairs with a challenge set that has
    queries; n summed. The full set is averaged over the same pairs as the challenge set."""
    measured = {(r[0], r[1], r[3], r[4]) for r in challenge_rows if r[5] == "challenge" and r[8]}
    groups: dict[tuple, list[tuple]] = {}
    for r in challenge_rows:
        if (r[0], r[1], r[3], r[4]) in measured:
            groups.setdefault((r[0], r[1], r[2], r[5]), []).append(r)
    return [
        (model, layer, depth, ALL, ALL, name)
        + (float(np.mean([r[6] for r in rs])), float(np.mean([r[7] for r in rs])), sum(r[8] for r in rs))
        for (model, layer, depth, name), rs in sorted(groups.items())
    ]


def csv_bytes(columns: Sequence[str], rows: Sequence[tuple]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [csv_cell(v) for v in row]  # full precision, a NumPy float as a float
        writer.writerow(["NA" if isinstance(v, float) and np.isnan(v) else v for v in cells])
    return buf.getvalue().encode()
