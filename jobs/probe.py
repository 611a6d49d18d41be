r"""The word-level probe: similarity of cross-lingual synonyms vs near-homophones by layer, and word retrieval.

    python -m jobs.encode --out /tmp/words-store --dataset words-demo        # the bundled word set
    python -m jobs.probe --store /tmp/words-store --out /tmp/probe            # relations generated
    python -m jobs.probe --store /tmp/words-store --out /tmp/probe --relations relations.csv

Writes OUT/probe.csv, OUT/relations.csv and OUT/figures/probe_by_layer.png; library: engine/pipelines/probe/run.py.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.probe.run import ProbeConfig, run_probe
from jobs import common

common.define_store_flag("layer store of single-word clips, id = concept (e.g. encoded from --dataset words-demo)")
common.define_out_flag("output folder or TensorStore kvstore URL")
flags.DEFINE_string("relations", None, "CSV lang_a,word_a,lang_b,word_b,relation (default: generate them)")
common.define_langs_flag()
flags.DEFINE_string("layers", "all", "layers: 'all', a list '0,3,7' or ranges '1-4'")
flags.DEFINE_integer("seeds", 5, "bootstrap resamples per estimate")
flags.DEFINE_integer("seed", 0, "seed of the bootstrap and of the generated unrelated pairs")
common.define_run_flags(strict=True, lease=False)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        ProbeConfig, langs=common.parse_list(FLAGS.langs), layers=common.parse_layers(FLAGS.layers)
    )
    summary = run_probe(config)
    return common.finish(summary, summary.outputs)


if __name__ == "__main__":
    common.run(main)
