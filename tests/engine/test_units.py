"""The claimed-unit loop every sharing job runs (engine.runtime.units): counts, lease checks, release or finish, and
no claims/ folder left behind by a run that completed."""

import pytest

from engine.runtime.claims import CLAIMS_DIR, WorkClaims
from engine.runtime.runs import RunSummary, progress_bar
from engine.runtime.units import UnitLoop
from engine.stores.kv import open_kvstore


class Lease:
    opener = True  # this process opens the run (engine.runtime.runs.writer_lease)

    def __init__(self, lost_after: int | None = None):
        self.checks, self.lost_after = 0, lost_after

    def check(self):
        self.checks += 1
        if self.lost_after is not None and self.checks > self.lost_after:
            raise RuntimeError("lease lost")


def test_units_are_claimed_checked_counted_and_tidied(tmp_path):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    done: set[str] = set()
    summary, lease = RunSummary(), Lease()
    units = ["a", "b", "c"]
    with UnitLoop(WorkClaims(kv, url, "job", ttl=30), lease, summary, progress_bar(3, "t", "u", False)) as loop:
        for claimed in loop.rounds(units, lambda u: u in done):
            for claim in claimed:
                assert (tmp_path / "out" / CLAIMS_DIR / "job" / f"{claim.unit}.json").is_file()  # held while worked
                done.add(claim.unit)
                loop.done(claim, finished={"skipped": ["x"]} if claim.unit == "b" else None)
    assert done == set(units) and summary.units == 3 and lease.checks == 3 and summary.taken_over == 0
    assert summary.busy_seconds > 0 and "work units: 3 units claimed" in summary.work_line()
    assert not (tmp_path / "out" / CLAIMS_DIR).exists()  # finished claims too: the next run would clear them


def test_a_lost_lease_stops_before_the_next_unit_and_keeps_nothing_claimed(tmp_path):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    worked = []
    with pytest.raises(RuntimeError, match="lease lost"):
        with UnitLoop(
            WorkClaims(kv, url, "job", ttl=30), Lease(lost_after=1), RunSummary(), progress_bar(2, "t", "u", False)
        ) as loop:  # noqa: E501
            for claimed in loop.rounds(["a", "b"], lambda u: False):
                for claim in claimed:
                    worked.append(claim.unit)
                    loop.done(claim)
    assert worked == ["a"]
    assert not list((tmp_path / "out" / CLAIMS_DIR / "job").glob("*.json"))  # released on the way out


def test_the_loop_counts_the_kernels_compiled_during_the_work(tmp_path):
    """A shape first met inside the loop is traced and compiled there: its seconds and count reach the summary, and
    nothing is counted once the loop has closed (its listeners are gone)."""
    import jax
    import jax.numpy as jnp

    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    summary = RunSummary()
    fresh, done = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0), set()
    with UnitLoop(WorkClaims(kv, url, "job", ttl=30), Lease(), summary, progress_bar(1, "t", "u", False)) as loop:
        for claimed in loop.rounds(["a"], lambda u: u in done):
            for claim in claimed:
                fresh(jnp.ones((3, 7))).block_until_ready()
                done.add(claim.unit)
                loop.done(claim)
    assert summary.compiles >= 1 and 0 < summary.compile_seconds <= summary.busy_seconds + 1e-3
    count = summary.compiles
    fresh(jnp.ones((5, 11))).block_until_ready()  # a new shape after the loop
    assert loop.clock.compiles == count


def test_an_unreachable_store_ends_the_claims_after_one_failed_release(tmp_path, monkeypatch):
    """Each write to an unreachable object store waits out --store_timeout before it fails: a job that had already
    failed spent one timeout per claim it held, then one for its worker record (cluster-user probe, an S3 server
    killed mid-encode). The first failed release leaves the others to expire."""
    from engine.errors import StoreError
    from engine.runtime import claims as claims_module

    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    claims = WorkClaims(kv, url, "job", ttl=30)
    held = [claims.claim(unit) for unit in ("u1", "u2", "u3")]
    assert all(claim is not None for claim in held)
    tried = []

    def unreachable(*args, **kwargs):
        tried.append(args[1])
        raise StoreError("cannot write: ABORTED: All 6 retry attempts failed: Could not connect to server")

    monkeypatch.setattr(claims_module, "write_value", unreachable)
    monkeypatch.setattr(claims, "_write_record", lambda *a, **k: tried.append("record") or False)
    claims.close()
    assert tried == ["claims/job/u1.json"], tried


class Bar:
    n = 0

    def update(self, n=1):
        self.n += n

    def close(self):
        pass


def test_the_bar_counts_the_units_other_processes_did(tmp_path):
    """A --worker's bar ended at its own share of the run (1/2 with two workers) though the run was complete. Units
    found done (b) or finished (d) by another process now count, by the job's weight."""
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    other = WorkClaims(kv, url, "job", ttl=30)
    other.finish(other.claim("d"), skipped=["x"])
    done = {"b"}
    bar = Bar()
    with UnitLoop(WorkClaims(kv, url, "job", ttl=30), Lease(), RunSummary(), bar) as loop:
        for claimed in loop.rounds(["a", "b", "c", "d"], lambda u: u in done, weight=lambda u: 2):
            for claim in claimed:
                done.add(claim.unit)
                loop.done(claim, progress=2)
    assert bar.n == 8 and done == {"a", "b", "c"}
