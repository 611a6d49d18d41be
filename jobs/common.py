"""Flags and start-up shared by every job: logging, list parsing, jax.distributed."""

from __future__ import annotations

import logging

import jax
from absl import flags

FLAGS = flags.FLAGS


def define_distributed_flags() -> None:
    flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port (multi-host runs)")
    flags.DEFINE_integer("num_processes", None, "number of processes in a multi-host run")
    flags.DEFINE_integer("process_id", None, "this process's index in a multi-host run")
    flags.DEFINE_bool(
        "distributed", False, "initialise jax.distributed from the cluster's environment (SLURM, TPU pods, ...)"
    )


def init_distributed() -> None:
    """Start JAX's multi-host runtime when asked to (explicit flags, or --distributed for auto-detection)."""
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif FLAGS.distributed:
        jax.distributed.initialize()
    if jax.process_count() > 1:
        logging.info(
            "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
        )


def parse_list(value: str | None) -> tuple[str, ...] | None:
    """'a,b, c' -> ('a', 'b', 'c'); '' / 'all' / None -> None (meaning everything)."""
    if value is None or value.strip().lower() in ("", "all"):
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """'all' -> None; '0,3,7' -> (0, 3, 7); '2-5' -> (2, 3, 4, 5)."""
    items = parse_list(value)
    if items is None:
        return None
    out: list[int] = []
    for item in items:
        try:
            if "-" in item:
                lo, hi = (int(x) for x in item.split("-", 1))
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(item))
        except ValueError:
            raise flags.ValidationError(f"--layers: {item!r} is not a layer index or range like 2-5") from None
    return tuple(dict.fromkeys(out))
