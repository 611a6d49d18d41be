"""Language-selective feed-forward units: per language, how often each unit of each layer fires, and LAPE over them.

The model runs over every utterance of every language of the dataset (as the encode job reads them: windows of at
most 30 s, the same batches), and for each layer and feed-forward unit counts the valid frames at which its
activation after the nonlinearity is > 0 (``ffn_counts`` of the family: Whisper and wav2vec2/HuBERT/MMS). Nothing per
frame is kept. Then LAPE (``engine.pipelines.stages.lape``) ranks the units. Writes::

    OUT/counts/<lang>.npz                  i64 counts [layer, unit], frames, utterances and skipped of one language
    OUT/units.parquet                      one row per (layer, unit): lape, max_rate, top_language, selected,
                                           languages (those it belongs to), then rate_<lang> per language
    OUT/selective_units.csv                per language and layer the selected units it owns, lowest LAPE first
                                           (at most --top): lang, layer, unit, rate, lape, rank
    OUT/figures/selective_units.png        selected units per language and layer, and LAPE's spread per layer
    OUT/manifest.json                      the run's settings: a rerun with others is refused

A language's counts are written when the language is done, with their digest: a rerun takes the counted languages
from there and counts only the others (a kill loses at most the language in progress). Languages, then intervention
passes, are claimed units (``engine.runtime.claims``): with ``--worker`` any number of processes share a run, and the
files written at the end are the same bytes whichever worker writes them. Layers are the family's
blocks, 1..L (layer l = block l's feed-forward units), the numbering of the layer stores' block outputs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time

import numpy as np
import pyarrow as pa

from engine import captions
from engine.data.sources import get_source
from engine.faults import fault_point
from engine.models.family import load_encoder
from engine.pipelines.neurons import intervene
from engine.pipelines.neurons.config import NeuronsConfig, NeuronsError
from engine.pipelines.stages import lape as lape_lib
from engine.pipelines.stages.memory import check_batch_size
from engine.pipelines.stages.windows import NoClaims, Task, batches, prefetched
from engine.runtime.runs import RunSummary, output_run, progress_bar, work_claims
from engine.runtime.units import claimed_units
from engine.stores.integrity import parquet_bytes, read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_value
from engine.stores.provenance import listing_digest
from engine.stores.records import csv_bytes, npz_bytes, read_npz

log = logging.getLogger(__name__)

COUNTS = "counts/"
UNITS = "units.parquet"
SELECTIVE = "selective_units.csv"
FIGURE = "figures/selective_units.png"
SELECTIVE_COLUMNS = ("lang", "layer", "unit", "rate", "lape", "rank")
# Settings the counts do not depend on, so not pinned by manifest.json: the ranking's (its files are written again
# from the counts at every run) and the intervention's (pinned by its own record: intervene.SETTINGS). Changing one of
# them never throws counts away.
IGNORED = ("rate_quantile", "lape_share", "top", *("intervene", "random_draws", "intervene_utterances", "seed"))
UNIT_COLUMNS = ("layer", "unit", "lape", "max_rate", "top_language", "selected", "languages")  # then rate_<lang>


@dataclasses.dataclass
class NeuronsSummary(RunSummary):
    languages: int = 0
    counted: int = 0  # languages counted by this run (the others were read back)
    utterances: int = 0
    frames: int = 0
    selected: int = 0
    per_language: dict = dataclasses.field(default_factory=dict)  # language -> selected units it owns
    intervention: list = dataclasses.field(default_factory=list)  # intervention.csv's rows
    intervention_test: list = dataclasses.field(default_factory=list)  # intervention_test.csv's rows
    intervention_empty: list = dataclasses.field(default_factory=list)  # asked for, but owning no unit
    paths: tuple = ()

    def report(self) -> str:
        owned = ", ".join(f"{lang} {n}" for lang, n in sorted(self.per_language.items()))
        lines = [
            f"neurons: {self.languages} languages ({self.counted} counted now, the others read back), "
            f"{self.utterances} utterances, {self.frames} valid frames in {self.seconds:.1f} s",
            f"{self.selected} language-specific units selected (LAPE); per language: {owned}",
        ]
        lines += intervene.report_lines(self.intervention, self.intervention_empty, self.intervention_test)
        lines += self.skip_lines()
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines)


def _count_language(encoder, utts, lang: str, config: NeuronsConfig, summary: NeuronsSummary, progress) -> dict:
    counts, frames, done = None, 0, 0
    tasks = (Task(lang, i, lang, utt, None, None) for i, utt in enumerate(utts))
    with concurrent.futures.ThreadPoolExecutor(config.prefetch) as pool:
        prepared = prefetched(pool, tasks, encoder, config.long_audio, config.prefetch * 4)
        for batch, parts in batches(prepared, config.batch_size, summary, NoClaims(progress), encoder.collate):
            valid = np.zeros(config.batch_size, np.int32)
            for p, start, take, row in parts:
                valid[row : row + take] = p.frames[start : start + take]
                finished = start + take == len(p.mel)
                done += finished
                progress.update(int(finished))
            got = encoder.ffn_counts(batch, valid)
            counts = got if counts is None else counts + got
            frames += int(valid.sum())
    skipped = sum(1 for items in summary.skipped.values() for x in items if x[0] == lang)
    if counts is None or not frames:
        raise NeuronsError(f"language {lang!r}: no utterance could be read ({skipped} skipped): nothing to count")
    return {"counts": counts, "frames": np.array(frames), "utterances": np.array(done), "skipped": np.array(skipped)}


def run_neurons(config: NeuronsConfig) -> NeuronsSummary:
    """Counts, ranks and writes (module docstring); returns the summary."""
    start = time.perf_counter()
    source = get_source(config.dataset, lang=config.lang, audio_column=config.audio_column,
                        text_column=config.text_column, id_column=config.id_column,
                        lang_column=config.lang_column)  # fmt: skip
    langs = list(config.langs) if config.langs else source.languages()
    if len(langs) < 2:
        raise NeuronsError(f"LAPE ranks units across languages: give at least two, got {langs}")
    unknown = [lang for lang in config.intervene or () if lang not in (*langs, "all")]
    if unknown:
        raise NeuronsError(f"--intervene names languages not counted here: {unknown} (counted: {langs})")
    if config.intervene:  # the listing alone: refused here, not after the counting pass and every intervention pass
        intervene.check_evaluation_set(source, langs, config.split, config.intervene_utterances)
    encoder = load_encoder(config.model, adapter=config.adapter)
    if encoder.ffn_counts is None:
        raise NeuronsError(f"{encoder.family} models have no feed-forward counts yet (Whisper and wav2vec2 do)")
    # The bound encode puts on a batch, before the output folder records anything (a step here holds no stored layer)
    check_batch_size(encoder, (), "float32", config.batch_size)
    summary = NeuronsSummary(languages=len(langs))
    url = config.run.out
    _, kv = open_kvstore(url)
    counting = work_claims(config.run, "neurons", kv)
    passes = work_claims(config.run, intervene.CLAIMS, kv)
    fix = repair_hint(url, "neurons")
    settle = functools.partial(intervene.settle, kv, url, config, fix) if config.intervene else None
    # The listing counted: a rerun on audio changed under the same dataset is refused, not given the old counts.
    listing = {lang: source.utterances(lang, config.split) for lang in langs}  # listed once: counted from it too
    inputs = {"dataset": listing_digest(u for utts in listing.values() for u in utts)}
    with output_run(config, "neurons", NeuronsError, ignore=IGNORED, claims=(counting, passes),
                    prepare=settle, inputs=inputs) as lease:  # fmt: skip
        per_lang = _counts(config, encoder, listing, kv, fix, summary, counting, lease)
        counts = np.stack([per_lang[lang]["counts"] for lang in langs])
        frames = np.array([int(per_lang[lang]["frames"]) for lang in langs])
        summary.utterances = int(sum(int(per_lang[lang]["utterances"]) for lang in langs))
        summary.frames = int(frames.sum())
        ranked = lape_lib.lape(langs, counts, frames, config.rate_quantile, config.lape_share)
        summary.selected = int(ranked.selected.sum())
        summary.per_language = {lang: int(ranked.belongs[i].sum()) for i, lang in enumerate(langs)}
        writes = {UNITS: parquet_bytes(_units_table(ranked)), SELECTIVE: _selective_csv(ranked, config.top)}
        from engine.pipelines.neurons import figures  # lazy: matplotlib only here

        subtitle = captions.source_line(encoder.name, {"dataset": config.dataset, "split": config.split})
        writes[FIGURE] = figures.selective_png(ranked, subtitle)
        write_outputs(kv, writes, url)  # as soon as the counts are done: an interrupted intervention keeps them
        if config.intervene:
            bar = functools.partial(progress_bar, enabled=config.run.progress)

            def claim(names, is_done, progress):
                what = "intervention passes"
                return claimed_units(passes, lease, RunSummary(), progress, names, is_done, len(names), what)

            done = intervene.run_intervention(config, encoder, source, langs, ranked, kv, url, fix, summary, bar,
                                              claim)  # fmt: skip
            write_outputs(kv, done, url)  # every worker that gets here writes the same bytes
            writes |= done
    summary.paths = tuple(url.rstrip("/") + "/" + k for k in writes)
    summary.seconds = time.perf_counter() - start
    return summary


def _counts(config, encoder, listing, kv, fix, summary, claims, lease) -> dict[str, dict]:
    """Every language's counts: those a former run (or another worker) stored are read back, the others claimed one
    language at a time (``engine.runtime.claims``), counted and stored with their digest. ``listing``: language ->
    its utterances, in the run's order of languages."""
    url, langs = config.run.out, list(listing)

    def key(lang: str) -> str:
        return f"{COUNTS}{lang}.npz"

    def stored(lang: str) -> bool:
        return read_value(kv, key(lang), url).state == "value"

    todo = [lang for lang in langs if not stored(lang)]
    progress = progress_bar(sum(len(listing[lang]) for lang in todo), "neurons", "utt", config.run.progress)
    for lang in claimed_units(claims, lease, summary, progress, todo, stored, len(langs), "languages"):
        fault_point("before_count")  # test-only (engine.faults): the language's claim is held
        counted = _count_language(encoder, listing[lang], lang, config, summary, progress)
        write_outputs(kv, {key(lang): npz_bytes(counted)}, url)
        fault_point("after_count")  # test-only: written, its claim not yet released
        summary.counted += 1
        log.info("counted %s: %d frames", lang, int(counted["frames"]))
    out = {}
    for lang in langs:
        data = read_output(kv, key(lang), url, fix=fix)
        if data is None:  # finished by every worker, yet gone: deleted under the run
            raise NeuronsError(f"{url}/{key(lang)} is missing after every language was counted: rerun to count it")
        out[lang] = read_npz(data, key(lang), url, fix)
    return out


def _units_table(ranked: lape_lib.Lape) -> pa.Table:
    n_layer, n_unit = ranked.entropy.shape
    layer, unit = np.divmod(np.arange(n_layer * n_unit), n_unit)
    rates = ranked.rates.reshape(len(ranked.languages), -1)
    columns = {
        "layer": pa.array(layer + 1, pa.int32()),
        "unit": pa.array(unit, pa.int32()),
        "lape": pa.array(ranked.entropy.ravel(), pa.float64(), mask=np.isnan(ranked.entropy.ravel())),
        "max_rate": pa.array(rates.max(axis=0), pa.float64()),
        "top_language": pa.array([ranked.languages[i] for i in rates.argmax(axis=0)], pa.string()),
        "selected": pa.array(ranked.selected.ravel(), pa.bool_()),
        "languages": pa.array(
            [
                ",".join(ranked.languages[i] for i in np.flatnonzero(col))
                for col in ranked.belongs.reshape(len(ranked.languages), -1).T
            ],
            pa.string(),
        ),  # fmt: skip
    }
    columns |= {f"rate_{lang}": pa.array(rates[i], pa.float64()) for i, lang in enumerate(ranked.languages)}
    return pa.table(columns)


def _selective_csv(ranked: lape_lib.Lape, top: int) -> bytes:
    rows = []
    for i, lang in enumerate(ranked.languages):
        for layer in range(ranked.entropy.shape[0]):
            units = np.flatnonzero(ranked.belongs[i, layer])
            order = units[np.argsort(ranked.entropy[layer, units], kind="stable")][:top]
            rows += [(lang, layer + 1, int(u), float(ranked.rates[i, layer, u]), float(ranked.entropy[layer, u]), r + 1)
                     for r, u in enumerate(order)]  # fmt: skip
    return csv_bytes(SELECTIVE_COLUMNS, rows)
