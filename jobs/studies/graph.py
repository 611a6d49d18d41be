"""Which stage reads which one's output, what ``--only`` and ``--until`` select, and why a stage runs.

A stage depends on an earlier one when one of its flags (a comma-separated list counts item by item) names that
stage's output or a place inside it: ``seqsim --store {out}/store`` reads ``encode --out {out}/store``. In a matrix,
a stage reads its own combination's stages and the shared ones; an after-stage may read every combination's.
"""

from __future__ import annotations

import dataclasses

from jobs.studies import records
from jobs.studies.spec import Stage, StudyError

CHANGE, REPAIR, NEW = "change", "repair", "new"  # why a stage runs: what it read or was set changed; its output
# was lost or damaged; it never completed


def dependencies(stages: list[Stage]) -> dict[str, list[tuple[str, Stage]]]:
    """Stage name -> [(flag, a stage whose output that flag reads)]."""
    deps = {}
    for b in stages:
        deps[b.name] = []
        for flag, value in b.flags.items():
            if flag in records.OUTPUT_FLAGS:
                continue
            places = [records.location(v) for v in value.split(",") if v]
            for a in stages:
                if a.number >= b.number or a.combination not in (b.combination, "") and not b.after:
                    continue
                out = records.output_of(a.job, a.flags)
                where = records.location(out) if out else None
                if where and any(p == where or p.startswith(where + "/") for p in places):
                    deps[b.name].append((flag, a))
    return deps


def upstream(deps: list[tuple[str, Stage]]) -> list[Stage]:
    """The stages one stage reads, each once, in order."""
    return list({a.name: a for _, a in deps}.values())


def describe(stages: list[Stage], deps: dict[str, list[tuple[str, Stage]]]) -> list[str]:
    """The graph as lines ``1 encode -> 2 seqsim, 4 align``, a line per stage that something reads."""
    readers: dict[str, list[Stage]] = {}
    for b in stages:
        for a in upstream(deps[b.name]):
            readers.setdefault(a.name, []).append(b)
    lines = []
    for a in stages:
        if a.name in readers:
            after = ", ".join(f"{b.name} {b.job}" for b in readers[a.name])
            lines.append(f"  {a.name} {a.job} -> {after}")
    alone = [f"{s.name} {s.job}" for s in stages if s.name not in readers and not deps[s.name]]
    if alone:
        lines.append(f"  on their own: {', '.join(alone)}")
    return lines


def select(stages: list[Stage], only: list[str], until: str | None) -> set[str]:
    """The names of the stages to consider: ``--only`` (stage numbers, jobs, ``COMBINATION/N`` or
    ``COMBINATION/job``, comma-separated) and ``--until`` (that stage and every one before it)."""
    chosen = {s.name for s in stages}
    if only:
        chosen = {s.name for token in only for s in _matches(stages, token, "--only")}
    if until:
        last = max(s.number for s in _matches(stages, until, "--until"))
        chosen &= {s.name for s in stages if s.number <= last}
    return chosen


def _matches(stages: list[Stage], token: str, flag: str) -> list[Stage]:
    found = [s for s in stages if token in (str(s.number), s.job, s.name, f"{s.combination}/{s.job}")]
    if not found:
        names = ", ".join(dict.fromkeys(f"{s.number} ({s.job})" for s in stages))
        raise StudyError(f"{flag} {token}: no such stage; give a number or a job of: {names}")
    return found


@dataclasses.dataclass
class Decision:
    why: str | None  # None: skipped
    kind: str = ""  # CHANGE, REPAIR or NEW
    note: str = ""  # reported, never a reason to run (a version changed, without --rerun code)


def decide(record: dict, done: dict | None, rerun: str | None, dirty: list[str], output_now) -> Decision:
    """Why a stage runs, in the order a user would fix things: ``record`` is what it would record now (flags,
    inputs, upstream digests, versions), ``done`` its last record, ``dirty`` the stages it reads that ran in this
    call for a change, ``output_now`` a callable giving its output's listing (read only when needed)."""
    if rerun == "all":
        return Decision("--rerun all", CHANGE)
    if done is None:
        return Decision("never completed", NEW)
    flags, old = record["flags"], done.get("flags", {})
    changed = sorted(k for k in set(flags) | set(old) if flags.get(k) != old.get(k))
    if changed:
        return Decision("flags changed: " + ", ".join(f"--{k}" for k in changed), CHANGE)
    if "output" not in done:
        return Decision("its record is from an older babelgrid, without its output's listing", REPAIR)
    if dirty:
        return Decision(f"stage {', '.join(dirty)}, whose output it reads, runs again", CHANGE)
    inputs = sorted(k for k in record["inputs"] if record["inputs"][k] != done.get("inputs", {}).get(k))
    if inputs:
        return Decision("inputs changed since it completed: " + ", ".join(f"--{k}={flags[k]}" for k in inputs), CHANGE)
    upstream = sorted(k for k in record["upstream"] if record["upstream"][k] != done.get("upstream", {}).get(k))
    if upstream:
        named = ", ".join(f"--{k.partition(' ')[0]} (stage {record['upstream'][k]['stage']})" for k in upstream)
        return Decision(f"what it reads changed since it completed: {named}", CHANGE)
    output = done.get("output") or {}
    if output.get("groups"):
        problem = records.output_changes(output["groups"], output_now())
        if problem:
            return Decision(f"its output {output['location']} {problem}", REPAIR)
    code = records.version_changes(done.get("versions"), record["versions"])
    if code and rerun == "code":
        return Decision(f"--rerun code: {code}", CHANGE)
    return Decision(None, note=f"made with other versions ({code}): `--rerun code` redoes it" if code else "")
