"""The outliers job: per layer and language of a layer store, the dimensions of outsized magnitude and how much of
the squared norm and of the cosine between translations they carry; anisotropy and effective rank
(``kernels.outliers`` defines each; docs/outliers.md reads them).

Each layer is a unit (``engine.runtime.claims``): any number of ``--worker`` processes share a run, each measuring
other layers; a layer's part is written whole with its digest as soon as it is done (a rerun reads the done ones
back; a kill loses at most the layers in progress). Writes (docs/outputs.md)::

    OUT/parts/layer-<L>.npz     a layer's measurements, one row per language (PART_FIELDS)
    OUT/outliers.csv            one row per (layer, language) (table.OUTLIER_COLUMNS)
    OUT/dimensions.csv          its outlier dimensions, at most --top a row of outliers.csv (table.DIMENSION_COLUMNS)
    OUT/figures/outliers.png    layer x language heatmaps; anisotropy and effective rank against layer
    OUT/manifest.json           the run's settings: a rerun with others is refused

The tables are made from the parts at the end (every worker that gets there writes the same bytes), so ``--k`` and
``--top`` decide only them; they are recorded with the rest all the same (a folder is one setting's).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from engine import captions
from engine.faults import fault_point
from engine.listing import chosen
from engine.pipelines.outliers import figures, table
from engine.pipelines.outliers.config import OutliersConfig, OutliersError
from engine.pipelines.outliers.measure import Sampling, measure_layer, sampling
from engine.runtime.runs import RunSummary, output_run, progress_bar, work_claims
from engine.runtime.units import claimed_units
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_value
from engine.stores.provenance import store_inputs
from engine.stores.reader import open_store
from engine.stores.records import npz_bytes, read_npz

log = logging.getLogger(__name__)

PARTS = "parts/"
PART_FIELDS = ("languages", "layer", "frames", "utterances", "magnitude", "mean", "norm_share", "spectrum",
               "anisotropy", "anisotropy_pairs", "pooled_sum", "seqsim_sum", "translation_pairs")  # fmt: skip


@dataclasses.dataclass
class OutliersSummary(RunSummary):
    measured: int = 0  # layers measured by this process (the others were read back or done by other workers)
    languages: int = 0
    shared: int = 0  # ids shared by two or more languages
    drawn: int = 0  # of them, drawn for the translation shares
    table: list = dataclasses.field(default_factory=list)  # outliers.csv's rows (dicts)
    outputs: list = dataclasses.field(default_factory=list)

    def report(self) -> str:
        none = "" if self.shared else " (no id is shared by two languages: the cosine shares are NA)"
        lines = [f"outliers: {len({r['layer'] for r in self.table})} layers x {self.languages} languages in "
                 f"{self.seconds:.1f} s; {self.measured} layers measured here",
                 f"translations: {self.drawn} of {self.shared} shared ids drawn{none}",
                 "  layer  outliers  top dim's norm share  outliers' SeqSim share  anisotropy  effective rank",
                 "         (min-max)  (mean over languages, as the next three)"]  # fmt: skip
        for layer in sorted({r["layer"] for r in self.table}):
            own = [r for r in self.table if r["layer"] == layer]
            counts = [r["outliers"] for r in own]

            def mean(column, width, digits, own=own):  # NA as the CSV writes it, not nan
                values = [r[column] for r in own if np.isfinite(r[column])]
                return f"{np.mean(values):{width}.{digits}f}" if values else f"{'NA':>{width}}"

            lines.append(f"  {layer:>5}  {min(counts):>3}-{max(counts):<4}  {mean('top_norm_share', 20, 3)}  "
                         f"{mean('outlier_seqsim_share', 22, 3)}  {mean('anisotropy', 10, 3)}  "
                         f"{mean('effective_rank', 14, 1)}")  # fmt: skip
        lines += self.skip_lines()
        lines += [f"wrote {p}" for p in self.outputs]
        return "\n".join(lines)


def checked(config: OutliersConfig, reader) -> tuple[list[str], list[int]]:
    """The run's languages and layers, refused (before anything is recorded) where the store cannot give them."""
    langs = chosen("language", config.langs, reader.languages, OutliersError, "the store")
    layers = chosen("layer", config.layers, reader.info.layers, OutliersError, "the store")
    if not langs:  # an empty store (encode --allow_empty) failed with an IndexError deep in the measuring
        raise OutliersError(f"the layer store {reader.url!r} holds no language: nothing to measure; encode into it")
    empty = [lang for lang in langs if not (np.asarray(reader.lengths(lang)) > 0).any()]
    if empty:
        raise OutliersError(f"{empty} have no done utterance in the layer store {reader.url!r}: nothing of theirs to "
                            "measure; leave them out with --langs, or encode them")  # fmt: skip
    return langs, layers


def run_outliers(config: OutliersConfig) -> OutliersSummary:
    """Measures every chosen layer and writes the tables and the figure (module docstring)."""
    started = time.monotonic()
    reader = open_store(config.store)
    langs, layers = checked(config, reader)
    s = sampling(reader, langs, config.translations, config.frame_pairs, config.seed)
    summary = OutliersSummary(languages=len(langs), shared=s.shared, drawn=s.drawn)
    for lang in langs:
        lengths = np.asarray(reader.lengths(lang))
        ids = reader.utterances_table(lang).column("id").to_pylist()
        for u in np.flatnonzero(lengths < 0):
            summary.skip("not_encoded", lang, ids[u])
    url = config.run.out
    _, kv = open_kvstore(url)
    claims = work_claims(config.run, "outliers", kv)
    fix = repair_hint(url, "outliers")

    def key(layer: int) -> str:
        return f"{PARTS}layer-{layer}.npz"

    def stored(unit: str) -> bool:
        return read_value(kv, key(int(unit)), url).state == "value"

    # the store's identity and utterances done: a rerun after encoding went on measured the missing layers, then
    # refused the old ones (a probe's); it is refused before any work now
    inputs = store_inputs(reader, langs)
    with output_run(config, "outliers", OutliersError, ignore=("block",), claims=(claims,), inputs=inputs) as lease:
        missing = [str(layer) for layer in layers if not stored(str(layer))]
        bar = progress_bar(len(missing) * 2 * len(langs), "outliers", "step", config.run.progress)
        for unit in claimed_units(claims, lease, summary, bar, missing, stored, len(layers), "layers"):
            fault_point("before_part")  # test-only (engine.faults): the layer's claim is held
            part = measure_layer(reader, int(unit), s, config.block, bar)
            write_outputs(kv, {key(int(unit)): npz_bytes(part)}, url)
            fault_point("after_part")  # test-only: written, its claim not yet released
            summary.measured += 1
            log.info("outliers: layer %s done", unit)
        bar.close()
        parts = {layer: _read_part(kv, key(layer), url, fix, s) for layer in layers}
        summary.table, dimensions = table.rows(parts, config.k, config.top)
        n = "n = " + captions.count_range([len(v) for v in s.done.values()], "utterances per language")
        subtitle = captions.source_line(reader.info.model_name, reader.manifest.get("created"), n)
        writes = {
            table.OUTLIERS_CSV: table.table_csv(summary.table, table.OUTLIER_COLUMNS),
            table.DIMENSIONS_CSV: table.table_csv(dimensions, table.DIMENSION_COLUMNS),
            figures.FIGURE: figures.outliers_png(summary.table, config.k, subtitle),
        }
        write_outputs(kv, writes, url)
    summary.outputs = [url.rstrip("/") + "/" + k for k in writes]
    summary.seconds = time.monotonic() - started
    return summary


def _read_part(kv, key: str, url: str, fix: str, s: Sampling) -> dict:
    found = read_output(kv, key, url, fix=fix)
    if found is None:  # finished by every worker, yet gone: deleted under the run
        raise OutliersError(f"{url}/{key} is missing after every layer was measured: rerun to measure it again")
    data = read_npz(found, key, url, fix)
    missing = sorted(set(PART_FIELDS) - set(data))
    if missing:
        raise OutliersError(f"{url}/{key} lacks {missing}: it is not a part this job wrote. {fix}")
    if [str(x) for x in data["languages"]] != list(s.langs) or any(
        int(n) != len(s.done[lang]) for n, lang in zip(data["utterances"], s.langs, strict=True)
    ):
        raise OutliersError(f"{url}/{key} was measured on other utterances than the store now holds (encoding went "
                            "on since, or the store was written again): use a new --out")  # fmt: skip
    return data
