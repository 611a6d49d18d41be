r"""All-pairs similarity matrices (SeqSim and pooled baselines) from a layer store.

    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-sim
    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-sim-en --pairs en:* \
        --layers 4-7 --measure seqsim,seqsim_a2b,seqsim_b2a,mean --dtype bfloat16
    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-ot --measure ot --ot_epsilon 0.05 --layers 7
    python -m jobs.seqsim --store gs://b/fleurs --out gs://b/fleurs-sim --memory_budget 40GiB --plan --plan_device h100
    python -m jobs.seqsim --store /tmp/demo-store --out /tmp/demo-sim-fp8 --measure seqsim --seqsim_precision fp8 \
        --plan --plan_device h200  # the 8-bit opt-in: its agreement with bf16 and its assumed speed first

--out is required: similarity stores live beside layer stores, not inside them (a language folder of the layer
store could collide with any name chosen inside it). Re-running with the same --out resumes: complete matrices are
skipped. Layout: docs/similarity.md; library: engine/pipelines/seqsim/run.py.

Memory: a process holds at most --memory_budget bytes of states (default: half its RAM on CPU, half the device's
memory on an accelerator): languages are read in tiles that fit it, a pair too large for it is scored in blocks of
utterances, and a budget too small for some pair's smallest block is refused before anything is written. --plan
prints the budget, how often each language is read and the peak held; the summary what the run held.

Several hosts or accelerators: start any number of processes with the same command and --worker, at any time (a
SLURM array, a Kubernetes indexed Job, Ray tasks: BUILD.md, "On accelerators and clusters"); or one process per host
with --distributed (or --coordinator_address, --num_processes, --process_id). The processes claim work units of about
equal FLOPs (--unit_gflops: pairs grouped, large pairs split into blocks) through claim keys in --out and compute them
on their local devices; a dead process's claims expire after --claim_ttl seconds and the others take them.
`babelgrid status OUT` says where the run stands.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.seqsim.config import DEFAULT_MEASURES, SimilarityConfig
from engine.runtime.options import ConfigError, parse_list
from jobs import common
from kernels.settings import OtConfig


def plan(config, device):
    """The run's --plan (``engine.pipelines.seqsim.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.seqsim.plan import plan_seqsim_run

    return plan_seqsim_run(config, device)


common.define_config_flags(
    SimilarityConfig,
    __name__,
    run=(*common.CLAIMING, "memory_budget"),
    required=("store", "out"),
    help={"out": "similarity store to write (created if missing, resumed if present)"},
    plan=plan,
    distributed=True,
)
# The ot measure's Sinkhorn options (SimilarityConfig.ot, a kernels.settings.OtConfig): its defaults are the flags'.
OT = OtConfig()
flags.DEFINE_float("ot_epsilon", OT.epsilon, "ot measure: entropic blur, absolute, in units of the cost 1 - cos")
flags.DEFINE_bool("ot_debiased", OT.debiased, "ot measure: debiased Sinkhorn divergence (W(a,b) - W(a,a)/2 - W(b,b)/2)")
flags.DEFINE_integer("ot_iterations", OT.max_iterations, "ot measure: most Sinkhorn iterations per pair")
flags.DEFINE_float("ot_threshold", OT.threshold, "ot measure: stop at this L1 error of the plan's row marginal")
FLAGS = flags.FLAGS


def main() -> int:
    from engine.pipelines.seqsim.run import run_similarity  # loads JAX: after the flags, so that --help stays quick

    try:  # a bad --ot_* is one line, as interp's (it was a traceback, even without --measure ot)
        ot = OtConfig(epsilon=FLAGS.ot_epsilon, debiased=FLAGS.ot_debiased, max_iterations=FLAGS.ot_iterations,
                      threshold=FLAGS.ot_threshold)  # fmt: skip
    except ValueError as e:
        raise ConfigError(str(e)) from None
    measures = parse_list(FLAGS.measure) or DEFAULT_MEASURES  # '' and 'all' ask for the default measures
    config = common.config_from_flags(SimilarityConfig, measures=measures, ot=ot)
    return common.finish(run_similarity(config), [f"similarity store: {config.run.out}"], strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
