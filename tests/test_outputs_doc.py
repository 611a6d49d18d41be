"""docs/outputs.md names every column every job writes: the schemas are read from the code that writes them."""

import pathlib
import re

from engine.pipelines.compare import depth as compare_depth
from engine.pipelines.compare.layers import ROW_COLUMNS as COMPARE_ROW_COLUMNS
from engine.pipelines.decode.hypotheses import HYPOTHESIS_SCHEMA, SCORE_COLUMNS
from engine.pipelines.finetune.run import METRIC_FIELDS
from engine.pipelines.heads import sinks as heads_sinks
from engine.pipelines.heads import table as heads_table
from engine.pipelines.interp.output import PAIR_COLUMNS, SUMMARY_COLUMNS
from engine.pipelines.mixing import run as mixing_run
from engine.pipelines.mixing import summary as mixing_summary
from engine.pipelines.mixing import tiein as mixing_tiein
from engine.pipelines.neurons.run import SELECTIVE_COLUMNS, UNIT_COLUMNS
from engine.pipelines.outliers import run as outliers
from engine.pipelines.outliers import table as outliers_table
from engine.pipelines.probe import run as probe
from engine.pipelines.probes import run as probes
from engine.pipelines.retrieval import asymmetry, delta, subset
from engine.pipelines.retrieval.output import CSV_COLUMNS
from engine.pipelines.sae import run as sae
from engine.pipelines.seqsim.transform import DIMENSION_FIELDS
from engine.pipelines.series.run import COLUMNS as SERIES_COLUMNS
from engine.pipelines.typology import meet as typology_meet
from engine.pipelines.typology import run as typology
from engine.stores import challenge
from engine.stores.schema import INFO_FIELDS
from engine.stores.similarity import done_marker
from engine.stores.utterances import _PARQUET_SCHEMA
from engine.stores.words import WORD_SCHEMA

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "outputs.md"


def test_every_written_column_is_documented():
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", DOC.read_text()))
    written = {
        "layer store utterances.parquet": _PARQUET_SCHEMA.names,
        "layer store manifest": INFO_FIELDS,
        "similarity done marker": [*done_marker([0], [1]), "layer", "dtype"],
        "retrieval.csv": CSV_COLUMNS,
        "words.parquet": WORD_SCHEMA.names,
        "hypotheses.parquet": HYPOTHESIS_SCHEMA.names,
        "scores.csv": SCORE_COLUMNS,
        "challenge <a>__<b>.csv": challenge.PAIR_COLUMNS,
        "challenge summary.csv": challenge.SUMMARY_COLUMNS,
        "subset_comparison.csv": subset.SUBSET_COLUMNS,
        "probe.csv": probe.PROBE_COLUMNS,
        "probe relations.csv": probe.RELATION_COLUMNS,
        "probes lid.csv": probes.LID_COLUMNS,
        "probes samediff.csv": probes.SAMEDIFF_COLUMNS,
        "probes cca.csv": probes.CCA_COLUMNS,
        "interp pairs.parquet": PAIR_COLUMNS,
        "interp summary.csv": SUMMARY_COLUMNS,
        "finetune metrics.csv": METRIC_FIELDS,
        "compare by_depth.csv": compare_depth.DEPTH_COLUMNS,
        "compare challenge_table.csv": compare_depth.CHALLENGE_COLUMNS,
        "compare layer_similarity.parquet": COMPARE_ROW_COLUMNS,
        "retrieval baseline_delta.csv": delta.DELTA_COLUMNS,
        "retrieval asymmetry.csv": asymmetry.ASYMMETRY_COLUMNS,
        "neurons selective_units.csv": SELECTIVE_COLUMNS,
        "neurons units.parquet": UNIT_COLUMNS,
        "heads heads.parquet": heads_table.TABLE_COLUMNS,
        "heads selective_heads.csv": heads_table.SELECTIVE_COLUMNS,
        "heads sinks.csv": heads_sinks.COLUMNS,
        "typology typology.csv": typology.TYPOLOGY_COLUMNS,
        "typology languages.csv": typology.LANGUAGE_COLUMNS,
        "typology meet.csv": typology_meet.MEET_COLUMNS,
        "sae metrics.csv": sae.METRIC_COLUMNS,
        "sae features.parquet": sae.FEATURE_COLUMNS,
        "sae selective_features.csv": sae.SELECTIVE_COLUMNS,
        "outliers outliers.csv": outliers_table.OUTLIER_COLUMNS,
        "outliers dimensions.csv": outliers_table.DIMENSION_COLUMNS,
        "outliers parts/layer-<L>.npz": outliers.PART_FIELDS,
        "seqsim dimension_transform/layer-<L>.npz": DIMENSION_FIELDS,
        "mixing matrices/<lang>.npz": mixing_run.MATRIX_KEYS,
        "mixing mixing.parquet": mixing_summary.COLUMNS,
        "mixing interp.parquet": mixing_tiein.COLUMNS,
        **{f"series {name}": columns for name, columns in SERIES_COLUMNS.items()},
    }
    missing = {what: sorted(set(columns) - named) for what, columns in written.items() if set(columns) - named}
    assert not missing, f"columns written but not described in docs/outputs.md: {missing}"
