r"""All-pairs similarity matrices (SeqSim and pooled baselines) from a layer store.

    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-sim
    python -m jobs.seqsim --store gs://bucket/fleurs --out gs://bucket/fleurs-sim --pairs en_us:* \
        --layers 4-8 --measure seqsim,seqsim_a2b,seqsim_b2a,mean --dtype bfloat16
    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-ot --measure ot --ot_epsilon 0.05

--out is required: similarity stores live beside layer stores, not inside them (a language folder of the layer
store could collide with any name chosen inside it). Re-running with the same --out resumes: complete matrices are
skipped. Layout: docs/similarity.md; library: engine/pipelines/similarity/run.py.

Several hosts: start one process per host with --distributed (or --coordinator_address, --num_processes,
--process_id); the processes claim (layer, pair) matrices one at a time through claim keys in --out and compute them
on their local devices; a dead process's claims expire after --claim_ttl seconds and the others take them.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.similarity.plan import plan_seqsim_run
from engine.pipelines.similarity.run import COMPUTE_DTYPES, DEFAULT_MEASURES, SimilarityConfig, run_similarity
from engine.stores.similarity import MEASURES
from jobs import common
from kernels.ot import OT_EPSILON, OT_MAX_ITERATIONS, OT_THRESHOLD, OtConfig

common.define_store_flag()
common.define_out_flag("similarity store to write (created if missing, resumed if present)")
common.define_langs_flag()
flags.DEFINE_string("layers", "all", "layers to compare: 'all' stored, a list '0,3,7' or ranges '1-4'")
flags.DEFINE_string("pairs", "unordered", "unordered | ordered | list of a:b with '*' for every other language")
flags.DEFINE_string("measure", ",".join(DEFAULT_MEASURES), f"comma list of {', '.join(MEASURES)}")
flags.DEFINE_enum("dtype", "float32", list(COMPUTE_DTYPES), "dtype the states are compared in")
flags.DEFINE_bool("allow_partial", False, "score a partly encoded layer store (done utterances only)")
flags.DEFINE_float("ot_epsilon", OT_EPSILON, "ot measure: entropic blur, absolute, in units of the cost 1 - cos")
flags.DEFINE_bool("ot_debiased", False, "ot measure: debiased Sinkhorn divergence (W(a,b) - W(a,a)/2 - W(b,b)/2)")
flags.DEFINE_integer("ot_iterations", OT_MAX_ITERATIONS, "ot measure: most Sinkhorn iterations per pair")
flags.DEFINE_float("ot_threshold", OT_THRESHOLD, "ot measure: stop at this L1 error of the plan's row marginal")
common.define_run_flags(distributed=True, claims=True)
common.define_plan(SimilarityConfig, plan_seqsim_run, __name__)
FLAGS = flags.FLAGS


def main() -> int:
    config = common.config_from_flags(
        SimilarityConfig,
        langs=common.parse_list(FLAGS.langs),
        layers=common.parse_layers(FLAGS.layers),
        measures=common.parse_list(FLAGS.measure) or DEFAULT_MEASURES,
        ot=OtConfig(
            epsilon=FLAGS.ot_epsilon,
            debiased=FLAGS.ot_debiased,
            max_iterations=FLAGS.ot_iterations,
            threshold=FLAGS.ot_threshold,
        ),
    )
    return common.finish(run_similarity(config), [f"similarity store: {FLAGS.out}"])


if __name__ == "__main__":
    common.run(main)
