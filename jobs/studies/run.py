"""``babelgrid run STUDY``: the stages in order, each its own job process, skipped where its record still holds."""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from engine.errors import BabelgridError
from jobs.gang import RUNNER_ENV, STOP_SIGNALS
from jobs.studies import graph, records
from jobs.studies.spec import Stage, Study, StudyError, job_flags, load_study

RUN_USAGE = """usage: babelgrid run STUDY.yaml|demo [--set NAME=VALUE ...] [--dry-run] [--rerun changed|all|code]
                     [--only STAGE[,STAGE]] [--until STAGE] [--verify] [--emit snakefile|digests]

Runs a study's stages in order, each as its own process. A stage reads the outputs of the stages its flags name
(the graph). It is skipped when it completed before with the same flags, its output still holds what it recorded
(the output's manifest and listing: a deleted pair, language or file reruns it), what it reads is unchanged (local
files by name, size and time; remote stores and upstream outputs by their listing) and no stage it reads ran again.
A change reruns the stages downstream of it, no others. The babelgrid, JAX and model versions that made a stage are
recorded; a change is reported, and reruns it only with --rerun code.

  --set NAME=VALUE   override a variable of the study's vars (or runs); another name is refused
  --dry-run          print the graph, and what would run and why; run nothing
  --rerun changed    a stage whose flags or inputs changed: move its old output aside (OUT.stale-TIME, local paths
                     only) and redo it and what reads it; without it, such a stage is run on its existing output,
                     where the job refuses what it cannot resume (its own message says why)
  --rerun all        redo every stage, old outputs moved aside likewise
  --rerun code       also redo the stages made with another babelgrid, JAX or model version
  --only STAGE       run these stages alone (a number, a job, COMBINATION/N): what they read must be complete
  --until STAGE      run this stage and those before it
  --verify           check the checksums of every output that would be skipped (babelgrid verify); a damaged one
                     is repaired (marked not done) and its stage rerun
  --emit snakefile   print the study as a Snakefile (a rule per stage, its output the stage's record): run nothing
  --emit digests     print each stage's digest of its job and flags (JSON), which the Snakefile's rules compare

SIGTERM, Ctrl-C or SIGHUP stops the running stage (its job releases the output store) and the run; run again to
resume. The study file's format: BUILD.md#studies."""

RERUN_MODES = ("changed", "all", "code")


def run_stage(command: list[str]) -> tuple[int, int | None]:
    """(exit status, the stop signal that reached the runner or None) of one stage's job process, run to its end. A
    stop signal sent to the runner is passed on to the stage, and the runner waits for it: the stage releases its
    writer lease and work claims as a job stopped directly does. Without this the runner died at once and its stage
    ran on, orphaned, holding the store: the next `babelgrid run` was refused as a second writer. (Ctrl-C in a
    terminal reaches the stage twice, from the terminal and from here: jobs take the second as a note.)"""
    # the stage's job stops when this process dies, even by SIGKILL, which no handler sees (jobs.gang)
    proc = subprocess.Popen(command, env={**os.environ, RUNNER_ENV: str(os.getpid())})
    stopped: list[int] = []

    def forward(signum, _frame) -> None:
        stopped.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:  # it had ended
            pass

    main = threading.current_thread() is threading.main_thread()  # Python sets handlers in the main thread only
    saved = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS} if main else {}
    try:
        code = proc.wait()  # retried across the handled signals (PEP 475)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return code, (stopped[0] if stopped else None)


@dataclasses.dataclass
class RunArgs:
    spec: str = ""
    overrides: list[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    rerun: str | None = None
    only: list[str] = dataclasses.field(default_factory=list)
    until: str | None = None
    verify: bool = False
    emit: str | None = None


def parse_run_args(args: Sequence[str]) -> RunArgs:
    parsed, rest = RunArgs(), list(args)
    valued = {"--set", "--rerun", "--only", "--until", "--emit"}
    while rest:
        flag = rest.pop(0)
        name, eq, value = flag.partition("=")
        if name in valued and not eq:
            if not rest:
                raise StudyError(f"{name} needs a value\n{RUN_USAGE}")
            value = rest.pop(0)
        if name == "--set":
            parsed.overrides.append(value)
        elif name in ("--dry-run", "--dry_run") and not eq:
            parsed.dry_run = True
        elif name == "--verify" and not eq:
            parsed.verify = True
        elif name == "--rerun":
            if value not in RERUN_MODES:
                raise StudyError(f"--rerun takes {', '.join(RERUN_MODES)}, got {value!r}")
            parsed.rerun = value
        elif name == "--only":
            parsed.only += [v for v in value.split(",") if v]
        elif name == "--until":
            parsed.until = value
        elif name == "--emit":
            if value not in ("snakefile", "digests"):
                raise StudyError(f"--emit takes snakefile or digests, got {value!r}")
            parsed.emit = value
        elif not parsed.spec and not flag.startswith("-"):
            parsed.spec = flag
        else:
            raise StudyError(f"unexpected argument {flag!r}\n{RUN_USAGE}")
    if not parsed.spec:
        raise StudyError(f"no study named\n{RUN_USAGE}")
    return parsed


def run_study(args: Sequence[str]) -> int:
    """Runs a study's stages in order, each as its own process (``RUN_USAGE``)."""
    if args and args[0] in ("-h", "--help", "help"):
        print(RUN_USAGE)
        return 0
    try:
        parsed = parse_run_args(args)
        study = load_study(parsed.spec, parsed.overrides)
        chosen = graph.select(study.stages, parsed.only, parsed.until)
        if parsed.emit:
            from jobs.studies.snakefile import digests, snakefile  # lazy: only --emit needs it

            print((snakefile if parsed.emit == "snakefile" else digests)(study), end="")
            return 0
        return Runner(study, parsed, chosen).run()
    except StudyError as e:
        print(f"babelgrid run: {e}", file=sys.stderr)
        return 2


class Runner:
    def __init__(self, study: Study, args: RunArgs, chosen: set[str]):
        from engine.stores.kv import open_kvstore  # lazy: `run --help` stays light

        self.study, self.args, self.chosen = study, args, chosen
        self.deps = graph.dependencies(study.stages)
        self.dirty: set[str] = set()  # stages that ran (or would, in a dry run) for a change
        self.verified: set[str] = set()
        self.ended: dict[str, list[str]] = {"ran": [], "complete": []}  # outputs of stages run and found complete
        self.records: dict[str, dict | None] = {}  # stage name -> its record, read once (a request on GCS or S3)
        _, self.kv = open_kvstore(study.runs)

    def read(self, stage: Stage) -> dict | None:
        """The stage's last record; None when there is none, or it is damaged (said, and the stage runs again: its
        job resumes what its output holds)."""
        from engine.errors import DamageError
        from engine.stores.kv import read_json  # lazy: as above

        if stage.name not in self.records:
            try:
                self.records[stage.name] = read_json(self.kv, stage.record, self.study.runs)
            except DamageError as e:
                print(f"{stage.title(self.study.total)}: its record cannot be read ({e}): taken as never completed")
                self.records[stage.name] = None
        return self.records[stage.name]

    def run(self) -> int:
        stages = self.study.stages
        if self.args.dry_run:
            print("graph (a stage -> the stages that read its output):")
            print("\n".join(graph.describe(stages, self.deps)))
        started = time.monotonic()
        for stage in stages:
            if stage.name not in self.chosen:
                continue
            code = self.stage(stage)
            if code:
                return code
        if not self.args.dry_run:  # the run's end in one line: what ran, what was complete, where the outputs are
            ran, complete = self.ended["ran"], self.ended["complete"]
            outputs = list(dict.fromkeys(o for o in ran + complete if o))
            print(f"babelgrid run: {len(ran) + len(complete)} stages, {len(ran)} run and {len(complete)} complete "
                  f"before, in {time.monotonic() - started:.0f} s; outputs: {', '.join(outputs) or 'none'}",
                  flush=True)  # fmt: skip
        return 0

    def record(self, stage: Stage) -> dict:
        """What the stage would record now, its output's listing aside."""
        reads = self.deps[stage.name]
        upstream = {}
        for flag, a in reads:
            output = (self.read(a) or {}).get("output") or {}
            key = f"{flag} {a.name}"  # a flag may read several stages: compare's --stores
            upstream[key] = {"stage": f"{a.name} ({a.job})", "digest": records.digest(output.get("groups"))}
        return {
            "job": stage.job,
            "flags": stage.flags,
            "inputs": records.external_inputs(stage.flags, {flag for flag, _ in reads}),
            "upstream": upstream,
            "versions": records.versions(stage.flags, "model" in job_flags()[stage.job]),
        }

    def stage(self, stage: Stage) -> int:
        head = stage.title(self.study.total)
        record, done = self.record(stage), self.read(stage)
        dirty = [f"{a.name} ({a.job})" for a in graph.upstream(self.deps[stage.name]) if a.name in self.dirty]
        out = records.output_of(stage.job, stage.flags)
        decision = graph.decide(record, done, self.args.rerun, dirty, lambda: records.listing(out))
        if decision.why is None and self.args.verify and out and out not in self.verified:
            self.verified.add(out)
            damage = self.verify(out, head)
            if damage:
                decision = graph.Decision(f"verify found damage in its output {out}", graph.REPAIR)
        unmet = [f"{a.name} ({a.job})" for a in graph.upstream(self.deps[stage.name])
                 if a.name not in self.chosen and self.read(a) is None]  # fmt: skip
        if unmet:
            first = f"it reads stage {', '.join(unmet)}, which has not completed: run that first. "
            decision.note = first + decision.note
        if decision.note:
            print(f"{head}: note: {decision.note.strip()}", flush=True)
        if decision.why is None:
            print(f"{head}: complete (since {done.get('finished')}), output and inputs unchanged: skipped", flush=True)
            if not self.args.dry_run:
                self.keep_newer(stage)
                self.ended["complete"].append(out)
            return 0
        if decision.kind == graph.CHANGE:
            self.dirty.add(stage.name)
        command = [sys.executable, "-m", f"jobs.{stage.job}", *(f"--{k}={v}" for k, v in stage.flags.items())]
        if self.args.dry_run:
            print(f"{head}: would run ({decision.why}): {' '.join(command[2:])}", flush=True)
            return 0
        print(f"{head}: runs ({decision.why}): {' '.join(command[2:])}", flush=True)
        if self.args.rerun and done is not None and decision.kind == graph.CHANGE:
            try:  # it completed before on what changed: redo it from scratch
                for line in move_aside(stage.flags):
                    print(f"{head}: old output moved aside: {line}", flush=True)
            except (StudyError, OSError) as e:
                print(f"babelgrid run: stage {stage.name} ({stage.job}): {e}", file=sys.stderr)
                return 2
        code, stopped = run_stage(command)
        if stopped is not None:
            print(f"babelgrid run: {signal.Signals(stopped).name}: stage {stage.name} ({stage.job}) was stopped "
                  f"(exit {code}); the stages after it were not run. Run again to resume", file=sys.stderr)  # fmt: skip
            return 128 + stopped
        if code != 0:
            hint = (
                f"; it completed before, and {decision.why}: `babelgrid run ... --rerun changed` moves its old output "
                "aside and redoes it and the stages that read it"
                if decision.kind == graph.CHANGE and self.args.rerun is None and done is not None
                else "; fix it and run again to resume"
            )
            print(f"babelgrid run: stage {stage.name} ({stage.job}) exited {code}{hint}", file=sys.stderr)
            return code
        try:
            self.write(stage, record, out)
        except (OSError, BabelgridError) as e:  # a full or read-only disk under {runs}: one line, not a traceback
            print(f"babelgrid run: stage {stage.name} ({stage.job}) completed, but its record could not be written "
                  f"under {self.study.runs}: {e}. Free the space (or fix the folder) and run again: the stage's job "
                  "finds its output complete", file=sys.stderr)  # fmt: skip
            return 1
        self.ended["ran"].append(out)
        return 0

    def keep_newer(self, stage: Stage) -> None:
        """A complete stage's record made no older than the records of the stages it reads. Snakemake (``--emit
        snakefile``) reruns a rule whose input is newer than its output, and a stage rerun to repair its own output
        leaves the stages that read it complete: without this, Snakemake reran them after ``babelgrid run`` had
        found them complete. Local runs folders only, as a Snakefile's are."""
        root = records.local_path(self.study.runs)
        if root is None:
            return
        try:
            mine = (root / stage.record).stat().st_mtime_ns
            theirs = [(root / a.record).stat().st_mtime_ns for a in graph.upstream(self.deps[stage.name])]
            if theirs and max(theirs) > mine:
                newer = max(max(theirs), time.time_ns())
                os.utime(root / stage.record, ns=(newer, newer))
        except OSError:  # a record gone or unreadable: the next run decides by the records themselves
            return

    def write(self, stage: Stage, record: dict, out: str | None) -> None:
        from engine.stores.kv import write_value
        from engine.stores.records import json_bytes

        groups = records.listing(out) if out else None
        if groups:  # stages writing into one place (retrieval into seqsim's store) each own what the others did not
            for other in self.study.stages:
                theirs_at = records.output_of(other.job, other.flags)
                if other != stage and theirs_at and records.location(theirs_at) == records.location(out):
                    theirs = ((self.read(other) or {}).get("output") or {}).get("groups") or {}
                    groups = {g: d for g, d in groups.items() if g not in theirs}
        finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {**record, "inputs": records.external_inputs(stage.flags, {flag for flag, _ in self.deps[stage.name]})}
        record["output"] = {"location": out, "groups": groups or {}} if out else None
        record["finished"] = finished
        write_value(self.kv, stage.record, json_bytes(record), self.study.runs)
        self.records[stage.name] = record

    def verify(self, out: str, head: str) -> bool:
        """babelgrid verify on a stage's output: True when it found damage, which is printed and (unless this is a
        dry run) repaired, i.e. marked not done for the stage's job to redo."""
        command = [sys.executable, "-m", "jobs.verify", f"--location={out}", "--progress=false"]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise StudyError(f"babelgrid verify {out} failed (exit {proc.returncode}): {proc.stderr.strip()[-1000:]}")
        print(f"{head}: verify: " + proc.stdout.strip().replace("\n", f"\n{head}: verify: "), flush=True)
        if proc.returncode == 0:
            return False
        if not self.args.dry_run:
            subprocess.run([*command, "--repair"], check=True, capture_output=True)
        return True


def move_aside(flags: dict[str, str]) -> list[str]:
    """Renames the stage's existing local outputs to ``OUT.stale-TIME``; remote outputs cannot be moved here."""
    moved = []
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for k in records.OUTPUT_FLAGS:
        if k not in flags:
            continue
        path = records.local_path(flags[k])
        if path is None and records.is_remote(flags[k]):
            raise StudyError(f"--rerun cannot move the remote output --{k}={flags[k]} aside: delete it, then rerun")
        if path is not None:
            target = path.with_name(f"{path.name}.stale-{stamp}")
            path.rename(target)
            moved.append(f"{path} -> {target}")
    return moved
