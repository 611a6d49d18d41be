"""Scrub a layer store, a similarity store or a job's output: every chunk's checksum, every Parquet and JSON file,
done markers against the chunks; with --repair, mark what is damaged as not done so that a rerun redoes it.

    python -m jobs.verify --location /tmp/demo-store                    # = babelgrid verify /tmp/demo-store
    python -m jobs.verify --location /tmp/demo-store --repair           # then rerun jobs.encode on it
    python -m jobs.verify --location s3://bucket/run1/sim --store_timeout 30

Exit status 1 when anything is damaged (and not repaired). What is checked and repaired: BUILD.md#verify.
"""

from __future__ import annotations

import sys

from engine.pipelines.verify.config import VerifyConfig
from jobs import common

common.define_config_flags(
    VerifyConfig,
    __name__,
    run=("progress", "kvstore_spec", "store_timeout", "break_lease"),
    required=("location",),
)


def main() -> int:
    from engine.pipelines.verify.run import run_verify  # after the flags, so that --help stays quick

    summary = run_verify(common.config_from_flags(VerifyConfig))
    print(summary.report())
    return summary.exit_code


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):  # babelgrid verify <location> [--repair]
        sys.argv[1:2] = ["--location", sys.argv[1]]
    common.run(main)
