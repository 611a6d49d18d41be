"""Start-up shared by every job: flags generated from the job's config dataclass, logging, jax.distributed.

A job's flags are its config's fields (``engine.runtime.options.option``: defaults written once, in the dataclass),
plus the run options it takes; it builds its config from them and starts through ``run``::

    common.define_config_flags(SimilarityConfig, __name__, run=("out", "progress", "claim_ttl", ...),
                               required=("store", "out"), plan=plan_seqsim,
                               distributed=True)

    def main() -> int:
        config = common.config_from_flags(SimilarityConfig)
        return common.finish(run_similarity(config), [f"similarity store: {config.run.out}"])

    if __name__ == "__main__":
        common.run(main)
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable

from absl import app, flags
from absl import logging as absl_logging

from engine.errors import BabelgridError
from engine.runtime import stops
from engine.runtime.devices import DEVICES, get_device
from engine.runtime.options import PARSERS, ConfigError, RunOptions, format_value
from engine.runtime.stops import Interrupted  # the exception a stop signal raises (engine.runtime.stops)
from engine.stores.records import where_instead
from jobs import gang

FLAGS = flags.FLAGS

# Every run option (engine.runtime.options.RunOptions): what a job that writes a store with claims takes.
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunOptions))
# The run options of a job that claims units but has no use for --strict or --memory_budget (neurons; seqsim adds the
# budget): what a --worker of it needs.
CLAIMING = ("out", "progress", "claim_ttl", "break_lease", "kvstore_spec", "store_timeout", "matmul_precision",
            "worker", "compile_cache")  # fmt: skip

# --progress of a job with nothing long to show: every job takes the flag, so that one command line suits any job
NO_LONG_STAGES = "accepted, as by every job; {job} has no stage long enough for a bar ({why}), so it shows none"

# A job's plan (--plan): its config and the target device (None: only here) -> the plan (engine.runtime.plan.Plan).
# The job's own small function, which imports its pipeline's plan module only when called, so that --help loads no JAX.
PlanFunction = Callable
_PLANS: dict[type, PlanFunction] = {}  # config class -> its job's plan function (define_plan)
# flag -> (its parse rule, its help text), of the config fields that name a location the job reads (``option``'s
# ``reads``): ``check_inputs`` looks for the local ones before the job loads JAX.
_READS: dict[str, tuple[str | None, str]] = {}
# Of those, the flags that name a babelgrid store (a layer store, or seqsim's similarity store): each holds its
# manifest at its root (engine.stores.schema.MANIFEST, engine.stores.similarity.MANIFEST, named here without importing
# them: they load TensorStore).
STORE_FLAGS = ("store", "stores", "similarity")
STORE_MANIFEST = "manifest.json"


def _flag_module(module: str) -> str:
    """The name absl files a job's flags under: the job module's ``__name__``, or ``sys.argv[0]`` when it runs as
    ``__main__`` (so that they show in the job's --helpshort and ``usage``)."""
    return sys.argv[0] if module == "__main__" else module


def define_config_flags(
    cls,
    module: str,
    *,
    run: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    help: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
    plan: PlanFunction | None = None,
    distributed: bool = False,
) -> None:
    """Defines a flag for every field of the config dataclass ``cls`` that carries help text
    (``engine.runtime.options.option``), with the field's name, default, choices and help: defaults are written once,
    in the dataclass. ``run`` names the ``RunOptions`` fields the job takes (``config.run``); ``required`` the fields
    whose flag must be given; ``help`` replaces a field's help text for this job; ``skip`` leaves fields out (the job
    builds them itself). ``plan``: the job's plan function (``define_plan``: --plan/--plan_device); ``distributed``:
    jax.distributed's flags.
    ``module`` is the calling job's ``__name__``."""
    module = _flag_module(module)
    help = help or {}
    fields = [f for f in dataclasses.fields(cls) if f.name != "run" and f.name not in skip and f.metadata.get("help")]
    fields += [f for f in dataclasses.fields(RunOptions) if f.name in run]
    for field in fields:
        _define_field_flag(field, module, help.get(field.name), field.name in required)
    if plan is not None:
        define_plan(cls, plan, module)
    if distributed:
        gang.define_distributed_flags(module)


def _define_field_flag(field, module: str, help_text: str | None, required: bool) -> None:
    meta = field.metadata
    text = help_text or meta["help"]
    default = None if field.default is dataclasses.MISSING else field.default
    required = required or meta.get("required")
    if required:
        text = f"(required) {text}"
        default = None  # a required flag has no default, whatever the library's field holds
    name, choices, parse = flag_name(field), meta.get("choices"), meta.get("parse")
    if meta.get("reads") and not callable(meta["reads"]):  # a dataset spec: its source checks its own paths
        _READS[name] = (parse, meta["help"])
    if parse is not None:
        flags.DEFINE_string(name, format_value(default, parse, meta["help"]), text, module_name=module)
    elif choices is not None and not isinstance(default, bool):
        flags.DEFINE_enum(name, default, [str(c) for c in choices], text, module_name=module)
    elif field.type in ("bool", "bool | None") or isinstance(default, bool):
        flags.DEFINE_bool(name, default, text, module_name=module)
    elif field.type in ("int", "int | None") or (isinstance(default, int) and not isinstance(default, bool)):
        flags.DEFINE_integer(name, default, text, module_name=module)
    elif field.type in ("float", "float | None") or isinstance(default, float):
        flags.DEFINE_float(name, default, text, module_name=module)
    else:
        flags.DEFINE_string(name, default, text, module_name=module)
    if required:
        flags.mark_flag_as_required(name)


def config_from_flags(cls, **given):
    """A job's frozen config: each field of dataclass ``cls`` from the flag of the same name (a list field's text
    parsed by its ``parse`` rule), unless ``given``; ``config.run`` from the ``RunOptions`` flags the job defined.

    With ``--plan``, the run this config describes is planned instead by the plan function the job gave
    (``define_plan``): the plan is printed and the job exits 0 here, before it opens its output.
    """
    config = cls(**_values(cls, given), **({"run": RunOptions(**_values(RunOptions, {}))} if _has_run(cls) else {}))
    plan_if_asked(config)
    return config


def plan_if_asked(config) -> None:
    """With --plan: prints the plan of the run ``config`` describes and exits 0, before anything is opened."""
    if "plan" not in FLAGS or not FLAGS.plan:
        return
    make_plan = _PLANS[type(config)]
    started = process_age()  # the interpreter, absl and JAX's imports: a run pays them too
    try:
        plan = make_plan(config, get_device(FLAGS.plan_device))
    except BabelgridError:
        raise  # bad data, not a misused flag: its one line (``_without_traceback``), not the job's whole --help
    except ValueError as e:  # inputs the plan cannot be made of: the cause alone, likewise
        print(f"{job_name()}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    from engine.runtime.plan import Stage  # JAX, loaded by the plan's module already; --help loads none

    plan.stages.insert(0, Stage("start-up (imports)", 0.0, 0.0, 0.0, started))
    print(plan.render())
    sys.exit(0)


def process_age() -> float:
    """Seconds since this process started (Linux's /proc; elsewhere its CPU time, which imports mostly are)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.process_time()


def flag_name(field) -> str:
    """The flag of a config field: its own name unless its ``option`` names another."""
    return (field.metadata.get("flag") if field.metadata else None) or field.name


def _has_run(cls) -> bool:
    return any(f.name == "run" for f in dataclasses.fields(cls))


def _values(cls, given: dict) -> dict:
    values = dict(given)
    for field in dataclasses.fields(cls):
        if field.name in values or field.name == "run" or flag_name(field) not in FLAGS:
            continue
        value = getattr(FLAGS, flag_name(field))
        parse = field.metadata.get("parse") if field.metadata else None
        values[field.name] = PARSERS[parse](value) if parse is not None else value
    return values


def define_plan(cls, plan: PlanFunction, module: str) -> None:
    """--plan and --plan_device for the job whose config is ``cls``; ``plan(config, device)`` makes its plan (the
    job's function, which imports ``engine.pipelines.<job>.plan`` only when called: ``--help`` then loads no JAX).
    Runtime imports no pipeline, so the job hands its plan function here."""
    if not callable(plan):
        raise TypeError(f"plan must be the job's plan function, got {plan!r}")
    _PLANS[cls] = plan
    module = _flag_module(module)
    flags.DEFINE_bool(
        "plan",
        False,
        "dry run: print utterances, windows, frames, FLOPs and bytes per stage, peak memory, block sizes and the "
        "estimated time (here, from a few-second calibration, and on --plan_device); reads only headers",
        module_name=module,
    )
    flags.DEFINE_enum(
        "plan_device", None, list(DEVICES), "with --plan: also estimate the time on this device", module_name=module
    )


def finish(summary, lines=(), strict: bool = False) -> int:
    """Prints a run's summary and ``lines`` (paths written); the exit code: 1 when ``strict`` (the run's
    ``--strict``) and anything was skipped."""
    print(summary.report())
    for line in lines:
        print(line)
    if strict and summary.n_skipped:
        print(f"--strict: {summary.n_skipped} items were skipped", file=sys.stderr)
        return 1
    return 0


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort")


def check_inputs() -> None:
    """Refuses a local store or folder the job reads (a flag whose field ``option`` marks ``reads``) that does not
    exist, or a local folder given as a store (``STORE_FLAGS``) without a store's manifest, with a one-line
    ``ConfigError``: a job loads JAX, TensorStore and its model code before it opens its inputs, which took 8-37 s on a
    loaded machine to name a mistyped path. Remote locations (gs://, s3://, memory://) are left to the job, which
    opens them, and so is what a store holds."""
    for name, (parse, help_text) in _READS.items():
        if name not in FLAGS or not getattr(FLAGS, name):
            continue
        value = getattr(FLAGS, name)
        locations = PARSERS[parse](value) if parse is not None else value
        for location in locations if isinstance(locations, tuple) else (locations,):
            if not location or ("://" in location and not location.startswith("file://")):
                continue
            path = location.removeprefix("file://")
            if not os.path.exists(path):
                raise ConfigError(f"--{name} {location!r} does not exist; check the path (--{name}: {help_text})")
            if name in STORE_FLAGS and os.path.isdir(path) and not os.path.exists(os.path.join(path, STORE_MANIFEST)):
                raise ConfigError(
                    f"--{name} {location!r} is no babelgrid store: it has no {STORE_MANIFEST}; check the path "
                    f"(--{name}: {help_text}){where_instead(path)}"
                )


def job_name() -> str:
    """The running job's name, as its one-line errors start (``seqsim: ...``)."""
    return pathlib.Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "job"


def usage() -> str:
    """The job's docstring as written (examples keep their line breaks), then its flags, required ones marked."""
    main = sys.modules["__main__"]
    flags_text = FLAGS.module_help(sys.argv[0] if main.__name__ == "__main__" else main.__name__)
    return (
        (main.__doc__ or "").strip()
        + "\n\n"
        + flags_text.replace(sys.argv[0] + ":", "flags:", 1)
        + ("\n\nFlags marked (required) must be given. --helpfull lists every flag of every library.")
    )


class PlainFormatter(logging.Formatter):
    """A job's log lines as a user reads them among its printed ones: the message alone, ``warning: `` (``error: ``)
    before a warning (an error); not absl's ``I1124 18:00:00.000000 140350979050368 run.py:12]`` prefix, which named
    a thread and a source line in the middle of the job's own output."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


STOP_SIGNALS = gang.STOP_SIGNALS  # the signals that end a job early (jobs.gang)


def _stop(signum, _frame) -> None:
    # Later signals must not cut the release short (the gang parent forwards the Ctrl-C that reached this process
    # too; a scheduler may repeat SIGTERM): they are noted, and SIGKILL still ends the job at once.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_again)
    stops.note(signum)  # if the raise below is swallowed (a gc callback's), the unit loop and run() raise it again
    raise Interrupted(signum)


def _stop_again(signum, _frame) -> None:
    text = (f"{job_name()}: {signal.Signals(signum).name} again: still releasing this job's writer lease and work "
            "claims (SIGKILL ends it at once; its claims then expire after --claim_ttl)\n")  # fmt: skip
    try:
        os.write(2, text.encode())  # not print: the main thread may be inside a write to sys.stderr
    except OSError:  # SIGHUP: the terminal may be gone
        pass


def _unraisable(args) -> None:
    """``sys.unraisablehook``: a stop signal's ``Interrupted`` raised where Python cannot raise it (a gc callback,
    a ``__del__``) is already noted (``_stop``) and ends the job with its one line; printing it as "Exception ignored
    in ..." with a traceback would only add noise to that end (CI saw it). Everything else as Python prints it."""
    if isinstance(args.exc_value, Interrupted):
        return
    sys.__unraisablehook__(args)


def handle_stop_signals() -> None:
    """``STOP_SIGNALS`` raise ``Interrupted`` (main thread only: Python runs handlers there); one swallowed by a gc
    callback is not printed (``_unraisable``)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)
    sys.unraisablehook = _unraisable


def run(main) -> None:
    """Starts a job: logging to stderr at INFO, absl's flag parsing, jax.distributed when its flags ask for it, then
    ``main()``, whose return value is the exit code. ``--help`` prints ``usage()`` and exits 0. SIGTERM, SIGINT and
    SIGHUP end the job with one line, its lease and claims released, and exit code 128 + the signal's number
    (``Interrupted``)."""
    handle_stop_signals()
    gang.stop_with_runner()  # a study's stage stops when its runner dies
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    # JAX logs every accelerator plugin it looks for and does not find ("Unable to initialize backend 'tpu'") at
    # INFO: noise on every CPU run. Its warnings still show.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    # orbax logs each checkpoint's inner steps at INFO through absl ("Closing _NonBlockingMetadataStore(...)"): noise
    # in the finetune and sae jobs' logs. Its warnings still show.
    logging.getLogger("absl").addFilter(lambda r: r.levelno > logging.INFO or "/orbax/" not in r.pathname)
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        print(usage())
        sys.exit(0)

    def start(argv):
        # app.run has put absl's handler in place of basicConfig's (the one writing to stderr): it takes the format.
        absl_logging.get_absl_handler().setFormatter(PlainFormatter())
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}: every setting is a --flag")
        check_inputs()  # a mistyped path is named at once, not after JAX has loaded
        if "distributed" in FLAGS and gang.asked():
            gang.supervise()  # before JAX loads: a parent that names the run's end if JAX's runtime aborts it
        import jax  # the job starts here: --help returned before this, without loading JAX or TensorStore

        from engine.stores.kv import parse_spec_overrides, set_spec_overrides, set_store_timeout

        if "store_timeout" in FLAGS:
            set_store_timeout(FLAGS.store_timeout)
        if "kvstore_spec" in FLAGS and FLAGS.kvstore_spec:
            try:
                set_spec_overrides(parse_spec_overrides(FLAGS.kvstore_spec))
            except ValueError as e:
                raise app.UsageError(str(e)) from None
        if "matmul_precision" in FLAGS:
            # JAX's default on GPUs is TF32 for float32 products, which put the encoder 1.3e-2 to 2.9e-2 of the peak
            # activation away from CTranslate2 on an H100 (3.4e-5 to 8.8e-5 with "highest"; test_parity_ct2.py):
            # a store written on a GPU would not match one written on a CPU. Measurements ask for float32.
            jax.config.update("jax_default_matmul_precision", FLAGS.matmul_precision)
        if "compile_cache" in FLAGS and FLAGS.compile_cache:
            from engine.runtime.compiles import use_cache

            use_cache(FLAGS.compile_cache)
        if "distributed" not in FLAGS or not gang.asked():
            return main()
        gang.init_distributed()
        try:
            return main()
        finally:
            gang.leave_distributed()

    app.run(lambda argv: _without_traceback(start, argv))


def _without_traceback(start, argv):
    """Runs ``start(argv)``; an error babelgrid raises on purpose (``BabelgridError``: its message names the problem
    and the fix) ends the job with that message and exit code 1, not a traceback. ``BABELGRID_TRACEBACK=1`` shows the
    traceback too; any other exception keeps its traceback. A stop signal or Ctrl-C (``Interrupted``), once it has
    unwound the job and released what it held, ends it with one line and exit code 128 + the signal's number (130 for
    Ctrl-C, 143 for SIGTERM): non-zero, so that a scheduler requeues the task."""
    try:
        code = start(argv)
        stops.check()  # a stop signal that Python swallowed (engine.runtime.stops) still ends the job as one
        return code
    except KeyboardInterrupt as e:
        if os.environ.get("BABELGRID_TRACEBACK"):
            raise
        signum = getattr(e, "signum", signal.SIGINT)
        text = (f"{job_name()}: interrupted ({signal.Signals(signum).name}): its writer lease and work claims are "
                "released and what it committed is kept; rerun the same command to resume")  # fmt: skip
        try:
            print(text, file=sys.stderr, flush=True)
        except OSError:  # SIGHUP: the terminal may be gone
            pass
        sys.exit(128 + signum)
    except BabelgridError as e:
        if os.environ.get("BABELGRID_TRACEBACK"):
            raise
        full = " (the disk is full: free space, or write to another --out, and rerun the same command)"
        full = full if disk_full(e) and "disk is full" not in str(e) else ""  # said once, where it is not yet said
        print(f"{job_name()}: {type(e).__name__}: {e}{full}", file=sys.stderr, flush=True)
        sys.exit(1)
    except (OSError, ValueError) as e:
        if os.environ.get("BABELGRID_TRACEBACK") or not disk_full(e):
            raise
        print(f"{job_name()}: the disk is full: {str(e).splitlines()[0]}. What the job committed is kept, and nothing "
              "half written is marked done: free space (or write to another --out) and rerun the same command to "
              "resume", file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(1)


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write refused for want of space (ENOSPC or a quota), from Python (``OSError``) or from
    TensorStore (a ``ValueError`` whose status carries the OS error code)."""
    codes = {errno.ENOSPC, errno.EDQUOT}
    if isinstance(error, OSError) and error.errno in codes:
        return True
    return any(f"[os_error_code='{code}']" in str(error) for code in codes)
