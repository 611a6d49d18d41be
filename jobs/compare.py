r"""Compare models and layers: retrieval by depth, and CKA / SVCCA / PWCCA / mutual k-NN of every layer pair.

    python -m jobs.compare --stores /data/base,/data/tiny.en --out /tmp/compare     # the demo's two models
    python -m jobs.compare --stores /data/base,/data/tiny.en --out /tmp/c --retrieval /data/sim-base,/data/sim-tiny \
        --retrieval_measure seqsim --challenge /tmp/challenge                       # + the full vs challenge table
    python -m jobs.compare --stores /data/base,/data/large --out /tmp/c --plan --plan_device h100

See engine/pipelines/compare/run.py for the outputs and docs/compare.md for what they show.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from engine.pipelines.compare.run import CompareConfig, run_compare
from jobs import common

DEFAULTS = {f.name: f.default for f in dataclasses.fields(CompareConfig)}  # defaults live in the config only


def _joined(name: str) -> str:
    return ",".join(DEFAULTS[name])


flags.DEFINE_string("stores", None, "(required) comma-separated layer stores of the same audio, one per model")
common.define_out_flag("output folder: local path or TensorStore kvstore URL")
flags.DEFINE_string("names", None, "a name per store for the outputs (default: each store's model name)")
flags.DEFINE_string("retrieval", None, "a jobs.retrieval --out folder per store ('' for one = compute mean-pooled)")
flags.DEFINE_string("retrieval_measure", DEFAULTS["retrieval_measure"], "measure read from the --retrieval folders")
flags.DEFINE_string("challenge", None, "jobs.challenge --out folder: also write full vs challenge-set R@1")
common.define_langs_flag("shared by the stores")
flags.DEFINE_string("measures", _joined("measures"), "utterance-level measures: cka,cka_unbiased,svcca,pwcca,mknn")
flags.DEFINE_string("frame_measures", _joined("frame_measures"), "frame-level measures (same choices)")
flags.DEFINE_string("levels", _joined("levels"), "utterance (mean-pooled), frame (paired by time), or both")
flags.DEFINE_integer("frame_sample", DEFAULTS["frame_sample"], "frames per language at the frame level (seeded)")
flags.DEFINE_integer("knn_k", DEFAULTS["knn_k"], "neighbours of mutual k-NN")
flags.DEFINE_float("svcca_keep", DEFAULTS["svcca_keep"], "share of each view's variance SVCCA keeps")
flags.DEFINE_float("cca_epsilon", DEFAULTS["cca_epsilon"], "PWCCA's ridge, relative to the largest variance")
flags.DEFINE_integer("seed", DEFAULTS["seed"], "seed of the frame sample")
flags.mark_flag_as_required("stores")
common.define_run_flags(lease=False)
FLAGS = flags.FLAGS


def main() -> int:
    retrieval = None if FLAGS.retrieval is None else tuple(v.strip() for v in FLAGS.retrieval.split(","))
    config = common.config_from_flags(
        CompareConfig,
        stores=common.parse_list(FLAGS.stores),
        names=common.parse_list(FLAGS.names),
        retrieval=retrieval,
        langs=common.parse_list(FLAGS.langs),
        measures=common.parse_list(FLAGS.measures) or DEFAULTS["measures"],
        frame_measures=common.parse_list(FLAGS.frame_measures) or DEFAULTS["frame_measures"],
        levels=common.parse_list(FLAGS.levels) or DEFAULTS["levels"],
    )
    print(run_compare(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
