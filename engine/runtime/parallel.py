"""Run coordination across the processes of a ``jax.distributed`` run: a barrier that names a dead peer, the heartbeat
it reads, and which process writes.

The data-parallel encoder and its mesh are the models' (``engine.models.common.parallel``). Independent ``--worker``
processes use none of this: they share nothing but the store (``engine.runtime.lease``, ``engine.runtime.claims``).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time

import jax

from engine.errors import BabelgridError
from engine.faults import fault_point
from engine.runtime.options import DEFAULT_HEARTBEAT_TIMEOUT

# How long a process waits at a barrier for live peers. Long, because process 0 may be creating a large output before
# it gets there (the similarity store of the full FLEURS grid: 5151 pairs' arrays, on an object store); a peer that
# dies is named sooner, once its heartbeat has been silent for the heartbeat timeout.
BARRIER_TIMEOUT_S = 3600
HEARTBEAT_EVERY_S = 2.0  # each process's heartbeat key is rewritten this often
POLL_S = 0.5  # a process at a barrier looks at its peers this often
ALIVE = "babelgrid/alive/"
_barriers = itertools.count()  # every process passes the same barriers in the same order
_heartbeat = {"timeout": float(DEFAULT_HEARTBEAT_TIMEOUT), "resume": "", "thread": None, "stop": threading.Event()}

log = logging.getLogger(__name__)


class PeerLostError(BabelgridError, RuntimeError):
    """A process of a ``jax.distributed`` run stopped answering while the others waited for it."""


def _client():
    from jax._src import distributed  # the runtime client orbax.checkpoint's multihost barrier uses

    return distributed.global_state.client


def start_heartbeat(timeout_s: float, resume: str = "") -> None:
    """Starts this process's heartbeat in JAX's key-value store (``babelgrid/alive/<process>``, a counter rewritten
    every ``HEARTBEAT_EVERY_S`` seconds): the barrier names a peer whose counter stood still for ``timeout_s``
    (``--heartbeat_timeout``). ``resume``: the command that resumes the run, for that message."""
    _heartbeat.update(timeout=float(timeout_s), resume=resume)
    if jax.process_count() <= 1 or _heartbeat["thread"] is not None:
        return
    client, me = _client(), jax.process_index()
    who = f"{socket.gethostname()} pid {os.getpid()}"

    stop = _heartbeat["stop"]

    def beat() -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            try:
                client.key_value_set(f"{ALIVE}{me}", f"{n} {who}", allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the service is gone: JAX's runtime ends this process
                return
            if stop.wait(HEARTBEAT_EVERY_S):
                return

    beat_once = f"0 {who}"
    client.key_value_set(f"{ALIVE}{me}", beat_once, allow_overwrite=True)
    _heartbeat["thread"] = threading.Thread(target=beat, name="babelgrid-heartbeat", daemon=True)
    _heartbeat["thread"].start()


def stop_heartbeat() -> None:
    """Stops the heartbeat thread and waits for it, before the client is shut down: a write into a client being
    destroyed aborts the process in C++ ("terminate called after throwing", seen once in CI after a gang run had
    finished its work)."""
    thread = _heartbeat["thread"]
    _heartbeat["stop"].set()
    if thread is not None:
        thread.join(timeout=HEARTBEAT_EVERY_S + 5.0)
    _heartbeat["thread"] = None


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Wait for every process of a ``jax.distributed`` run (a no-op in a single process).

    Each process sets its key under the barrier's name in JAX's key-value store and waits until every process has;
    meanwhile it watches the heartbeat of each process still missing (``start_heartbeat``), and one silent for the
    heartbeat timeout is named in a ``PeerLostError`` (within that timeout plus ``HEARTBEAT_EVERY_S + POLL_S``), with
    the command that resumes. Not JAX's own barrier: in the recoverable mode the jobs run in, it waits out its whole
    timeout for a dead peer (measured: 30 of 30 s). Not ``multihost_utils.sync_global_devices`` either: a collective
    whose first use on CPU sets up a Gloo context with a fixed 30 s deadline (a process that waited longer for process
    0 failed, measured with 102 languages on 2 processes). A barrier name serves once, so each use gets a number.
    """
    if jax.process_count() <= 1:
        return
    fault_point("barrier")  # test-only (engine.faults): a process dies before it reaches a barrier
    client, me, n = _client(), jax.process_index(), jax.process_count()
    prefix = f"babelgrid/barrier/{name}:{next(_barriers)}/"
    client.key_value_set(f"{prefix}{me}", "1")
    start = time.monotonic()
    heard: dict[int, tuple[str, float]] = {}  # peer -> (its last heartbeat, when this process saw it change)
    while True:
        arrived = {key.rsplit("/", 1)[-1] for key, _ in client.key_value_dir_get(prefix)}
        missing = [p for p in range(n) if str(p) not in arrived]
        if not missing:
            return
        now = time.monotonic()
        for peer in missing:
            try:
                beat = client.key_value_try_get(f"{ALIVE}{peer}")
            except Exception:  # noqa: BLE001 - NOT_FOUND: it never beat (died right after connecting)
                beat = ""
            if peer not in heard or heard[peer][0] != beat:
                heard[peer] = (beat, now if peer in heard else start)
            elif now - heard[peer][1] > _heartbeat["timeout"]:
                raise PeerLostError(_lost_message(peer, n, beat, now - heard[peer][1], name))
        if now - start > timeout_s:
            raise PeerLostError(
                f"processes {missing} of {n} did not reach '{name}' within {timeout_s:.0f} s though their heartbeats "
                f"go on. {_resume()}"
            )
        try:  # returns as soon as the first missing process arrives: the processes leave the barrier together
            client.blocking_key_value_get(f"{prefix}{missing[0]}", int(POLL_S * 1000))
        except Exception:  # noqa: BLE001 - DEADLINE_EXCEEDED: not there yet, look at the heartbeats again
            pass


def _lost_message(peer: int, n: int, beat: str, silent: float, name: str) -> str:
    who = beat.split(" ", 1)[1] if " " in beat else "never heard from"
    bound = _heartbeat["timeout"] + HEARTBEAT_EVERY_S + POLL_S
    return (
        f"process {peer} of {n} ({who}) stopped answering: its heartbeat has been silent for {silent:.0f} s while "
        f"process {jax.process_index()} waited for it at '{name}' (a dead process is named within "
        f"--heartbeat_timeout {_heartbeat['timeout']:.0f} s + {bound - _heartbeat['timeout']:.1f} s). {_resume()}"
    )


def _resume() -> str:
    command = _heartbeat["resume"]
    return (
        "Nothing committed is lost: rerun the same command on every process to resume"
        + (f" ({command})" if command else "")
        + ", or start the processes as independent --worker tasks, which need no peer"
    )


def is_process_zero() -> bool:
    """True on the process that creates shared outputs (manifests, arrays) and merges results."""
    return jax.process_index() == 0
