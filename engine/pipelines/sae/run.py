"""The sae job: a sparse autoencoder per chosen layer of a layer store, trained from the store, judged by what its
reconstructions keep, and read for the languages its features fire on.

Each layer is a unit (``engine.runtime.claims``): any number of ``--worker`` processes share a run, each training
other layers; a killed one's layer is taken over and resumed from its last checkpoint. Writes (docs/outputs.md)::

    OUT/layer-<L>/sae_weights.safetensors, cfg.json   the SAE, sae-lens's names, applying to stored states (export)
    OUT/layer-<L>/checkpoints/<step>/                  orbax checkpoints while training (train)
    OUT/layer-<L>/early_exit.parquet                   with --model: each decoded utterance's hypotheses (exit)
    OUT/layer-<L>/early_exit.npz                       its scores, when a later run added --model (LATE_EXITS)
    OUT/activations/layer-<L>/<lang>.safetensors       the first --activations utterances' features, sparse
    OUT/parts/layer-<L>.npz                            the layer's evaluation, written whole last (the unit is done)
    OUT/metrics.csv                                    one row per layer: METRIC_COLUMNS
    OUT/early_exit.csv                                 with --model: one row per (layer, language): EXIT_COLUMNS
    OUT/features.parquet                               one row per (layer, feature, language): FEATURE_COLUMNS
    OUT/selective_features.csv                         the --top most selective features per language and layer
    OUT/neurons_alignment.csv, neurons_alignment.json  with --neurons: SAE features against selective units (neurons)
    OUT/figures/sae_kept.png, figures/sae_languages.png, figures/sae_neurons.png (with --neurons)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import time

import jax
import numpy as np
import pyarrow as pa
from safetensors.numpy import load, save

from engine import captions
from engine.listing import chosen
from engine.pipelines.sae import export, figures
from engine.pipelines.sae import neurons as neurons_lib
from engine.pipelines.sae.config import DEFAULT_BUDGET, SaeConfig, SaeError, total_steps
from engine.pipelines.sae.data import Frames
from engine.pipelines.sae.evaluate import apply, evaluate
from engine.pipelines.sae.exit import EXIT_COLUMNS, early_exit, exit_utterances, load_decoder
from engine.pipelines.sae.train import FALLING, POOR_FVU, loss_drop, train_layer
from engine.runtime.budget import resolve_budget
from engine.runtime.runs import RunSummary, output_run, progress_bar, work_claims
from engine.runtime.units import claimed_units
from engine.stores.integrity import parquet_bytes, read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_value
from engine.stores.provenance import store_inputs
from engine.stores.reader import open_store
from engine.stores.records import csv_bytes, na_cell, npz_bytes, read_npz

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("layer", "fvu", "l0", "dead_share", "dense_share", "r1", "r1_reconstructed", "lid",
                  "lid_reconstructed", "wer", "wer_reconstructed", "cer", "cer_reconstructed", "selective_share",
                  "shared_share", "frames", "steps", "final_loss")  # fmt: skip
EXITS = ("wer", "wer_reconstructed", "cer", "cer_reconstructed")
FEATURE_COLUMNS = ("layer", "feature", "language", "rate", "lape", "selective", "belongs", "shared")
SELECTIVE_COLUMNS = ("layer", "language", "feature", "rate", "lape", "selective", "rank")
PARTS = "parts/"
# A layer trained without --model gets its early exit from a later run given one, into this file beside the layer's:
# its part (and checkpoints) stay as trained, so the SAEs are not trained again.
LATE_EXITS = "early_exit.npz"


@dataclasses.dataclass
class SaeSummary(RunSummary):
    rows: list = dataclasses.field(default_factory=list)  # dicts of METRIC_COLUMNS
    trained: int = 0  # layers trained (or resumed) by this process
    outputs: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [f"sae: {self.seconds:.1f} s; {self.trained} layers trained here"]
        lines.append("  layer    fvu     l0   dead  dense  | R@1 stored/rec  | LID stored/rec | selective shared")
        for r in self.rows:
            lines.append(
                f"  {r['layer']:>5} {r['fvu']:6.3f} {r['l0']:6.1f} {r['dead_share']:6.3f} {r['dense_share']:6.3f}  |"
                f"  {r['r1']:.3f} / {r['r1_reconstructed']:.3f}  |  {r['lid']:.3f} / {r['lid_reconstructed']:.3f}  |"
                f"  {r['selective_share']:.3f}  {r['shared_share']:.3f}"
            )
        if any(np.isfinite(r["wer"]) for r in self.rows):
            lines.append("  layer  early exit WER stored/rec  CER stored/rec")
            lines += [f"  {r['layer']:>5}  {r['wer']:.3f} / {r['wer_reconstructed']:.3f}  "
                      f"{r['cer']:.3f} / {r['cer_reconstructed']:.3f}" for r in self.rows]  # fmt: skip
        lines += self.notes
        lines += [f"wrote {p}" for p in self.outputs]
        return "\n".join(lines)


def _local(url: str) -> pathlib.Path:
    return pathlib.Path(url[len("file://") :] if url.startswith("file://") else url)


def run_sae(config: SaeConfig) -> SaeSummary:
    """Trains, evaluates and exports an SAE per layer (module docstring); a rerun with other settings is refused."""
    started = time.monotonic()
    reader = open_store(config.store)
    langs = chosen("language", config.langs, reader.languages, SaeError, "the store")
    layers = chosen("layer", config.layers, reader.info.layers, SaeError, "the store")
    if len(langs) < 2:
        raise SaeError(f"the language measures need two or more languages; the run has {langs}")
    _check_sizes(config, reader.arrays(langs[0]).embed)  # before a model is loaded or anything recorded
    # The shuffling buffer lives in host memory whatever the device: a --memory_budget beyond its RAM is refused.
    budget = (
        resolve_budget(config.run.memory_budget, jax.devices("cpu")[0]).bytes
        if config.run.memory_budget
        else DEFAULT_BUDGET
    )
    summary = SaeSummary()
    decoder, note = load_decoder(config.model, reader.info)
    summary.notes += [note] if note else []
    url = config.run.out
    _, kv = open_kvstore(url)
    claims = work_claims(config.run, "sae", kv)
    ids_of = {lang: [str(x) for x in reader.utterances_table(lang).column("id").to_pylist()] for lang in langs}
    embed = reader.arrays(langs[0]).embed
    buffer_frames = max(config.batch_size, budget // (embed * 4 * 2))  # the buffer and its shuffled copy

    def key(layer: int) -> str:
        return f"{PARTS}layer-{layer}.npz"

    def stored(unit: str) -> bool:
        return read_value(kv, key(int(unit)), url).state == "value"

    units = neurons_lib.read_units(config.neurons) if config.neurons else None
    if units is not None:
        neurons_lib.shared(units, langs, layers)  # before any work: a folder that cannot be lined up is refused now
    frames = {layer: Frames(reader, layer, langs, config.block, buffer_frames, config.seed) for layer in layers}
    first = frames[layers[0]]
    if first.steps_per_epoch(config.batch_size) == 0:  # every layer holds the same frames: known before the record
        raise SaeError(
            f"the store's {first.total} frames of {langs} do not fill one batch of --batch_size {config.batch_size}: "
            f"give --batch_size of at most {first.total}, or more utterances"
        )
    # The steps each layer trains, recorded in place of --epochs (which only counts them): the folder pins the count
    # trained, whether --steps, --epochs or the default's floor gave it.
    per_epoch = first.steps_per_epoch(config.batch_size)
    steps = total_steps(config, per_epoch)
    config = dataclasses.replace(config, epochs=None, steps=steps)

    def as_steps(stored: dict) -> dict:
        # A folder trained before --steps (64c0ec2) recorded --epochs and no steps: the steps it trained are its
        # epochs' batches, on the same store and --batch_size (which the comparison checks too). Without this, any
        # rerun of such a folder, even one adding --model, was refused for an "epochs" nothing sets any more.
        found = stored.get("inputs")
        if isinstance(found, dict) and "buffer_frames" not in found:  # recorded before the buffer was: not compared
            stored = {**stored, "inputs": {**found, "buffer_frames": buffer_frames}}
        if "steps" in stored or stored.get("epochs") is None:
            return stored
        return {**stored, "epochs": None, "steps": stored["epochs"] * per_epoch}

    # neurons: read afresh at every run, from the finished layers; model: only scores the early exit, which a later
    # run adds to a folder trained without it (load_decoder has checked it is the store's checkpoint)
    ignore = ("block", "checkpoint_every", "neurons", "model")
    inputs = store_inputs(reader, langs)  # a rerun after encoding went on is refused, not given the old layers
    # the shuffling buffer (--memory_budget) sets the batches: a resume with another trained other weights (a probe's)
    inputs["buffer_frames"] = int(buffer_frames)
    with output_run(config, "sae", SaeError, ignore=ignore, claims=(claims,), check=as_steps, inputs=inputs) as lease:
        missing = [str(layer) for layer in layers if not stored(str(layer))]
        quiet = progress_bar(0, "", "", enabled=False)  # each stage of each layer has its own bar (_train_and_write)
        for unit in claimed_units(claims, lease, summary, quiet, missing, stored, len(layers), "layers"):
            layer = int(unit)
            name = f"sae layer {layer} ({summary.trained + 1}/{len(missing)})"
            _train_and_write(config, reader, frames[layer], ids_of, kv, url, name, decoder, langs)
            summary.trained += 1
        parts = {layer: _read_part(kv, key(layer), url) for layer in layers}
        late = _late_exits(parts, decoder, config, reader, kv, url, langs)
        summary.notes += [f"early exit scored now for layers {late}, trained earlier without --model"] if late else []
        writes = _outputs(parts, langs, config, reader, units)
        write_outputs(kv, writes, url)
    if "neurons_alignment.json" in writes:
        aligned = json.loads(writes["neurons_alignment.json"])
        rho = (
            "not defined"
            if aligned["spearman_rho"] is None
            else f"{aligned['spearman_rho']:.3f} (p {aligned['p_value']:.3g})"
        )
        summary.notes.append(f"neurons alignment: Spearman rho of the selective shares over {aligned['cells']} "
                             f"(layer, language) cells {rho}")  # fmt: skip
    summary.rows = [_row(parts[layer]) for layer in layers]
    summary.notes += _training_notes(parts, config)
    summary.outputs = [url.rstrip("/") + "/" + k for k in writes]
    summary.seconds = time.monotonic() - started
    return summary


def _check_sizes(config: SaeConfig, embed: int) -> None:
    """Refuses a ``--k`` past the dictionary, and a dictionary or batch that cannot fit this process's memory (the
    machine's share, ``engine.runtime.budget``), before anything is allocated: ``--expansion 100000`` held 10 GB
    and then ran out of memory."""
    d_sae = config.expansion * embed
    if config.k > d_sae:
        raise SaeError(
            f"--k {config.k} is more than the dictionary's {d_sae} features (--expansion {config.expansion} x the "
            f"store's {embed} dimensions): give --k of at most {d_sae}, or a larger --expansion"
        )
    # float32 parameters, their gradients and Adam's two moments; a batch's pre-activations, codes and frames
    state = 4 * 4 * (2 * embed * d_sae + d_sae + embed)
    batch = 4 * config.batch_size * (3 * d_sae + 4 * embed)
    budget = resolve_budget(None)
    if state + batch > budget.bytes:
        raise SaeError(
            f"--expansion {config.expansion} and --batch_size {config.batch_size} over the store's {embed} dimensions "
            f"need about {_gib(state + batch)} (the dictionary's training state {_gib(state)}, a batch "
            f"{_gib(batch)}), more than the {_gib(budget.bytes)} this process may use ({budget.source}): lower "
            "--expansion or --batch_size"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _training_notes(parts: dict, config: SaeConfig) -> list[str]:
    """A line per layer whose SAE looks undertrained: its loss still falling at the end (``loss_drop`` above
    ``FALLING``) or its FVU above ``POOR_FVU``, with what to change."""
    notes = []
    for layer, part in parts.items():
        steps, fvu, drop = int(part["steps"]), float(part["fvu"]), loss_drop(part["losses"])
        falling, poor = drop > FALLING, fvu > POOR_FVU
        if not (falling or poor):
            continue
        why = []
        if falling:
            why.append(f"its loss was still falling at the end ({drop:.1%} lower over the last tenth of its {steps} "
                       "steps than over the tenth before)")  # fmt: skip
        if poor:
            why.append(f"its FVU {fvu:.3f} is above {POOR_FVU}")
        fix = f"give --steps {2 * steps}" + (
            "" if falling else f", or more features per frame (--k above {config.k}) or a larger --expansion"
        )
        notes.append(f"layer {layer}: undertrained: {' and '.join(why)}; {fix} (into a new --out: a folder keeps "
                     "the settings it was trained with)")  # fmt: skip
    return notes


def _bar(progress, name: str, stage: str, total: int, unit: str):
    """One stage's bar of one layer: no stage sits under another's finished bar while it runs."""
    return progress_bar(total, f"{name}: {stage}", unit, progress)


def _train_and_write(config, reader, frames: Frames, ids_of, kv, url, name: str, decoder, langs) -> None:
    layer = frames.layer
    root = _local(url) / f"layer-{layer}" / "checkpoints"
    progress = config.run.progress
    with contextlib.closing(_bar(progress, name, "train", config.steps, "step")) as bar:
        trained = train_layer(config, frames, root, bar)
    with contextlib.closing(_bar(progress, name, "evaluate", len(frames.utterances) + 4, "utt")) as bar:
        ev = evaluate(frames, trained.params, trained.scale, trained.spec.k, ids_of, config.eval_utterances,
                      config.activations, config.seed, bar)  # fmt: skip
    cfg = export.config_of(trained, reader.info, reader.url, config)
    writes = {
        f"layer-{layer}/{export.WEIGHTS}": export.weights_bytes(trained.params, trained.scale),
        f"layer-{layer}/{export.CONFIG}": (json.dumps(cfg, indent=1) + "\n").encode(),
    }
    for lang, kept in ev.activations.items():
        if kept["ids"]:
            tensors = {"lengths": np.asarray(kept["lengths"], np.int32), "indices": np.concatenate(kept["indices"]),
                       "values": np.concatenate(kept["values"])}  # fmt: skip
            metadata = {"ids": json.dumps(kept["ids"])}
            writes[f"activations/layer-{layer}/{lang}.safetensors"] = save(tensors, metadata=metadata)
    exits = {}
    if decoder is not None:  # the exported weights, as analysts apply them
        exits, writes[f"layer-{layer}/early_exit.parquet"] = _exits(
            decoder, reader, layer, export.folded(trained.params, trained.scale), trained.spec.k, config, langs, name
        )
    write_outputs(kv, writes, url)
    metrics = {name: np.float64(getattr(ev, name)) for name in ("fvu", "l0", "dead_share", "dense_share", "r1",
               "r1_reconstructed", "lid", "lid_reconstructed")}  # fmt: skip
    part = {**metrics, "layer": np.int64(layer), "frames": np.int64(ev.frames), "steps": np.int64(trained.steps),
            "losses": trained.losses, "rates": ev.rates, "lape": ev.entropy, "threshold": np.float64(ev.threshold),
            "selected": ev.selective, "belongs": ev.belongs, "shared": ev.shared,
            "languages": np.asarray(ev.languages), **exits}  # fmt: skip
    write_outputs(kv, {f"{PARTS}layer-{layer}.npz": npz_bytes(part)}, url)  # last: the unit is done
    log.info("sae: layer %d done (fvu %.3f, l0 %.1f)", layer, ev.fvu, ev.l0)


def _exits(decoder, reader, layer: int, weights: dict, k: int, config: SaeConfig, langs,
           name: str) -> tuple[dict, bytes]:  # fmt: skip
    """Layer ``layer``'s early exit with the SAE of exported ``weights`` and ``k`` standing in: its part's
    ``exit_*`` arrays (``EXIT_COLUMNS``) and ``early_exit.parquet``'s bytes."""

    def reconstruct(x):
        return apply(weights, 1.0, k, x)[0]

    total = sum(len(exit_utterances(reader, lang, config.decode_utterances)) for lang in langs)
    with contextlib.closing(_bar(config.run.progress, name, "early exit", total, "utt")) as bar:
        scores = early_exit(decoder, reader, layer, reconstruct, langs, config.decode_utterances,
                            config.max_new_tokens, config.decode_batch, bar)  # fmt: skip
    exits = {f"exit_{c}": np.asarray([r[c] for r in scores.rows]) for c in EXIT_COLUMNS[1:]}
    return exits, _hypotheses_bytes(scores.hypotheses)


def _late_exits(parts: dict, decoder, config: SaeConfig, reader, kv, url: str, langs) -> list[int]:
    """Adds to each part trained without ``--model`` the early exit a later run scored (``LATE_EXITS``); with
    ``decoder``, first scores the layers that have none, from their exported SAE. Returns the layers scored here."""
    scored, fix = [], repair_hint(url, "sae")
    for layer, part in parts.items():
        if "exit_language" in part:  # trained with --model
            continue
        name = f"layer-{layer}/{LATE_EXITS}"
        data = read_output(kv, name, url, fix=fix)
        if data is None and decoder is not None:
            weights = load(_layer_file(kv, url, layer, export.WEIGHTS))
            # --k is the folder's (the manifest compares it) and the trained one (_check_sizes refused one past the
            # dictionary, which training would have cut)
            exits, hypotheses = _exits(decoder, reader, layer, weights, config.k, config, langs, f"sae layer {layer}")
            write_outputs(kv, {f"layer-{layer}/early_exit.parquet": hypotheses, name: npz_bytes(exits)}, url)
            scored.append(layer)
        elif data is not None:
            exits = read_npz(data, name, url, fix=fix)
        else:
            continue
        part.update(exits)
    return scored


def _layer_file(kv, url: str, layer: int, name: str) -> bytes:
    key = f"layer-{layer}/{name}"
    data = read_output(kv, key, url, fix=repair_hint(url, "sae"))
    if data is None:
        raise SaeError(f"{key} is missing from {url!r}, though the layer is done: {repair_hint(url, 'sae')}")
    return data


def _hypotheses_bytes(hypotheses: dict) -> bytes:
    """One row per decoded utterance: language, id, reference, and the hypotheses from the stored and reconstructed
    layer."""
    table = {"language": [], "id": [], "reference": [], "hypothesis": [], "hypothesis_reconstructed": []}
    for (lang, kind), rows in hypotheses.items():
        if kind != "stored":
            continue
        for (uid, reference, hypothesis), (_, _, rebuilt) in zip(rows, hypotheses[lang, "reconstructed"], strict=True):
            for name, value in zip(table, (lang, uid, reference, hypothesis, rebuilt), strict=True):
                table[name].append(value)
    return parquet_bytes(pa.table(table))


def _exit_rows(part: dict) -> list[list]:
    """``early_exit.csv``'s rows of one layer's part (none where nothing was decoded)."""
    if "exit_language" not in part:
        return []
    columns = [part[f"exit_{c}"] for c in EXIT_COLUMNS[1:]]
    return [
        [int(part["layer"]), *(v.item() if hasattr(v, "item") else v for v in row)]
        for row in zip(*columns, strict=True)
    ]


def _read_part(kv, key: str, url: str) -> dict:
    data = read_output(kv, key, url, fix=repair_hint(url, "sae"))
    if data is None:
        raise SaeError(f"{key} is missing from {url!r}: a worker has not finished it; rerun the job to finish it")
    return read_npz(data, key, url, fix=repair_hint(url, "sae"))


def _row(part: dict) -> dict:
    live = ~np.isnan(part["lape"])
    row = {name: float(part[name]) for name in ("fvu", "l0", "dead_share", "dense_share", "r1", "r1_reconstructed",
                                                "lid", "lid_reconstructed")}  # fmt: skip
    pooled = [i for i, lang in enumerate(part.get("exit_language", [])) if lang == "all"]
    row.update({name: float(part[f"exit_{name}"][pooled[0]]) if pooled else float("nan") for name in EXITS})
    row.update(layer=int(part["layer"]), frames=int(part["frames"]), steps=int(part["steps"]),
               final_loss=float(part["losses"][-1]), selective_share=float(part["selected"][live].mean()),
               shared_share=float(part["shared"][live].mean()))  # fmt: skip
    return row


def _outputs(parts: dict, langs: list, config: SaeConfig, reader, units) -> dict[str, bytes]:
    rows = [_row(parts[layer]) for layer in parts]
    # NA where nothing was measured (no --model: no word error rates), as in every other table; `nan` was written
    writes = {"metrics.csv": csv_bytes(METRIC_COLUMNS, [[na_cell(r[c]) for c in METRIC_COLUMNS] for r in rows])}
    exit_rows = [row for layer in parts for row in _exit_rows(parts[layer])]
    if exit_rows:
        writes["early_exit.csv"] = csv_bytes(EXIT_COLUMNS, [[na_cell(x) for x in row] for row in exit_rows])
    table, selective_rows = {c: [] for c in FEATURE_COLUMNS}, []
    per_language = np.zeros((len(parts), len(langs)), np.int64)
    for li, (layer, part) in enumerate(parts.items()):
        n = len(part["lape"])
        for i, lang in enumerate(langs):
            table["layer"] += [layer] * n
            table["feature"] += list(range(n))
            table["language"] += [lang] * n
            table["rate"] += part["rates"][i].tolist()
            table["lape"] += part["lape"].tolist()
            table["selective"] += part["selected"].tolist()
            table["belongs"] += part["belongs"][i].tolist()
            table["shared"] += part["shared"].tolist()
            per_language[li, i] = int(part["belongs"][i].sum())
            # The language's most selective features, threshold or not: live ones that fire most in it, by LAPE.
            live = np.isfinite(part["lape"])
            own = np.flatnonzero(live & (part["rates"][i] == part["rates"].max(axis=0)))
            order = own[np.argsort(part["lape"][own], kind="stable")][: config.top]
            selective_rows += [[layer, lang, int(f), float(part["rates"][i, f]), float(part["lape"][f]),
                                bool(part["selected"][f]), r + 1] for r, f in enumerate(order)]  # fmt: skip
    writes["features.parquet"] = parquet_bytes(pa.table(table))
    writes["selective_features.csv"] = csv_bytes(SELECTIVE_COLUMNS, selective_rows)
    subtitle = captions.source_line(reader.info.model_name, reader.manifest.get("created"), f"{len(langs)} languages")
    writes["figures/sae_kept.png"] = figures.kept_png(rows, subtitle)
    writes["figures/sae_languages.png"] = figures.languages_png(rows, per_language, langs, subtitle)
    if units is not None:
        cells, per_layer, summary = neurons_lib.align(parts, langs, units)
        summary.update(store_model=reader.info.model_name, neurons=config.neurons)
        writes["neurons_alignment.csv"] = csv_bytes(neurons_lib.ALIGN_COLUMNS, cells)
        writes["neurons_alignment.json"] = (
            json.dumps(
                {**summary, "by_layer": [dict(zip(neurons_lib.LAYER_COLUMNS, r, strict=True)) for r in per_layer]},
                indent=1,
            )
            + "\n"
        ).encode()
        writes["figures/sae_neurons.png"] = figures.neurons_png(cells, per_layer, summary, subtitle)
    return writes
