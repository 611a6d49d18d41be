"""Cross-lingual retrieval from a similarity store: R@k and MRR per directed pair, layer and measure, and figures.

    python -m jobs.retrieval --similarity /data/sim                 # writes /data/sim/retrieval.csv + figures/
    python -m jobs.retrieval --similarity gs://b/sim --out /tmp/ret --measure seqsim,mean --layers 4-8 --ks 1,10
    python -m jobs.retrieval --similarity /data/sim --out /tmp/ret-challenge --subset /tmp/challenge   # + subset_*

See engine/pipelines/retrieval/run.py for the CSV columns and the figures.
"""

from __future__ import annotations

from absl import flags

from engine.pipelines.retrieval.run import RetrievalConfig, run_retrieval
from jobs import common
from kernels.metrics import TIE_RULES

flags.DEFINE_string(
    "similarity", None, "(required) similarity store written by the seqsim job: local path or kvstore URL"
)
common.define_out_flag("output folder (default: the similarity store itself when it is local)", required=False)
flags.DEFINE_string("measure", "all", "comma-separated measures (seqsim, mean, centre, duration, ...) or 'all'")
flags.DEFINE_string("layers", "all", "layers: 'all', a list '0,3,7' or ranges '1-4' (0 = conv stem, L+1 = ln_post)")
common.define_langs_flag("(a pair is scored when both are listed)")
flags.DEFINE_integer("figure_layer", None, "heatmap layer (default: the best mean R@1 of seqsim)")
flags.DEFINE_string("ks", "1,5,10", "comma-separated k of recall at k")
flags.DEFINE_enum("ties", "optimistic", list(TIE_RULES), "rank of a correct partner tied with incorrect ones")
flags.DEFINE_string("subset", None, "challenge-set folder (jobs.challenge --out): score each pair's kept ids only")
flags.DEFINE_integer("subset_draws", 20, "with --subset: size-matched random subsets of the full set per pair")
flags.DEFINE_integer("subset_seed", 0, "with --subset: seed of the size-matched random subsets")
flags.mark_flag_as_required("similarity")
FLAGS = flags.FLAGS


@flags.validator("ks", message="--ks must be positive integers such as 1,5,10")
def _check_ks(value):
    items = common.parse_list(value)
    return bool(items) and all(k.isdigit() and int(k) >= 1 for k in items)


def main() -> int:
    config = common.config_from_flags(
        RetrievalConfig,
        measures=common.parse_list(FLAGS.measure),
        layers=common.parse_layers(FLAGS.layers),
        langs=common.parse_list(FLAGS.langs),
        ks=tuple(int(k) for k in common.parse_list(FLAGS.ks)),
    )
    print(run_retrieval(config).report())
    return 0


if __name__ == "__main__":
    common.run(main)
