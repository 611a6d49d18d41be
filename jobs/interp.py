r"""SeqSimInterp: word pairs that the encoder aligns across languages, and whether they match by meaning or by sound.

    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp \
        --pairs es:it,en:de,en:ru
    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp-retrieved \
        --pairs en:* --layers 4-6 --pooling centre,mean --retrieved 5 --similarity /tmp/demo-sim
    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp-ot \
        --pairs en:de --alignment ot --ot_weights duration
    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp-z \
        --pairs en:de --standardise layer
    python -m jobs.interp --store /tmp/demo-store --words /tmp/demo-words --out /tmp/demo-interp --plan

--words is the align job's --out. Re-running with the same --out resumes per (language pair, layer). Output
layout and method: engine/pipelines/interp/run.py and docs/interp.md; analyst reader: engine/pipelines/interp/reader.py.

Several hosts: start one process per host with --distributed (or --coordinator_address, --num_processes,
--process_id); the processes claim (language pair, layer) units through claim keys in --out; a dead process's claims
expire after --claim_ttl seconds and the others take them. Process 0 merges the parts at the end.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from engine.pipelines.interp.config import InterpConfig
from engine.runtime.options import PARSERS, ConfigError, format_value
from jobs import common
from kernels.settings import OtConfig


def plan(config, device):
    """The run's --plan (``engine.pipelines.interp.plan``), imported only when asked: --help loads no JAX."""
    from engine.pipelines.interp.plan import plan_interp_run

    return plan_interp_run(config, device)


common.define_config_flags(
    InterpConfig,
    __name__,
    run=common.RUN_OPTIONS,
    required=("out",),
    plan=plan,
    help={"out": "output folder or TensorStore kvstore URL (created if missing, resumed if present)"},
    skip=("poolings",),
    distributed=True,
)
# The field is a list, its flag singular; OtConfig (kernels/ot.py) carries no flag help: its flags are named here.
_POOLINGS = {f.name: f for f in dataclasses.fields(InterpConfig)}["poolings"]
flags.DEFINE_string("pooling", format_value(_POOLINGS.default, "list"), _POOLINGS.metadata["help"])
flags.DEFINE_float(
    "ot_epsilon", OtConfig.epsilon, "ot alignment: entropic blur, absolute, in units of the cost 1 - cos"
)
flags.DEFINE_integer("ot_iterations", OtConfig.max_iterations, "ot alignment: most Sinkhorn iterations per plan")
flags.DEFINE_float("ot_threshold", OtConfig.threshold, "ot alignment: stop at this L1 error of the plan's row marginal")
FLAGS = flags.FLAGS


def main() -> int:
    from engine.pipelines.interp.run import run_interp  # loads JAX: after the flags, so that --help stays quick

    try:
        ot = OtConfig(epsilon=FLAGS.ot_epsilon, max_iterations=FLAGS.ot_iterations, threshold=FLAGS.ot_threshold)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    config = common.config_from_flags(InterpConfig, poolings=PARSERS["list"](FLAGS.pooling), ot=ot)
    summary = run_interp(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
