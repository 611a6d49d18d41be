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
Multi-process runs (``jax.distributed``) share the (language pair, layer) units through claim keys in ``OUT``
(``engine.runtime.claims``, walked by ``engine.runtime.units.UnitLoop``): a part is written at once (its metadata is
its done marker), so a killed process leaves a part whole or absent, and the others take its units once its claims
expire. Process 0 merges the parts into ``pairs.parquet``, ``summary.csv`` and the figures once every unit is done.

Modules: ``config`` (the settings), ``inputs`` (each language's words, text embeddings and phones), ``unit`` (one
unit's work), ``output`` (the layout, manifest and parts), ``report`` (the statistics and figures), ``reader``.
"""

from __future__ import annotations

import dataclasses
import time

import pyarrow as pa

from engine import captions
from engine.faults import fault_point
from engine.pipelines.interp.config import InterpConfig, InterpError
from engine.pipelines.interp.inputs import load_language, utterance_pairs
from engine.pipelines.interp.output import (
    MANIFEST,
    MANIFEST_FIELDS,
    PAIRS,
    SUMMARY,
    manifest,
    pair_name,
    part_key,
    read_part,
)
from engine.pipelines.interp.report import summarize, summary_csv_bytes, write_figures
from engine.pipelines.interp.unit import unit_part
from engine.runtime.parallel import is_process_zero
from engine.runtime.runs import RunSummary, job_lease, process_zero_first, progress_bar, work_claims
from engine.runtime.units import UnitLoop
from engine.stores.integrity import write_outputs
from engine.stores.kv import create_or_compare, open_kvstore, write_value
from engine.stores.pairs import resolve_pairs
from engine.stores.parts import table_bytes
from engine.stores.provenance import identity
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity
from engine.stores.words import check_words_store, words_digest, words_language
from engine.text.encoders import load_text_encoder


@dataclasses.dataclass
class InterpSummary(RunSummary):
    """``units`` (RunSummary): the (pair, layer) units this process computed."""

    word_pairs: int = 0  # in the units this process computed, and (process 0) those kept
    units_kept: int = 0  # units kept from an earlier run (counted by process 0)
    outputs: list[str] = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [
            f"interp: {self.word_pairs} word pairs in {self.units} (pair, layer) units computed, "
            f"{self.units_kept} kept from an earlier run, {self.seconds:.1f} s",
            self.work_line("(pair, layer) units"),
        ]
        return "\n".join(lines + self.skip_lines())


def run_interp(config: InterpConfig) -> InterpSummary:
    """The whole run (module docstring); returns what it did and skipped. Process 0 holds the output folder's
    writer lease (``engine.runtime.lease``) for the run. What the store and the words folder list (languages,
    layers, pairs, each language's words) is checked before the lease: a request they cannot meet creates nothing."""
    reader, pairs, layers = request(config)
    sim = open_similarity(config.similarity) if config.retrieved else None
    then, now = (sim.manifest.get("layer_store_identity") if sim else None), identity(reader.manifest)
    if then is not None and then != now:  # another store's rankings picked the candidates (a probe's)
        raise InterpError(f"--similarity {config.similarity!r} was computed from another layer store than --store "
                          f"{config.store!r} (it names {sim.manifest.get('layer_store')!r}): pass the similarity "
                          "store of this layer store")  # fmt: skip
    with job_lease(config, "interp") as lease:
        return _interp(config, lease, reader, pairs, layers, sim)


def request(config: InterpConfig):
    """(the layer store's reader, the language pairs, the layers) of the run, each checked against the store, and
    every language of a pair against the words folder (``words_language``, a WordsError naming what it holds)."""
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
    for lang in sorted({lang for p in pairs for lang in p}):
        words_language(config.words, lang)
    check_words_store(config.words, reader, sorted({lang for p in pairs for lang in p}), InterpError)
    return reader, pairs, layers


def _interp(config: InterpConfig, lease, reader, pairs, layers, sim) -> InterpSummary:
    started = time.perf_counter()
    out = config.run.out
    _, kv = open_kvstore(out)
    claims = work_claims(config.run, "interp", kv)

    # The words read, by digest: a words folder aligned again at the same path is another input (a resume kept the
    # parts of the old words beside the new ones' in a probe's run). Folders written before are not compared on it.
    digests = {lang: words_digest(config.words, lang) for lang in sorted({x for p in pairs for x in p})}

    def create() -> None:
        create_or_compare(kv, MANIFEST, {**manifest(config), "words_digest": digests}, out,
                          fields=(*MANIFEST_FIELDS, "words_digest"), error=InterpError, what="interp run",
                          unrecorded=("words_digest",))  # fmt: skip
        if lease.opener:
            claims.clear(keep_live=lease.shared)  # under the writer lease, before any process claims

    process_zero_first("babelgrid-interp-manifest", create)
    lease.open()
    summary = InterpSummary()
    encoder = load_text_encoder(config.text_encoder)
    # Every process loads every language; process 0 alone counts what they leave out (once per run).
    counted = summary if is_process_zero() else RunSummary()
    language = {lang: load_language(reader, config.words, lang, encoder, counted)
                for lang in sorted({lang for p in pairs for lang in p})}  # fmt: skip
    # Work units (engine.runtime.claims): the (language pair, layer) parts, in the same order on every process,
    # each with the utterance pairs it is made from (what a kept part must name).
    units = {
        part_key(a, b, layer): (a, b, layer, utterance_pairs(language[a], language[b], layer, config, sim))
        for a, b in pairs
        for layer in layers
    }

    def kept(unit: str) -> pa.Table | None:
        return read_part(kv, unit, out, units[unit][3])

    bar = progress_bar(len(units), "interp", "unit", config.run.progress)
    todo = []
    for unit in units:
        table = kept(unit)
        if table is None:
            todo.append(unit)
        elif is_process_zero():  # every process sees the parts kept from an earlier run; one counts them
            summary.units_kept += 1
            summary.word_pairs += table.num_rows
            bar.update()
    phone_cache: dict = {}
    with UnitLoop(claims, lease, summary, bar) as loop:
        what, weight = "(language pair, layer) parts", lambda _: 1
        for claimed in loop.rounds(todo, lambda u: kept(u) is not None, total=len(units), weight=weight, what=what):
            for claim in claimed:
                a, b, layer, upairs = units[claim.unit]
                data, n_rows = unit_part(reader, language[a], language[b], layer, upairs, config, phone_cache,
                                         summary)  # fmt: skip
                fault_point("before_part")
                write_value(kv, claim.unit, data, out)  # one write: the part's metadata is its done marker
                summary.word_pairs += n_rows
                loop.done(claim)
    if is_process_zero():  # every unit is done: rounds() ends only when no other process holds one
        source = captions.source_line(reader.info.model_name, reader.manifest.get("created"))
        _merge(kv, config, pairs, layers, units, summary, source)
    summary.seconds = time.perf_counter() - started
    return summary


def _merge(kv, config: InterpConfig, pairs, layers, units: dict, summary: InterpSummary, source: str) -> None:
    """Each language pair's pairs.parquet and figures, and summary.csv, from the parts; ``source``: the model and
    dataset the figures name."""
    out = config.run.out
    summary_rows = []
    for a, b in pairs:
        tables = []
        for layer in layers:
            key = part_key(a, b, layer)
            table = read_part(kv, key, out, units[key][3])
            if table is None:
                raise InterpError(f"part {key} of {out!r} is missing after every process finished")
            tables.append(table.replace_schema_metadata(None))
        merged = pa.concat_tables(tables)
        name = pair_name(a, b)
        write_outputs(kv, {f"{name}/{PAIRS}": table_bytes(merged)}, out)
        rows = summarize(merged, a, b, config.alignment)
        summary_rows += rows
        write_figures(kv, out, name, rows, source, config.alignment)
        summary.outputs.append(f"{out}/{name}/{PAIRS}")
    write_outputs(kv, {SUMMARY: summary_csv_bytes(summary_rows)}, out)
    summary.outputs.append(f"{out}/{SUMMARY}")
