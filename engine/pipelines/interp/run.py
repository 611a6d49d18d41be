"""SeqSimInterp (arXiv 2505.19606): which words carry cross-lingual alignment, matched by meaning or by sound
(``jobs/interp.py``).

For each language pair (a, b), each utterance pair (the parallel one: same id; with ``retrieved=k`` also each
query's top-k candidates of a similarity store at the same layer), each layer and pooling: every word (times from
the align job) is embedded from the encoder frames of its span (``kernels.wordalign``), and mutual best cosine
matches are the word pairs. With ``alignment="ot"`` (issue 17) the pairs are instead the links of the entropic
optimal-transport plan between the words (``kernels.wordalign.word_plan``, ott-jax): every (a_i, b_j) carrying at
least ``ot_mass`` of the smaller word's mass, so one word may link to several; the mutual best pairs are kept beside
them (column ``mutual``) for the comparison in the summary. Each pair gets

- ``text_similarity``: cosine of the two words under a multilingual text encoder (``engine.text.encoders``),
  NA where a language is not covered;
- ``phone_distance``: normalised phone feature edit distance of their IPA (``engine.text.phones``);
- a paired random baseline: for the pair (a_i, b_j), a random word b_k of the same utterance pair, k != j, drawn
  with a seeded RNG per (languages, layer, pooling, utterance pair), with the same two measures.

With ``standardise="layer"`` the cosines (and OT costs) are those of z-scored states: per (language pair, layer),
the mean and std of each embedding dimension over every valid frame (``[0, n_frames)``) of every utterance the unit
reads, both languages, each utterance once (``kernels.wordalign.layer_standardisation``); the default ``"none"`` is
the paper's plain cosine.

The summary compares matched (mutual best pairs, or OT links with ``alignment="ot"``) with random by
``scipy.stats.ttest_rel`` over the parallel pairs (rank 0) whose two values are both defined; with OT it also counts
one-to-many links and gives the means of OT-only links beside those of mutual best pairs.

Output (``OUT`` a local path or a TensorStore kvstore URL)::

    OUT/interp.json                          settings of the run; a resumed run must match them
    OUT/<a>__<b>/parts/layer<NN>.parquet     the pairs of one (language pair, layer): the unit of resume
    OUT/<a>__<b>/pairs.parquet               all layers (PAIR_COLUMNS), rebuilt from the parts at the end
    OUT/summary.csv                          SUMMARY_COLUMNS, one row per (a, b, layer, pooling)
    OUT/<a>__<b>/text_similarity.png         matched vs random text similarity by layer
    OUT/<a>__<b>/phone_distance.png          matched vs random phone distance by layer

Resume: a part is kept when its Parquet metadata names the same utterance pairs; the rest is rebuilt.
Single-process: the work is small next to encoding (one kernel call per block of utterance pairs).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.data.audio import ENCODER_FRAMES_PER_SECOND
from engine.errors import BabelgridError
from engine.pipelines.similarity.run import resolve_pairs
from engine.runtime.runs import RunSummary, check_choice, progress_bar, writer_lease
from engine.stores.kv import create_or_compare, open_kvstore, read_value, write_value
from engine.stores.reader import open_store
from engine.stores.words import read_words
from kernels.ot import OtConfig
from kernels.wordalign import (
    OT_MASS,
    POOLINGS,
    WORD_WEIGHTS,
    WordPair,
    Words,
    check_spans,
    layer_standardisation,
    plan_links,
    word_plan_pairs,
    wordalign_pairs,
)

FORMAT_NAME = "babelgrid-interp"
FORMAT_VERSION = 3  # 2: alignment (mutual | ot) and the columns mutual, ot_link, mass, share; 3: standardise
MANIFEST = "interp.json"
SUMMARY = "summary.csv"
PAIRS = "pairs.parquet"
PAIR_SEPARATOR = "__"
MANIFEST_FIELDS = (
    "format",
    "version",
    "words",
    "poolings",
    "threshold",
    "retrieved",
    "measure",
    "text_encoder",
    "seed",
    "alignment",
    "ot",
    "standardise",
)
ALIGNMENTS = ("mutual", "ot")
STANDARDISATIONS = ("none", "layer")  # cosine of the states as they are | z-scored per (language pair, layer)
PAIR_COLUMNS = (
    "id_a", "id_b", "rank", "layer", "pooling", "word_index_a", "word_a", "word_index_b", "word_b", "cosine",
    "text_similarity", "phone_distance", "word_index_random", "word_random", "cosine_random",
    "text_similarity_random", "phone_distance_random", "phones_a", "phones_b", "mutual", "ot_link", "mass", "share",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "lang_a", "lang_b", "layer", "pooling", "n_utterance_pairs", "n_word_pairs", "text_sim_matched",
    "text_sim_random", "t", "p", "phone_dist_matched", "phone_dist_random", "t_phone", "p_phone", "alignment",
    "n_mutual", "n_one_to_many", "n_ot_only", "n_mutual_only", "text_sim_ot_only", "text_sim_mutual",
    "phone_dist_ot_only", "phone_dist_mutual",
)  # fmt: skip
PAIR_BLOCK = 32  # utterance pairs per kernel call
WORD_QUANTUM = 8  # word axes are padded to a multiple of this (fewer recompiles)
FRAME_QUANTUM = 64
# Punctuation and symbols around a word (Whisper's words keep their leading space and trailing punctuation).
_EDGES = re.compile(r"^[\W_]+|[\W_]+$", re.UNICODE)


class InterpError(BabelgridError, ValueError):
    """The inputs or output folder of an interp run cannot be used."""


@dataclasses.dataclass(frozen=True)
class InterpConfig:
    store: str  # layer store URL (encode job)
    words: str  # the align job's --out (OUT/<lang>/words.parquet)
    out: str  # output folder or kvstore URL
    pairs: str = "unordered"  # as the seqsim job: unordered | ordered | a:b list with '*'
    langs: tuple[str, ...] | None = None  # None = every language of the store that has words
    layers: tuple[int, ...] | None = None  # None = every stored layer
    poolings: tuple[str, ...] = ("centre",)
    threshold: float | None = None  # lowest cosine of a mutual pair; None = any
    retrieved: int = 0  # also each query's top-k retrieved candidates (needs similarity)
    similarity: str | None = None  # similarity store (seqsim job) for retrieved
    measure: str = "seqsim"  # the similarity store's measure that ranks candidates
    text_encoder: str = "usem3"
    seed: int = 0
    alignment: str = "mutual"  # mutual (best cosine both ways) | ot (links of the optimal-transport plan)
    ot: OtConfig = OtConfig()  # Sinkhorn options of alignment="ot" (epsilon in units of 1 - cos)
    ot_weights: str = "uniform"  # word weights of the plan: uniform | duration (frames)
    ot_mass: float = OT_MASS  # lowest share of the smaller word's mass that an OT link carries
    standardise: str = "none"  # none (plain cosine, the paper's) | layer (z-score per language pair and layer)
    progress: bool | None = None
    break_lease: bool = False

    def __post_init__(self):
        check_choice("alignment", self.alignment, ALIGNMENTS)
        check_choice("ot_weights", self.ot_weights, WORD_WEIGHTS)
        check_choice("standardise", self.standardise, STANDARDISATIONS)
        if not 0 < self.ot_mass <= 1:
            raise InterpError(f"ot_mass must be in (0, 1] (a share of the smaller word's mass), got {self.ot_mass}")
        for p in self.poolings:
            check_choice("pooling", p, POOLINGS)
        if not self.poolings:
            raise InterpError("poolings is empty: give one or more of " + ", ".join(POOLINGS))
        if self.retrieved < 0 or (self.retrieved and not self.similarity):
            raise InterpError("retrieved=k > 0 needs similarity=<the seqsim job's --out>; k must be >= 0")


@dataclasses.dataclass
class InterpSummary(RunSummary):
    word_pairs: int = 0
    units_done: int = 0
    units_kept: int = 0
    outputs: list[str] = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [
            f"interp: {self.word_pairs} word pairs in {self.units_done} (pair, layer) units computed, "
            f"{self.units_kept} kept from an earlier run, {self.seconds:.1f} s"
        ]
        return "\n".join(lines + self.skip_lines())


@dataclasses.dataclass
class _Language:
    """The words of one language, by utterance id, with what the two sides need."""

    lang: str
    index: dict[str, int]  # id -> store utterance index
    n_frames: dict[str, int]
    words: dict[str, list[tuple[int, str, str, int, int]]]  # id -> [(word_index, word, key, start, end frame)]
    text: dict[str, np.ndarray]  # key (clean lower-case word) -> unit embedding; absent where not covered
    phones: dict[str, tuple[str, ...]]


def clean_word(word: str) -> str:
    """The word without surrounding space and punctuation, lower-case ('' for pure punctuation)."""
    return _EDGES.sub("", word.strip()).lower()


def word_frames(start: float, end: float, n_frames: int) -> tuple[int, int] | None:
    """Frame span [s, e) of a word timed start..end seconds, at least one frame, inside 0..n_frames; None for
    missing or reversed times."""
    if not (math.isfinite(start) and math.isfinite(end)) or end < start or start < 0:
        return None
    # A small tolerance both ways: the align job's times lie on the 20 ms frame grid, and after float32 rounding
    # 0.3 s may read 14.99999 or 15.00001 frames; without it neighbouring words would share a frame.
    s = min(int(math.floor(start * ENCODER_FRAMES_PER_SECOND + 1e-3)), n_frames - 1)
    e = min(max(s + 1, int(math.ceil(end * ENCODER_FRAMES_PER_SECOND - 1e-3))), n_frames)
    return s, e


def _load_language(reader, words_url: str, lang: str, encoder, summary: InterpSummary) -> _Language:
    from engine.text import phones as ph
    table = reader.utterances_table(lang).to_pydict()
    lengths = reader.lengths(lang)
    index = {uid: int(u) for u, uid in zip(table["utterance"], table["id"], strict=True) if lengths[u] > 0}
    n_frames = {uid: int(lengths[u]) for uid, u in index.items()}
    rows = read_words(words_url, lang).to_pydict()
    words: dict[str, list] = {}
    for uid, wi, word, start, end in zip(
        rows["id"], rows["word_index"], rows["word"], rows["start"], rows["end"], strict=True
    ):
        if uid not in index:
            continue
        key = clean_word(word)
        if not key:
            continue  # punctuation on its own: not a word
        span = word_frames(float(start), float(end), n_frames[uid])
        if span is None:
            summary.skip("missing_timestamps", lang, f"{uid}/{wi}")
            continue
        earlier = words.get(uid)
        if earlier and span[0] < earlier[-1][4]:
            # Words may not share frames (mean and max pool disjoint segments): the later word starts where the
            # earlier one ends, and is dropped when nothing is left of it.
            span = (earlier[-1][4], span[1])
            if span[0] >= span[1]:
                summary.skip("overlapping_timestamps", lang, f"{uid}/{wi}")
                continue
        words.setdefault(uid, []).append((int(wi), word.strip(), key, *span))
    for uid in index:
        if uid not in words:
            summary.skip("no_words", lang, uid)
    keys = sorted({w[2] for ws in words.values() for w in ws})
    text = {}
    if encoder.covers(lang):
        text = dict(zip(keys, encoder.encode(keys), strict=True))
    else:
        for uid, ws in words.items():
            for w in ws:
                summary.skip(f"language_not_covered_by_{encoder.name.replace('/', '_')}", lang, f"{uid}/{w[0]}")
    phones = dict(zip(keys, ph.phonemize_words(lang, keys), strict=True)) if ph.covers(lang) else {}
    if not phones:
        summary.skip("language_not_covered_by_espeak", lang, "*")
    return _Language(lang, index, n_frames, words, text, phones)


def _utterance_pairs(A: _Language, B: _Language, layer: int, config: InterpConfig, sim) -> list[tuple[str, str, int]]:
    """(id_a, id_b, rank): rank 0 the parallel pair, 1..k the query's retrieved candidates (the parallel one left
    out, it is rank 0 already)."""
    pairs = [(uid, uid, 0) for uid in sorted(A.words) if uid in B.words]
    if config.retrieved:
        scores, rows, cols = sim.matrix(config.measure, A.lang, B.lang, layer)
        rows, cols = [str(r) for r in rows], [str(c) for c in cols]
        order = np.argsort(-np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf), axis=1, kind="stable")
        for r, uid in enumerate(rows):
            if uid not in A.words:
                continue
            found = [cols[c] for c in order[r, : config.retrieved + 1] if cols[c] != uid and cols[c] in B.words]
            pairs += [(uid, cid, rank) for rank, cid in enumerate(found[: config.retrieved], start=1)]
    return pairs


def _pad_words(L: _Language, ids: list[str], words: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spans = np.zeros((len(ids), words, 2), np.int32)
    n_words = np.array([len(L.words[u]) for u in ids], np.int32)
    n_frames = np.array([L.n_frames[u] for u in ids], np.int32)
    for p, uid in enumerate(ids):
        spans[p, : n_words[p]] = [(s, e) for *_, s, e in L.words[uid]]
    return spans, n_words, n_frames


def _rng(seed: int, *parts) -> np.random.Generator:
    """A generator fixed by the run's seed and the unit's names (stable across processes and resumes)."""
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def _standardisation(A, B, states, standardise: str):
    """None, or the z-scoring of one unit: every valid frame of every utterance it reads, both languages."""
    if standardise == "none":
        return None
    xs, lengths = [], []
    for L, (X, index) in ((A, states[0]), (B, states[1])):
        for uid, n in index.items():
            xs.append(X[n][None])  # [layer=1, frame, embed]
            lengths.append(min(L.n_frames[uid], X.shape[1]))
    return layer_standardisation(xs, lengths)


def _unit_rows(A, B, layer, pairs, states, config, phone_cache, summary) -> dict[str, list]:
    """The rows of one (language pair, layer) unit: mutual best pairs, and with alignment="ot" the OT links too."""
    (Xa, idx_a), (Xb, idx_b) = states
    out = {c: [] for c in PAIR_COLUMNS}
    threshold = np.float32(-np.inf if config.threshold is None else config.threshold)
    standardise = _standardisation(A, B, states, config.standardise)
    for first in range(0, len(pairs), PAIR_BLOCK):
        block = pairs[first : first + PAIR_BLOCK]
        ids_a, ids_b = [p[0] for p in block], [p[1] for p in block]
        wmax = max(max(len(A.words[u]) for u in ids_a), max(len(B.words[u]) for u in ids_b))
        words = -(-wmax // WORD_QUANTUM) * WORD_QUANTUM
        sa, na, fa = _pad_words(A, ids_a, words)
        sb, nb, fb = _pad_words(B, ids_b, words)
        frames = -(-int(max(fa.max(), fb.max())) // FRAME_QUANTUM) * FRAME_QUANTUM
        xa = _crop(Xa[[idx_a[u] for u in ids_a]], frames)[:, None]  # [pair, layer=1, frame, embed]
        xb = _crop(Xb[[idx_b[u] for u in ids_b]], frames)[:, None]
        check_spans("spans_a", sa, na, fa)
        check_spans("spans_b", sb, nb, fb)
        block_words = WordPair(Words(xa, fa, sa, na), Words(xb, fb, sb, nb))
        for pooling in config.poolings:
            got = wordalign_pairs(block_words, threshold, standardise, pooling=pooling)
            cosine, mutual = np.asarray(got.cosine[:, 0]), np.asarray(got.mutual[:, 0])
            ot = None
            if config.alignment == "ot":
                plan = word_plan_pairs(
                    block_words, standardise, pooling=pooling, weights=config.ot_weights, config=config.ot
                )
                share, links = plan_links(plan.plan[:, 0], plan.weight_a, plan.weight_b, config.ot_mass)
                ot = (np.asarray(plan.plan[:, 0]), share, links, np.asarray(plan.converged[:, 0]))
            for p, (id_a, id_b, rank) in enumerate(block):
                rng = _rng(config.seed, A.lang, B.lang, layer, pooling, id_a, id_b)
                wa, wb = A.words[id_a], B.words[id_b]
                keep, link, mass, part = mutual[p], None, None, None
                if ot is not None:
                    if ot[3][p]:
                        mass, part, link = ot[0][p], ot[1][p], ot[2][p]
                        keep = keep | link
                    else:  # never used: the mutual pairs stay, without OT columns
                        summary.skip("ot_nonconverged", f"{A.lang}-{B.lang}", f"{id_a}/{id_b}/layer{layer}/{pooling}")
                for i, j in zip(*np.nonzero(keep), strict=True):
                    k = -1
                    if len(wb) > 1:
                        k = int(rng.integers(len(wb) - 1))
                        k += k >= j  # uniform over every index but j
                    _add_row(out, A, B, wa[i], wb[j], wb[k] if k >= 0 else None, phone_cache)
                    out["cosine"].append(float(cosine[p, i, j]))
                    out["cosine_random"].append(float(cosine[p, i, k]) if k >= 0 else None)
                    for col, v in (("id_a", id_a), ("id_b", id_b), ("rank", rank), ("layer", layer)):
                        out[col].append(v)
                    out["pooling"].append(pooling)
                    out["mutual"].append(bool(mutual[p, i, j]))
                    out["ot_link"].append(bool(link[i, j]) if link is not None else None)
                    out["mass"].append(float(mass[i, j]) if mass is not None else None)
                    out["share"].append(float(part[i, j]) if part is not None else None)
    return out


def _crop(x: np.ndarray, frames: int) -> np.ndarray:
    if x.shape[1] >= frames:
        return x[:, :frames]
    return np.pad(x, ((0, 0), (0, frames - x.shape[1]), (0, 0)))


def _add_row(out, A, B, wa, wb, wr, phone_cache) -> None:
    def text(u, v):
        eu, ev = A.text.get(u), B.text.get(v)
        return float(np.dot(eu, ev)) if eu is not None and ev is not None else None

    def phone(u, v):
        pu, pv = A.phones.get(u), B.phones.get(v)
        if not pu or not pv:
            return None
        if (pu, pv) not in phone_cache:
            from engine.text.phones import phone_distance

            phone_cache[pu, pv] = phone_distance(pu, pv)
        return phone_cache[pu, pv]

    out["word_index_a"].append(wa[0])
    out["word_a"].append(wa[1])
    out["word_index_b"].append(wb[0])
    out["word_b"].append(wb[1])
    out["text_similarity"].append(text(wa[2], wb[2]))
    out["phone_distance"].append(phone(wa[2], wb[2]))
    out["word_index_random"].append(wr[0] if wr else None)
    out["word_random"].append(wr[1] if wr else None)
    out["text_similarity_random"].append(text(wa[2], wr[2]) if wr else None)
    out["phone_distance_random"].append(phone(wa[2], wr[2]) if wr else None)
    out["phones_a"].append(" ".join(A.phones.get(wa[2], ())))
    out["phones_b"].append(" ".join(B.phones.get(wb[2], ())))


PAIR_SCHEMA = pa.schema(
    [
        ("id_a", pa.string()), ("id_b", pa.string()), ("rank", pa.int32()), ("layer", pa.int32()),
        ("pooling", pa.string()), ("word_index_a", pa.int32()), ("word_a", pa.string()),
        ("word_index_b", pa.int32()), ("word_b", pa.string()), ("cosine", pa.float32()),
        ("text_similarity", pa.float32()), ("phone_distance", pa.float32()), ("word_index_random", pa.int32()),
        ("word_random", pa.string()), ("cosine_random", pa.float32()), ("text_similarity_random", pa.float32()),
        ("phone_distance_random", pa.float32()), ("phones_a", pa.string()), ("phones_b", pa.string()),
        ("mutual", pa.bool_()), ("ot_link", pa.bool_()), ("mass", pa.float32()), ("share", pa.float32()),
    ]
)  # fmt: skip


def _part_bytes(rows: dict, pairs: list) -> bytes:
    table = pa.Table.from_pydict(rows, schema=PAIR_SCHEMA)
    table = table.replace_schema_metadata({"babelgrid_pairs": json.dumps(pairs)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _read_part(kv, key: str, url: str, pairs: list) -> pa.Table | None:
    """The stored part, or None when missing or made from other utterance pairs."""
    found = read_value(kv, key, url)
    if found.state != "value":
        return None
    table = pq.read_table(io.BytesIO(bytes(found.value)))
    meta = (table.schema.metadata or {}).get(b"babelgrid_pairs")
    if meta is None or json.loads(meta) != [list(p) for p in pairs]:
        return None
    return table


def summarize(table, lang_a: str, lang_b: str, alignment: str = "mutual") -> list[dict]:
    """SUMMARY_COLUMNS rows (one per layer and pooling) of a pairs table (pyarrow or pandas), parallel pairs
    (rank 0) only. The matched pairs are the mutual best ones, or with ``alignment="ot"`` the OT links (rows with
    ``ot_link``). t and p: ``scipy.stats.ttest_rel(matched, random)`` over the rows where both are defined; the
    means are over those same rows, so that each mean difference is the one the t-test tests.

    OT comparison (NaN / 0 for mutual): ``n_mutual`` mutual best pairs; ``n_one_to_many`` OT links that share a word
    with another link of their utterance pair; ``n_ot_only`` / ``n_mutual_only`` links that are not mutual best /
    mutual best pairs that are not links; ``text_sim_ot_only``, ``phone_dist_ot_only`` the means over OT-only links,
    ``text_sim_mutual``, ``phone_dist_mutual`` over the mutual best pairs (each over its defined values)."""
    from scipy.stats import ttest_rel

    df = table.to_pandas() if hasattr(table, "to_pandas") else table
    df = df[df["rank"] == 0]
    rows = []
    for (layer, pooling), every in df.groupby(["layer", "pooling"], sort=True):
        row = dict(lang_a=lang_a, lang_b=lang_b, layer=int(layer), pooling=pooling)
        ot_link = every["ot_link"].fillna(False).astype(bool)
        mutual = every["mutual"].astype(bool)
        g = every[ot_link] if alignment == "ot" else every[mutual]
        row["n_utterance_pairs"] = int(g["id_a"].nunique())
        row["n_word_pairs"] = len(g)
        for matched, random, names in (
            ("text_similarity", "text_similarity_random", ("text_sim_matched", "text_sim_random", "t", "p")),
            (
                "phone_distance",
                "phone_distance_random",
                ("phone_dist_matched", "phone_dist_random", "t_phone", "p_phone"),
            ),
        ):
            both = g[[matched, random]].dropna().to_numpy(np.float64)
            if len(both) >= 2:
                test = ttest_rel(both[:, 0], both[:, 1])
                values = (both[:, 0].mean(), both[:, 1].mean(), float(test.statistic), float(test.pvalue))
            else:
                values = (math.nan,) * 4
            row.update(zip(names, values, strict=True))
        row.update(_ot_comparison(every, ot_link, mutual) if alignment == "ot" else _NO_OT)
        row["alignment"] = alignment
        rows.append(row)
    return rows


_NO_OT = dict(n_mutual=0, n_one_to_many=0, n_ot_only=0, n_mutual_only=0, text_sim_ot_only=math.nan,
              text_sim_mutual=math.nan, phone_dist_ot_only=math.nan, phone_dist_mutual=math.nan)  # fmt: skip


def _ot_comparison(g, ot_link, mutual) -> dict:
    links = g[ot_link]
    key = ["id_a", "id_b"]
    shared = links.duplicated([*key, "word_index_a"], keep=False) | links.duplicated([*key, "word_index_b"], keep=False)
    ot_only, mutual_rows = g[ot_link & ~mutual], g[mutual]

    def mean(rows, column):
        values = rows[column].dropna().to_numpy(np.float64)
        return float(values.mean()) if len(values) else math.nan

    return dict(
        n_mutual=int(mutual.sum()),
        n_one_to_many=int(shared.sum()),
        n_ot_only=len(ot_only),
        n_mutual_only=int((mutual & ~ot_link).sum()),
        text_sim_ot_only=mean(ot_only, "text_similarity"),
        text_sim_mutual=mean(mutual_rows, "text_similarity"),
        phone_dist_ot_only=mean(ot_only, "phone_distance"),
        phone_dist_mutual=mean(mutual_rows, "phone_distance"),
    )


def _summary_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return text.getvalue().encode()


def run_interp(config: InterpConfig) -> InterpSummary:
    """The whole run (module docstring); returns what it did and skipped."""
    with writer_lease(config.out, "interp", config.break_lease) as lease:
        return _interp(config, lease)


def _interp(config: InterpConfig, lease) -> InterpSummary:
    from engine.text.encoders import load_text_encoder

    started = time.perf_counter()
    reader = open_store(config.store)
    available = reader.languages()
    langs = config.langs or tuple(available)
    for lang in langs:
        if lang not in available:
            raise InterpError(f"language {lang!r} is not in the layer store {config.store!r} ({available})")
    pairs = resolve_pairs(config.pairs, langs, available)
    layers = config.layers if config.layers is not None else tuple(reader.info.layers)
    for layer in layers:
        if layer not in reader.info.layers:
            raise InterpError(f"layer {layer} is not in the layer store (it has {list(reader.info.layers)})")
    sim = None
    if config.retrieved:
        from engine.stores.similarity import open_similarity

        sim = open_similarity(config.similarity)
    _, kv = open_kvstore(config.out)
    manifest = dict(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        store=config.store,
        words=config.words,
        poolings=list(config.poolings),
        threshold=config.threshold,
        retrieved=config.retrieved,
        measure=config.measure if config.retrieved else None,
        text_encoder=config.text_encoder,
        seed=config.seed,
        alignment=config.alignment,
        ot=dict(dataclasses.asdict(config.ot), weights=config.ot_weights, mass=config.ot_mass)
        if config.alignment == "ot"
        else None,
        standardise=config.standardise,
    )
    create_or_compare(kv, MANIFEST, manifest, config.out, fields=MANIFEST_FIELDS, error=InterpError, what="interp run")
    summary = InterpSummary()
    encoder = load_text_encoder(config.text_encoder)
    needed = sorted({lang for p in pairs for lang in p})
    language = {lang: _load_language(reader, config.words, lang, encoder, summary) for lang in needed}
    phone_cache: dict = {}
    summary_rows = []
    bar = progress_bar(len(pairs) * len(layers), "interp", "unit", config.progress)
    for a, b in pairs:
        A, B = language[a], language[b]
        tables = []
        for layer in layers:
            lease.check()
            upairs = _utterance_pairs(A, B, layer, config, sim)
            key = f"{a}{PAIR_SEPARATOR}{b}/parts/layer{layer:02d}.parquet"
            table = _read_part(kv, key, config.out, upairs)
            if table is not None:
                summary.units_kept += 1
            else:
                states = []
                for L, side in ((A, 0), (B, 1)):
                    ids = sorted({p[side] for p in upairs})
                    x, _ = reader.language_layer(L.lang, layer, [L.index[u] for u in ids], dtype=np.float32)
                    states.append((x, {u: n for n, u in enumerate(ids)}))
                rows = _unit_rows(A, B, layer, upairs, states, config, phone_cache, summary) if upairs else {}
                rows = rows or {c: [] for c in PAIR_COLUMNS}
                data = _part_bytes(rows, [list(p) for p in upairs])
                write_value(kv, key, data, config.out)
                table = pq.read_table(io.BytesIO(data))
                summary.units_done += 1
            summary.word_pairs += table.num_rows
            tables.append(table.replace_schema_metadata(None))
            bar.update()
        merged = pa.concat_tables(tables)
        sink = io.BytesIO()
        pq.write_table(merged, sink)
        name = f"{a}{PAIR_SEPARATOR}{b}"
        write_value(kv, f"{name}/{PAIRS}", sink.getvalue(), config.out)
        rows = summarize(merged, a, b, config.alignment)
        summary_rows += rows
        _figures(kv, config.out, name, rows)
        summary.outputs.append(f"{config.out}/{name}/{PAIRS}")
    bar.close()
    write_value(kv, SUMMARY, _summary_csv(summary_rows), config.out)
    summary.outputs.append(f"{config.out}/{SUMMARY}")
    summary.seconds = time.perf_counter() - started
    return summary


def _figures(kv, url: str, name: str, rows: list[dict]) -> None:
    """Matched vs random text similarity and phone distance by layer, one line per pooling."""
    from matplotlib.figure import Figure

    for key, (matched, random, label) in {
        "text_similarity": ("text_sim_matched", "text_sim_random", "text similarity (cosine)"),
        "phone_distance": ("phone_dist_matched", "phone_dist_random", "phone distance (normalised)"),
    }.items():
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for i, pooling in enumerate(sorted({r["pooling"] for r in rows})):
            rs = sorted((r for r in rows if r["pooling"] == pooling), key=lambda r: r["layer"])
            layers = [r["layer"] for r in rs]
            color = f"C{i}"
            ax.plot(layers, [r[matched] for r in rs], "o-", color=color, label=f"matched ({pooling})")
            ax.plot(layers, [r[random] for r in rs], "s--", color=color, alpha=0.6, label=f"random ({pooling})")
        ax.set_xlabel("encoder layer")
        ax.set_ylabel(label)
        ax.set_title(f"{name.replace(PAIR_SEPARATOR, ' - ')}: mutual-best word pairs vs random words", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        sink = io.BytesIO()
        fig.savefig(sink, format="png", dpi=110)
        write_value(kv, f"{name}/{key}.png", sink.getvalue(), url)
