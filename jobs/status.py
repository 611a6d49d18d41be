"""Where a run stands, read from its output store alone (nothing is written): the writer lease, every worker of each
job that claims units (live, stopped renewing, exited, dead: its claims taken by others), the units done of the run
and by each worker, what is claimed now and by whom, and the time left at the recent rate.

    python -m jobs.status --location /data/run/sim                   # = babelgrid status /data/run/sim
    python -m jobs.status --location gs://bucket/fleurs-sim --watch 60  # again every minute, until interrupted

The records it reads are written by the jobs as they run (BUILD.md, "On accelerators and clusters"); a run that
finished every unit removes them, and `babelgrid verify` checks what a store holds.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from engine.runtime.options import RunOptions, option, validate
from jobs import common


@dataclasses.dataclass(frozen=True)
class StatusConfig:
    location: str = option(help="an output store or folder: local path or kvstore URL", required=True)
    watch: float = option(0.0, "print again every this many seconds until interrupted (0: once)", minimum=0.0)
    run: RunOptions = RunOptions()

    def __post_init__(self):
        validate(self)


common.define_config_flags(
    StatusConfig,
    __name__,
    run=("progress", "kvstore_spec", "store_timeout"),
    required=("location",),
    help={"progress": common.NO_LONG_STAGES.format(job="status", why="it reads a run's records once")},
)


def main() -> int:
    from engine.errors import StoreError
    from engine.runtime.status import layer_store_done, store_status  # loads TensorStore: after the flags
    from engine.stores.kv import open_kvstore

    config = common.config_from_flags(StatusConfig)
    location = config.location
    if "://" not in location and not os.path.isdir(location):
        raise StoreError(f"{location!r} is not a folder: give the --out of a run")
    _, kv = open_kvstore(location)
    while True:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {location}")
        for line in [*store_status(kv, location), layer_store_done(location)]:
            if line:
                print(f"  {line}")
        sys.stdout.flush()
        if not config.watch:
            return 0
        time.sleep(config.watch)


if __name__ == "__main__":
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):  # babelgrid status <location>
        sys.argv[1:2] = ["--location", sys.argv[1]]
    common.run(main)
