"""The probes job: what each layer of a layer store encodes, measured directly, one layer at a time.

Probes (``PROBES``; each writes a CSV and a figure against layer, with its n and its chance level):

- ``lid``: language identification from mean-pooled states (``engine.pipelines.stages.lid``), ``OUT/lid.csv``;
- ``samediff``: same-different word discrimination (``engine.pipelines.probes.samediff``), ``OUT/samediff.csv``;
- ``cca``: projection-weighted CCA against phone, word and semantic targets (``engine.pipelines.probes.cca``),
  ``OUT/cca.csv``.

``samediff`` and ``cca`` need word tokens: a folder with ``<lang>/words.parquet`` (``jobs.align --out``).

Memory: one layer is read at a time, a language at a time, in blocks of ``block`` utterances cut to their longest
length; what a layer keeps is one pooled vector per utterance, the frames of the sampled word tokens and the CCA
frame sample, never the layer itself.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Sequence

import numpy as np

from engine import captions
from engine.listing import chosen as pick
from engine.pipelines.probes import cca, samediff
from engine.pipelines.probes.config import PROBES, WORD_PROBES, ProbesConfig, ProbesError
from engine.pipelines.stages import lid
from engine.runtime.runs import RunSummary, output_run
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import csv_cell
from engine.stores.words import check_words_store, read_words

log = logging.getLogger(__name__)

LID_CSV, SAMEDIFF_CSV, CCA_CSV = "lid.csv", "samediff.csv", "cca.csv"
LID_COLUMNS = ("layer", "accuracy", "macro_f1", "n", "chance")
SAMEDIFF_COLUMNS = ("lang", "layer", "measure", "ap", "chance", "n_pairs", "n_same", "n_tokens", "n_types", "speakers")
CCA_COLUMNS = ("layer", "target", "pwcca", "chance", "n_train", "n_test", "dims")
FIGURES = {name: f"figures/{name}_by_layer.png" for name in PROBES}


@dataclasses.dataclass
class ProbesSummary(RunSummary):
    lid: list = dataclasses.field(default_factory=list)  # lid.LidScore per layer
    samediff: list = dataclasses.field(default_factory=list)  # samediff.SameDiffScore
    cca: list = dataclasses.field(default_factory=list)  # cca.CcaScore
    outputs: list = dataclasses.field(default_factory=list)
    dropped: dict = dataclasses.field(default_factory=dict)  # samediff: lang -> {reason: tokens}
    cca_unmeasured: list = dataclasses.field(default_factory=list)  # cca targets not measured, and why

    def report(self) -> str:
        lines = [f"probes: {self.seconds:.1f} s; skipped utterances: {self.n_skipped}", *self.skip_lines()]
        if self.lid:
            lines.append(f"lid: n = {self.lid[0].n} utterances, chance {self.lid[0].chance:.3f}")
            lines.append("  layer accuracy macro_f1  l2 per fold")
            for s in self.lid:
                lines.append(f"  {s.layer:>5} {s.accuracy:8.3f} {s.macro_f1:8.3f}  {','.join(f'{x:g}' for x in s.l2)}")
        if self.samediff:
            lines.append("samediff: mean AP over languages (chance: share of same pairs)")
            for measure in samediff.MEASURES:
                own = [s for s in self.samediff if s.measure == measure and np.isfinite(s.ap)]
                for layer in sorted({s.layer for s in own}):
                    at = [s for s in own if s.layer == layer]
                    ap, chance = np.mean([s.ap for s in at]), np.mean([s.chance for s in at])
                    same = sum(s.n_same for s in at)
                    lines.append(f"  {measure:>6} {layer:>3}  AP {ap:.3f}  chance {chance:.3f}  same pairs {same}")
        if self.cca:
            lines.append("cca: held-out PWCCA (chance: targets shuffled)")
            for s in self.cca:
                lines.append(
                    f"  {s.target:>8} {s.layer:>3}  {s.pwcca:.3f}  chance {s.chance:.3f}  n {s.n_train}+{s.n_test}"
                    f"  dims {s.dims}"
                )
        if self.cca_unmeasured:
            lines.append(f"cca: not measured: {'; '.join(self.cca_unmeasured)}")
        for lang, counts in sorted(self.dropped.items()):
            lines.append(f"  words left out of {lang}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        return "\n".join(lines)


def read_blocks(store, lang: str, layer: int, utterances: np.ndarray, lengths: np.ndarray, block: int):
    """Yields (utterance indices i64[b], states f32[b, frames, embed] zero-padded) for ``utterances`` (done ones), in
    blocks of ``block``, each read only up to its longest utterance."""
    for i in range(0, len(utterances), block):
        index = utterances[i : i + block]
        states, _ = store.language_layer(lang, layer, index, np.float32, frames=int(lengths[index].max()))
        yield index, states


def _pooling(blocks, lengths: np.ndarray, pooled: list):
    """Passes ``read_blocks``'s blocks on, one at a time, after appending each utterance's mean frame
    (f32[b, embed]) to ``pooled``: one pass over the store serves LID and the word probes, and only one block is
    held at a time."""
    for index, states in blocks:
        pooled.append(states.sum(axis=1) / lengths[index, None])
        yield index, states


def word_tokens(config: ProbesConfig, store, lang: str, ids, lengths):
    """The word tokens of ``lang`` the word probes use (``samediff.select_tokens`` on the align job's words, the
    store's speakers and frame rate), and what was dropped: one selection for the run and its plan."""
    check_words_store(config.words, store, [lang], ProbesError)
    speakers = store.utterances_table(lang).column("speaker").to_pylist()
    words = read_words(config.words, lang)
    return samediff.select_tokens(
        lang, words, ids, lengths, speakers, store.info.frame_rate,
        min_chars=config.min_chars, max_tokens=config.max_tokens, seed=config.seed,
    )  # fmt: skip


def run_probes(config: ProbesConfig, store=None) -> ProbesSummary:
    """Runs the chosen probes over every chosen layer and writes their CSVs and figures (module docstring). The run
    holds the output folder's writer lease and records its settings there (``engine.runtime.runs.output_run``): a
    rerun with other probes or settings is refused, never leaving old CSVs beside new ones. What the store's tables
    and the words can tell (languages, the ids LID's folds split, the word tokens) is checked before that: a request
    that cannot be met creates nothing."""
    started = time.monotonic()
    store = open_store(config.store) if store is None else store
    langs = pick("language", config.langs, store.languages(), ProbesError, "the store")
    layers = pick("layer", config.layers, store.info.layers, ProbesError, "the store")
    if "lid" in config.chosen and len(langs) < 2:  # before the lease: a wrong request creates nothing
        raise ProbesError(f"language ID needs two or more languages; the run has {langs}")
    summary = ProbesSummary()
    inputs = _inputs(config, store, langs, summary)
    _check_inputs(config, langs, inputs)
    with output_run(config, "probes", ProbesError, ignore=("block",)):
        return _probes(config, store, langs, layers, started, summary, inputs)


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What the run reads before any state: per language the store's lengths, the encoded utterances, their ids, and
    the word tokens of the word probes."""

    lengths: dict
    utterances: dict
    ids: dict
    tokens: dict


def _inputs(config: ProbesConfig, store, langs: list, summary: ProbesSummary) -> _Inputs:
    lengths, utterances, ids = {}, {}, {}
    for lang in langs:
        table = store.utterances_table(lang)
        lengths[lang] = store.lengths(lang)
        ids[lang] = table.column("id").to_pylist()
        for u in np.flatnonzero(lengths[lang] < 0):
            summary.skip("not_encoded", lang, ids[lang][u])
        utterances[lang] = np.flatnonzero(lengths[lang] > 0)
    tokens = {}
    if set(config.chosen) & set(WORD_PROBES):
        for lang in langs:
            tokens[lang], summary.dropped[lang] = word_tokens(config, store, lang, ids[lang], lengths[lang])
    return _Inputs(lengths, utterances, ids, tokens)


def _check_inputs(config: ProbesConfig, langs: list, inputs: _Inputs) -> None:
    """Refuses, from the tables and words alone, a probe that cannot be fitted on what the store holds (``lid``: two
    languages with encoded utterances, as many distinct utterance ids as folds; ``samediff``: a language with two
    word tokens; ``cca``: tokens of two utterance ids, the two halves it is fitted and tested on): the probes failed
    on them after the first layer had been read."""
    chosen = config.chosen
    if "lid" in chosen:
        held = [lang for lang in langs if len(inputs.utterances[lang])]
        if len(held) < 2:
            raise ProbesError(f"language ID needs encoded utterances of two or more languages; of {langs} only {held} "
                              "have any")  # fmt: skip
        distinct = len({inputs.ids[lang][u] for lang in langs for u in inputs.utterances[lang]})
        if distinct < config.folds:
            raise ProbesError(
                f"language ID splits the encoded utterances into {config.folds} folds by utterance id, and the store "
                f"holds {distinct} distinct ids in {langs}: "
                + (f"lower --folds to {distinct}, " if distinct >= 3 else "--folds is 3 at least, so ")
                + "encode more utterances, or leave lid out with --probes"
            )
    if "samediff" in chosen and not any(len(inputs.tokens[lang]) >= 2 for lang in langs):
        counts = {lang: len(inputs.tokens[lang]) for lang in langs}
        raise ProbesError(f"samediff pairs word tokens of one language: no language has two ({counts} kept of "
                          "--words; see --min_chars), or leave it out with --probes")  # fmt: skip
    if "cca" in chosen:
        groups = {inputs.ids[lang][u] for lang in langs for u in inputs.tokens[lang].utterance}
        if len(groups) < 2:
            raise ProbesError(
                f"cca fits on one half of the utterance ids and tests on the other: the word tokens kept come from "
                f"{len(groups)} ({sorted(groups)}); give more --words, lower --min_chars, or leave it out with --probes"
            )


def _probes(config, store, langs: list, layers: list, started: float, summary: ProbesSummary,
            inputs: _Inputs) -> ProbesSummary:  # fmt: skip
    chosen = config.chosen
    lengths, utterances, ids, tokens = inputs.lengths, inputs.utterances, inputs.ids, inputs.tokens
    targets = None
    if "cca" in chosen:
        from engine.text import encoders, phones  # lazy: espeak-ng and the text encoder's weights, for cca only

        listed = [tokens[lang] for lang in langs]
        targets = cca.build_targets(listed, ids, phones.phonemize_words, encoders.load_text_encoder(), config.seed)
        summary.cca_unmeasured = cca.unmeasured(targets)
    for layer in layers:
        pooled, word_frames, word_pooled = [], [], []
        for lang in langs:
            needed = utterances[lang] if "lid" in chosen else np.unique(tokens[lang].utterance)
            blocks = read_blocks(store, lang, layer, needed, lengths[lang], config.block)
            if "lid" in chosen:
                blocks = _pooling(blocks, lengths[lang], pooled)
            if lang in tokens and len(tokens[lang]):
                frames, word_lengths = samediff.word_frames(tokens[lang], blocks)
                if "samediff" in chosen and len(tokens[lang]) >= 2:
                    summary.samediff += samediff.samediff_layer(layer, tokens[lang], frames, word_lengths)
                if targets is not None:
                    word_frames += [f[:n] for f, n in zip(frames, word_lengths, strict=True)]
                    word_pooled.append(frames.sum(axis=1) / word_lengths[:, None])
            for _ in blocks:  # blocks not consumed yet (LID reads every utterance, the words need only some)
                pass
        if targets is not None and word_pooled:
            all_frames = np.concatenate(word_frames)
            summary.cca += cca.cca_layer(layer, targets, all_frames, np.concatenate(word_pooled), config.seed)
        if "lid" in chosen:
            labels = np.concatenate([np.full(len(utterances[lang]), k) for k, lang in enumerate(langs)])
            groups = [ids[lang][u] for lang in langs for u in utterances[lang]]
            score = lid.lid_layer(layer, np.concatenate(pooled), labels, groups, folds=config.folds, seed=config.seed)
            summary.lid.append(score)
        log.info("layer %d done (%.1f s)", layer, time.monotonic() - started)
    source = captions.source_line(store.info.model_name, store.manifest.get("created"), f"{len(langs)} languages")
    writes = outputs(summary, chosen, source)
    _, kv = open_kvstore(config.run.out)
    write_outputs(kv, writes, config.run.out)
    summary.outputs = [config.run.out.rstrip("/") + "/" + k for k in writes]
    summary.seconds = time.monotonic() - started
    return summary


def csv_bytes(columns: Sequence[str], rows: Sequence[Sequence]) -> bytes:
    """CSV with a header; NaN written as NA (a number not measured)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [csv_cell(x) for x in row]  # full precision, a NumPy float as a float
        writer.writerow(["NA" if isinstance(x, float) and not np.isfinite(x) else x for x in cells])
    return buf.getvalue().encode()


def outputs(summary: ProbesSummary, chosen: Sequence[str], subtitle: str) -> dict[str, bytes]:
    """The files of the chosen probes, by key under OUT: each probe's CSV, and its figure where it measured something
    (a probe with no score, or none defined, draws no figure)."""
    from engine.pipelines.probes import figures  # lazy: matplotlib, only needed to write figures

    writes = {}
    if "lid" in chosen:
        writes[LID_CSV] = csv_bytes(LID_COLUMNS, [[getattr(s, c) for c in LID_COLUMNS] for s in summary.lid])
        if any(np.isfinite(s.accuracy) for s in summary.lid):
            writes[FIGURES["lid"]] = figures.lid_png(summary.lid, subtitle)
    if "samediff" in chosen:
        rows = [[getattr(s, c) for c in SAMEDIFF_COLUMNS] for s in summary.samediff]
        writes[SAMEDIFF_CSV] = csv_bytes(SAMEDIFF_COLUMNS, rows)
        if any(np.isfinite(s.ap) for s in summary.samediff):
            writes[FIGURES["samediff"]] = figures.samediff_png(summary.samediff, subtitle)
    if "cca" in chosen:
        writes[CCA_CSV] = csv_bytes(CCA_COLUMNS, [[getattr(s, c) for c in CCA_COLUMNS] for s in summary.cca])
        if any(np.isfinite(s.pwcca) for s in summary.cca):
            writes[FIGURES["cca"]] = figures.cca_png(summary.cca, subtitle)
    return writes
