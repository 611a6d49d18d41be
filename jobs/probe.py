r"""The word-level probe: similarity of cross-lingual synonyms vs near-homophones by layer, and word retrieval.

    python -m jobs.encode --out /tmp/words-store --dataset words-demo        # the bundled word set
    python -m jobs.probe --store /tmp/words-store --out /tmp/out              # relations generated
    python -m jobs.probe --store /tmp/words-store --out /tmp/probe-again --relations /tmp/out/relations.csv

Writes OUT/probe.csv, OUT/relations.csv and OUT/figures/probe_by_layer.png; library: engine/pipelines/probe/run.py.
A language without transcriptions (a word list recorded per concept) is probed by id: concept retrieval and synonyms
run; near-homophones, unrelated pairs and the AUC, which need the words, are NA there and named in the summary.
"""

from __future__ import annotations

from engine.pipelines.probe.config import ProbeConfig
from jobs import common

common.define_config_flags(
    ProbeConfig,
    __name__,
    run=("out", "progress", "kvstore_spec", "store_timeout", "strict", "matmul_precision"),
    required=("out",),
    help={"out": "output folder or TensorStore kvstore URL"},
)


def main() -> int:
    from engine.pipelines.probe.run import run_probe  # loads JAX: after the flags, so that --help stays quick

    config = common.config_from_flags(ProbeConfig)
    summary = run_probe(config)
    return common.finish(summary, summary.outputs, strict=config.run.strict)


if __name__ == "__main__":
    common.run(main)
