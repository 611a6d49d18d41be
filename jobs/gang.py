"""The gang form of a job: one run over several processes joined by ``jax.distributed`` (``--coordinator_address``,
``--num_processes``, ``--process_id``, or ``--distributed`` where SLURM or a TPU pod sets the cluster up).

For one model spread over several hosts. A grid of independent units needs none of it: start the processes as
``--worker`` tasks of the cluster's own scheduler instead (BUILD.md, "On accelerators and clusters").

What a gang run adds to a job's start:

- ``supervise``: the process forks before JAX loads; the child runs the job, the parent waits. JAX's runtime ends a
  process with a C++ abort when its coordination service (in process 0) is gone or has declared it dead, and no
  Python code runs in it then; the parent, which holds no JAX, says what happened and the command that resumes, then
  ends the way the child did (the same signal, so a scheduler sees the same end). Signals sent to the parent
  (SIGTERM from a scheduler, Ctrl-C) are passed to the child, and the child dies with its parent.
- ``init_distributed``: JAX's runtime in recoverable mode (a dead peer does not end the others), with
  ``--heartbeat_timeout`` for JAX and for babelgrid's barrier, which names a dead peer within that timeout
  (``engine.runtime.parallel``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import pathlib
import shlex
import signal
import sys
import time

from absl import flags

from engine.runtime.options import DEFAULT_HEARTBEAT_TIMEOUT

FLAGS = flags.FLAGS
SUPERVISED = "BABELGRID_SUPERVISED"  # set in the child, so that it does not fork again
# The signals that end a job early: SIGTERM (what SLURM and Kubernetes send on preemption or scancel), SIGINT (Ctrl-C)
# and SIGHUP (a closed terminal or ssh session). Every job handles them (jobs.common); `babelgrid run` passes them on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FORWARDED = (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
# Set by `babelgrid run` (jobs.studies.run) in a stage's environment: the runner's pid (``stop_with_runner``)
RUNNER_ENV = "BABELGRID_STUDY_RUNNER"
# seconds each process waits at the start for all the others (--init_timeout): JAX's own default
DEFAULT_INIT_TIMEOUT = 300


def define_distributed_flags(module: str) -> None:
    flags.DEFINE_string(
        "coordinator_address", None, "jax.distributed coordinator host:port (multi-host runs)", module_name=module
    )
    flags.DEFINE_integer("num_processes", None, "number of processes in a multi-host run", module_name=module)
    flags.DEFINE_integer("process_id", None, "this process's index in a multi-host run", module_name=module)
    flags.DEFINE_bool(
        "distributed",
        False,
        "initialise jax.distributed from the cluster's environment (SLURM, TPU pods, ...)",
        module_name=module,
    )
    flags.DEFINE_integer(
        "heartbeat_timeout",
        DEFAULT_HEARTBEAT_TIMEOUT,
        "jax.distributed runs: seconds a process may be silent before it is declared dead; a process waiting at a "
        "barrier names such a peer within this plus 2.5 s (JAX's own default, 100 s, was too short on heavily loaded "
        "nodes)",
        module_name=module,
    )
    flags.DEFINE_integer(
        "init_timeout",
        DEFAULT_INIT_TIMEOUT,
        "jax.distributed runs: seconds every process waits at the start for all the others to connect before it "
        "ends, naming this flag (JAX's own default; lower it where a peer that never started should fail fast)",
        lower_bound=1,
        module_name=module,
    )


def asked() -> bool:
    """Whether the command line asks for a ``jax.distributed`` run."""
    return bool(FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.distributed)


def resume_command() -> str:
    """This process's command line, as a user would type it again."""
    program = sys.argv[0]
    if program.endswith(".py"):
        program = f"python -m jobs.{pathlib.Path(program).stem}"
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def _which() -> str:
    index = FLAGS.process_id if FLAGS.process_id is not None else os.environ.get("SLURM_PROCID")
    total = FLAGS.num_processes or os.environ.get("SLURM_NTASKS")
    return f"process {index} of {total}" if index is not None and total else "this process"


def _end_message(sig: int) -> str:
    job = pathlib.Path(sys.argv[0]).stem if sys.argv else "job"
    name = signal.Signals(sig).name
    resume = (
        f"Nothing committed is lost: rerun the same command on every process to resume ({resume_command()}), or start "
        "the processes as independent --worker tasks, which need no coordinator"
    )
    if sig in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS):
        where = f" at {FLAGS.coordinator_address}" if FLAGS.coordinator_address else ""
        return (
            f"{job}: {_which()} was ended by {name} from JAX's runtime: another process of the run died or never "
            f"connected (every process waits --init_timeout {FLAGS.init_timeout} s for all the others at the start), "
            f"or JAX's coordination service (process 0{where}) is gone or declared this process dead "
            f"(--heartbeat_timeout {FLAGS.heartbeat_timeout} s); the lines above name it. {resume}"
        )
    return f"{job}: {_which()} was killed ({name}). {resume}"


def supervise() -> None:
    """Forks (module docstring): returns in the child, which runs the job; the parent never returns."""
    if os.name != "posix" or os.environ.get(SUPERVISED):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        os.environ[SUPERVISED] = "1"
        _die_with_parent()
        return
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _frame: os.kill(child, s))
    _, status = os.waitpid(child, 0)  # retried by Python across the forwarded signals (PEP 475)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        print(_end_message(sig), file=sys.stderr, flush=True)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)  # end as the child did
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (a scheduler's SIGKILL of the parent)."""
    if _signal_at_parent_death(signal.SIGKILL) and os.getppid() == 1:  # the parent died before prctl
        os._exit(1)


def stop_with_runner() -> None:
    """A study's stage (``RUNNER_ENV`` names the `babelgrid run` that started it): Linux sends it SIGTERM when the
    runner dies, SIGKILL included, so that it stops as a stopped job does (its lease and claims released) instead
    of running on orphaned, holding the store against the next run (a probe's). The variable is not passed on."""
    runner = os.environ.pop(RUNNER_ENV, None)
    if runner and _signal_at_parent_death(signal.SIGTERM) and str(os.getppid()) != runner:
        os.kill(os.getpid(), signal.SIGTERM)  # the runner died before prctl


def _signal_at_parent_death(sig: int) -> bool:
    """Whether the kernel now sends ``sig`` to this process when its parent dies (Linux's prctl; False elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False


def init_distributed() -> None:
    """Start JAX's multi-host runtime (explicit flags, or --distributed for auto-detection) and the heartbeat that
    babelgrid's barrier reads."""
    import jax

    from engine.runtime.options import ConfigError
    from engine.runtime.parallel import start_heartbeat

    if "worker" in FLAGS and FLAGS.worker:
        raise ConfigError(
            "--worker runs independent processes, and --distributed / --coordinator_address join processes into one "
            "run: give one or the other (workers need no coordinator)"
        )
    if "claim_ttl" in FLAGS:
        # A process that dies must not take the others down with it: they finish its work once its claims expire
        # (engine.runtime.claims). JAX's coordination service lives in process 0, so its death still ends the run.
        jax.config.update("jax_enable_recoverability", True)
    if FLAGS.coordinator_address or FLAGS.num_processes:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            initialization_timeout=FLAGS.init_timeout,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
        )
    else:
        jax.distributed.initialize(
            initialization_timeout=FLAGS.init_timeout, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout
        )
    start_heartbeat(FLAGS.heartbeat_timeout, resume_command())
    if jax.process_count() > 1:
        logging.info(
            "process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count()
        )


def leave_distributed() -> None:
    """The end of a multi-process run, without a barrier (a dead peer would hang it): every process but 0 disconnects
    from the coordination service; process 0, which runs that service, waits until every other process has
    disconnected or been declared dead (``--heartbeat_timeout``), since its exit would abort those still connected."""
    import jax

    if jax.process_count() <= 1 or "claim_ttl" not in FLAGS:
        return  # without recoverability, JAX's own shutdown barrier ends the processes together
    from jax._src import distributed  # the runtime client: jax.distributed exposes no live-process query

    from engine.runtime.parallel import stop_heartbeat

    if jax.process_index() != 0:
        stop_heartbeat()
        jax.distributed.shutdown()
        return
    client = distributed.global_state.client
    others = list(range(1, jax.process_count()))
    deadline = time.monotonic() + FLAGS.heartbeat_timeout + 10
    said = False
    while client is not None and time.monotonic() < deadline:
        live = set(client.get_live_nodes([0, *others])) & set(others)
        if not live:
            break
        if not said:  # minutes of silence after the summary looked like a hang (a cluster probe's)
            said = True
            logging.getLogger(__name__).info(
                "done; waiting up to %d s for process(es) %s to leave the run (this process runs JAX's coordination "
                "service: its exit would abort them; one that died is declared dead after --heartbeat_timeout)",
                FLAGS.heartbeat_timeout + 10, sorted(live))  # fmt: skip
        time.sleep(0.5)
    stop_heartbeat()  # before the interpreter's exit shuts the client down under it
