r"""Probes per layer of a layer store: language ID, same-different word discrimination, CCA against targets.

    python -m jobs.probes --store /tmp/demo-store --out /tmp/demo-probes --probes lid
    python -m jobs.probes --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-probes
    python -m jobs.probes --store gs://b/fleurs --words gs://b/fleurs-words --out gs://b/probes --layers 0-12

Writes OUT/lid.csv, OUT/samediff.csv, OUT/cca.csv and OUT/figures/*_by_layer.png; columns in docs/outputs.md,
reading in docs/probes.md, library in engine/pipelines/probes/.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.probes.plan import plan_probes_run
from engine.pipelines.probes.run import PROBES, ProbesConfig, run_probes
from engine.runtime.plan import register_planner
from jobs import common

register_planner(ProbesConfig.__name__, plan_probes_run)

C = ProbesConfig  # the defaults below are the config's, written once there
common.define_store_flag()
common.define_out_flag("output folder or TensorStore kvstore URL")
flags.DEFINE_string("probes", None, f"probes among {','.join(PROBES)} (default: lid, + samediff,cca with --words)")
flags.DEFINE_string("words", None, "word tokens: the output folder of jobs.align (<lang>/words.parquet)")
common.define_langs_flag()
flags.DEFINE_string("layers", "all", "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)")
flags.DEFINE_integer("folds", C.folds, "lid: outer folds, split by utterance id")
flags.DEFINE_integer("min_chars", C.min_chars, "samediff, cca: shortest word type kept, in letters")
flags.DEFINE_integer("max_tokens", C.max_tokens, "samediff, cca: word tokens sampled per language at most")
flags.DEFINE_integer("block", C.block, "utterances per store read")
flags.DEFINE_integer("seed", C.seed, "seed of the folds and of the token samples")
common.define_run_flags(lease=False)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        ProbesConfig,
        probes=common.parse_list(FLAGS.probes),
        langs=common.parse_list(FLAGS.langs),
        layers=common.parse_layers(FLAGS.layers),
    )
    summary = run_probes(config)
    return common.finish(summary, summary.outputs)


if __name__ == "__main__":
    common.run(main)
