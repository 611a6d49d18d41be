"""Which attention heads carry language: every single-head ablation of a store's model, gradient importance and
attention statistics, per language (``jobs/heads.py``; docs/heads.md shows the demo).

The model is the store's (its checkpoint's sha256 is checked), re-run from the audio its utterance table points to
(``engine.pipelines.heads.ablate``: the evaluation set, one pass per batch of masks). Work units, claimed
(``engine.runtime.claims``) so that any number of ``--worker`` processes share a run, each written whole with its
digest as soon as it is done (a rerun reads them back; a kill loses at most the units in progress)::

    OUT/parts/none.npz          the unablated model: pooled states, SeqSim R@1, WER/CER, hypotheses
    OUT/parts/block<l>.npz      the H single-head ablations of block l, one pass (the same arrays, one row a head)
    OUT/parts/importance.npz    gradient importance per utterance and loss (``engine.pipelines.heads.importance``)
    OUT/parts/attention.npz     attention statistics and sinks per window (families that offer them)

Then, from the parts (every worker that gets there writes the same bytes)::

    OUT/heads.parquet           long table (``engine.pipelines.heads.table``)
    OUT/selective_heads.csv     per language and metric, the heads whose ablation hurts it most against the others
    OUT/sinks.csv               attention sinks per block, head and language (``engine.pipelines.heads.sinks``)
    OUT/figures/heads.png       layer x head heatmaps of every metric
    OUT/figures/heads_by_language.png   per language, R@1 change at the last scored layer
    OUT/manifest.json           the run's settings: a rerun with others is refused
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time

import numpy as np

from engine import captions
from engine.errors import LanguageError
from engine.faults import fault_point
from engine.models.family import FAMILIES, load_encoder
from engine.pipelines.heads import figures, sinks
from engine.pipelines.heads import table as table_lib
from engine.pipelines.heads.ablate import Decoding, Scores, ablation_pass, evaluation_set
from engine.pipelines.heads.config import HeadsConfig, HeadsError
from engine.pipelines.heads.importance import ce_importance, contrastive_importance
from engine.pipelines.stages.early_exit import has_decoder, score_normalizer
from engine.runtime.runs import RunSummary, output_run, progress_bar, work_claims
from engine.runtime.units import claimed_units
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_value
from engine.stores.provenance import identity, not_the_stores_model
from engine.stores.reader import open_store
from engine.stores.records import npz_bytes, read_npz

log = logging.getLogger(__name__)

PARTS = "parts/"


@dataclasses.dataclass
class HeadsSummary(RunSummary):
    blocks: int = 0
    heads: int = 0
    utterances: int = 0
    windows: int = 0
    passes: int = 0  # parts this process computed (the others were read back or done by other workers)
    notes: list = dataclasses.field(default_factory=list)  # what was not scored, and why
    top: list = dataclasses.field(default_factory=list)  # report lines: the heads that matter most
    paths: tuple = ()

    def report(self) -> str:
        lines = [f"heads: {self.blocks} blocks x {self.heads} heads ablated one at a time on {self.utterances} "
                 f"utterances ({self.windows} windows) in {self.seconds:.1f} s; {self.passes} parts computed here",
                 *self.notes, *self.top, *self.skip_lines(), *(f"wrote {p}" for p in self.paths)]  # fmt: skip
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """What a run works with, once checked."""

    encoder: object
    evaluation: object
    scored: tuple[int, ...]  # the scored layers
    masked: object  # HeadMasked over the pass's layers
    decoding: Decoding | None
    trainer: object | None  # for the ce loss
    prompts: dict  # store language -> the decoder's prompt language (None: no token)
    created: dict  # the store manifest's record of its dataset (figure subtitles)


def run_heads(config: HeadsConfig) -> HeadsSummary:
    """Ablates, scores and writes (module docstring); returns the summary."""
    start = time.perf_counter()
    summary = HeadsSummary()
    setup = _setup(config, summary)
    masked, evaluation = setup.masked, setup.evaluation
    summary.blocks, summary.heads = masked.blocks, masked.heads
    summary.utterances, summary.windows = evaluation.n, len(evaluation.inputs)
    for lang, uid, reason in evaluation.skipped:
        summary.skip(reason, lang, uid)
    url = config.run.out
    _, kv = open_kvstore(url)
    claims = work_claims(config.run, "heads", kv)
    fix = repair_hint(url, "heads")
    units = ["none", *(f"block{b}" for b in range(1, masked.blocks + 1))]
    units += ["importance"] if config.losses else []
    units += ["attention"] if setup.encoder.attention_stats is not None else []

    def key(unit: str) -> str:
        return f"{PARTS}{unit}.npz"

    def stored(unit: str) -> bool:
        return read_value(kv, key(unit), url).state == "value"

    # what the parts were measured on: the layer store and the utterances chosen (a resume on a store encoded again,
    # or with other utterances done first, keeps no part of the old ones)
    chosen = json.dumps([evaluation.langs, np.asarray(evaluation.label).tolist(), evaluation.ids, evaluation.texts])
    inputs = {"layer_store": identity(open_store(config.store).manifest),
              "utterances": hashlib.sha256(chosen.encode()).hexdigest()}  # fmt: skip
    with output_run(config, "heads", HeadsError, claims=(claims,), inputs=inputs) as lease:
        missing = [u for u in units if not stored(u)]
        per_unit = {"none": 1, "importance": len(config.losses), "attention": 1}
        total = sum(per_unit.get(u, masked.heads) for u in missing) * len(evaluation.inputs)
        bar = progress_bar(total, "heads", "window", config.run.progress)
        what = "passes (no ablation, one per block, importance, attention)"
        for unit in claimed_units(claims, lease, summary, bar, missing, stored, len(units), what):
            fault_point("before_part")  # test-only (engine.faults): the unit's claim is held
            arrays = _compute(unit, setup, config, bar, summary)
            write_outputs(kv, {key(unit): npz_bytes(arrays)}, url)
            fault_point("after_part")  # test-only: written, its claim not yet released
            summary.passes += 1
            log.info("heads: %s done", unit)
        bar.close()
        parts = {unit: _read_part(kv, key(unit), url, fix, evaluation) for unit in units}
        writes = _outputs(parts, setup, config, summary)
        write_outputs(kv, writes, url)
    summary.paths = tuple(url.rstrip("/") + "/" + k for k in writes)
    summary.seconds = time.perf_counter() - start
    return summary


def _setup(config: HeadsConfig, summary: HeadsSummary) -> Setup:
    reader = open_store(config.store)
    langs, encoder = checked(config, reader)
    scored, layers, decoder, trainer = models(config, encoder, reader.info, summary.notes)
    prompts = prompt_languages(trainer, langs)
    top = encoder.n_layers_out - 1
    decoding = None
    if decoder is not None:
        codes = {lang: decoder.language(lang, {}) for lang in langs}
        normalizers = {lang: score_normalizer(decoder, lang, code) for lang, code in codes.items()}
        decoding = Decoding(decoder, codes, normalizers, layers.index(top), config.max_new_tokens)
    evaluation = evaluation_set(reader, encoder, langs, config.utterances)
    if evaluation.n == 0:
        raise HeadsError(f"no utterance of {langs} could be read from the store's audio: nothing to ablate")
    created = reader.manifest.get("created") or {}
    return Setup(encoder, evaluation, scored, encoder.head_masked(layers), decoding, trainer, prompts, created)


def prompt_languages(trainer, langs: list[str]) -> dict[str, str | None]:
    """Each store language's prompt language in ``trainer`` (``Trainer.language``), None where the model has none (the
    ce loss leaves its utterances out); empty without a trainer."""
    if trainer is None:
        return {}
    out = {}
    for lang in langs:
        try:
            out[lang] = trainer.language(lang)
        except LanguageError:
            out[lang] = None
    return out


def checked(config: HeadsConfig, reader) -> tuple[list[str], object]:
    """(the run's languages, the loaded encoder), once both are checked against the store (the run's and the plan's
    refusals)."""
    info = reader.info
    langs = list(config.langs) if config.langs else list(reader.languages)
    missing = sorted(set(langs) - set(reader.languages))
    if missing:
        raise HeadsError(f"languages {missing} are not in the layer store, which has {list(reader.languages)}")
    if len(langs) < 2:
        raise HeadsError(f"heads scores retrieval and language ID across languages: give at least two, got {langs}")
    encoder = load_encoder(config.model, adapter=config.adapter)
    if encoder.sha256 != info.checkpoint_sha256 or encoder.family != info.family:
        raise HeadsError(not_the_stores_model(info, encoder.name, encoder.sha256, config.model))
    return langs, encoder


def models(config: HeadsConfig, encoder, info, notes: list) -> tuple[tuple[int, ...], tuple[int, ...], object, object]:
    """(the scored layers, the pass's layers, the text decoder or None, the trainer of the ce loss or None); what is
    not scored, and why, goes to ``notes``."""
    top = encoder.n_layers_out - 1
    scored = tuple(config.layers) if config.layers is not None else tuple(sorted({(top - 1) // 2 + 1, top}))
    bad = [la for la in scored if not 0 <= la <= top]
    if bad:
        raise HeadsError(f"--layers {bad} are not layers of this model (0..{top}: {encoder.layer_meaning})")
    family = FAMILIES[encoder.family]
    wanted = has_decoder(info) and (config.decode or "ce" in config.losses)
    decoder = family.decoder(config.model) if wanted else None
    trainable = decoder is not None and decoder.caps.training and family.trainer is not None  # OWSM-CTC: no
    trainer = family.trainer(config.model) if trainable and "ce" in config.losses else None
    decoder = decoder if config.decode else None
    if encoder.attention_stats is None:
        notes.append(f"attention statistics and sinks: not measured ({encoder.name}: the {encoder.family} encoder "
                     "does not offer its attention weights, Encoder.attention_stats)")  # fmt: skip
    if "ce" in config.losses and trainer is None:
        notes.append(f"importance ce: not scored ({encoder.name} has no text decoder to train)")
    if config.decode and decoder is None:
        notes.append(f"WER/CER: not scored ({encoder.name} has no text decoder)")
    layers = tuple(sorted({*scored, *((top,) if decoder or trainer else ())}))  # the top: the decoder's memory
    return scored, layers, decoder, trainer


def _compute(unit: str, setup: Setup, config: HeadsConfig, bar, summary: HeadsSummary) -> dict:
    masked, evaluation, enc = setup.masked, setup.evaluation, setup.encoder
    scored = [masked.layers.index(la) for la in setup.scored]
    if unit == "attention":
        return _attention(setup, config, bar)
    if unit == "importance":
        ones = np.ones((1, masked.blocks, masked.heads), np.float32)
        quiet = progress_bar(0, "", "", enabled=False)  # the unablated pooled states the contrastive loss reads
        none = ablation_pass(masked, evaluation, ones, scored, None, config.batch_size, enc.collate, quiet)
        got = []
        if "contrastive" in config.losses:
            pooled = none.pooled[0, -1]  # the last scored layer, unablated
            got.append(contrastive_importance(masked, evaluation, pooled, scored[-1], config, enc.collate, bar))
        if setup.trainer is not None:
            top = masked.layers.index(enc.n_layers_out - 1)
            got.append(ce_importance(masked, evaluation, setup.trainer, setup.prompts, top, config, enc.collate, bar))
        out = {"ids": np.array(evaluation.ids)}
        for imp in got:
            out |= {
                f"{imp.loss}_{name}": np.asarray(value)
                for name, value in (
                    ("grads", imp.grads),
                    ("used", imp.used),
                    ("value", imp.value),
                    ("left_out", imp.left_out),
                )
            }
        return out
    if unit == "none":
        masks = np.ones((1, masked.blocks, masked.heads), np.float32)
    else:
        block = int(unit[len("block") :])
        masks = np.ones((masked.heads, masked.blocks, masked.heads), np.float32)
        masks[np.arange(masked.heads), block - 1, np.arange(masked.heads)] = 0
    scores = ablation_pass(masked, evaluation, masks, scored, setup.decoding, config.batch_size, enc.collate, bar)
    return scores.arrays() | {"masks": masks, "ids": np.array(evaluation.ids)}


def _attention(setup: Setup, config: HeadsConfig, bar) -> dict:
    """The unablated model's attention statistics and sinks per window (``AttentionStats.measure``): ``stats
    f32[window, blocks, heads, 3]``, ``top_share f32[window, blocks, heads + 1, k]``, ``top_frame``, ``first_share``
    and ``keys``, k = ``--sink_frames``."""
    evaluation, encoder = setup.evaluation, setup.encoder
    measured = encoder.attention_stats  # once: a family's property builds a new object, and each compiles its own
    out = []
    size = config.batch_size
    for start in range(0, len(evaluation.inputs), size):
        inputs = evaluation.inputs[start : start + size]
        frames = np.zeros(size, np.int32)
        frames[: len(inputs)] = evaluation.frames[start : start + size]
        got = measured.measure(encoder.collate(list(inputs), size), frames, config.local_frames, config.sink_frames)
        out.append({name: value[: len(inputs)] for name, value in got.items()})
        bar.update(len(inputs))
    return {name: np.concatenate([o[name] for o in out]) for name in out[0]} | {"ids": np.array(evaluation.ids)}


def _read_part(kv, key: str, url: str, fix: str, evaluation) -> dict:
    found = read_output(kv, key, url, fix=fix)
    if found is None:  # finished by every worker, yet gone: deleted under the run
        raise HeadsError(f"{url}/{key} is missing after every unit was done: rerun to redo it")
    data = read_npz(found, key, url, fix)
    if list(data["ids"]) != list(evaluation.ids):
        raise HeadsError(f"{url}/{key} was made from other utterances than the store now gives: use a new --out")
    return data


def _outputs(parts: dict, setup: Setup, config: HeadsConfig, summary: HeadsSummary) -> dict[str, bytes]:
    def scores(unit: str) -> Scores:
        return Scores(**{f.name: parts[unit][f.name] for f in dataclasses.fields(Scores)})

    blocks = [scores(f"block{b}") for b in range(1, setup.masked.blocks + 1)]
    none = scores("none")
    rows = table_lib.rows(
        setup, none, blocks, parts.get("importance"), parts.get("attention"), config.seed, summary.notes
    )
    selective = table_lib.selective(rows, config.top)
    summary.top = table_lib.report_lines(rows, selective)
    for loss in config.losses:
        imp = parts.get("importance", {})
        if f"{loss}_value" in imp:
            summary.notes.append(f"importance {loss}: loss {float(imp[f'{loss}_value']):.4f} at the unablated model; "
                                 f"{int(imp[f'{loss}_left_out'])} utterances left out of it")  # fmt: skip
    per_language = np.bincount(setup.evaluation.label, minlength=len(setup.evaluation.langs))
    n = "n = " + captions.count_range(per_language, "utterances per language")
    subtitle = captions.source_line(setup.encoder.name, setup.created, n)
    shape = (setup.masked.blocks, setup.masked.heads)
    writes = {
        table_lib.TABLE: table_lib.parquet(rows),
        table_lib.SELECTIVE: table_lib.selective_csv(selective),
        figures.FIGURE: figures.heads_png(rows, *shape, subtitle, config.sink_frames),
        figures.BY_LANGUAGE: figures.by_language_png(rows, *shape, subtitle),
    }
    if "attention" in parts:
        ev = setup.evaluation
        sink_rows = sinks.rows(parts["attention"], ev.langs, ev.label[ev.owner])
        summary.top += sinks.report_lines(sink_rows)
        writes[sinks.CSV] = sinks.sinks_csv(sink_rows)
    return writes
