"""What ``status`` and the workers' log say of a worker that died (issue 87): a worker whose claim another took over is
dead at once, not once its own record expires (it counted as live for about a minute), and a claim is called
"expired" in the log only when its expiry has passed (the log called one expired with 59.6 s left)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from engine.runtime.claims import WorkClaims
from engine.runtime.status import dead_here, run_status
from engine.stores.kv import open_kvstore
from engine.stores.records import iso_utc

JOB = "job"


def dead_pid() -> int:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(gone.stdout)


def plant(kv, owner: str, *, host: str, pid: int, left: float, units=("u1",), ttl: float = 60.0) -> None:
    """A worker's record and its claims on ``units``, as a worker that renewed them ``ttl - left`` seconds ago left
    them (``left``: seconds before they expire)."""
    now = time.time()
    base = {"owner": owner, "host": host, "pid": pid, "job": JOB, "state": "working", "renewed": iso_utc(now),
            "expires_unix": now + left}  # fmt: skip
    record = {**base, "ttl": ttl, "units_total": 3, "done_at_start": 0, "units_done": 0, "rate": 0.0}
    kv.write(f"workers/{JOB}/{owner}.json", json.dumps(record).encode()).result()
    for unit in units:
        kv.write(f"claims/{JOB}/{unit}.json", json.dumps({**base, "unit": unit}).encode()).result()


def took_over_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]


def test_a_worker_killed_here_is_dead_once_its_claim_is_taken_and_the_claim_is_not_called_expired(
    tmp_path, caplog, monkeypatch
):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    pid = dead_pid()
    plant(kv, "killed", host=socket.gethostname(), pid=pid, left=59.6, units=("u1", "u2"))
    caplog.set_level(logging.INFO, logger="engine.runtime.claims")
    with WorkClaims(kv, url, JOB, ttl=60) as survivor:
        survivor.register(total=3, done_at_start=0, opener=False)
        claim = survivor.claim("u1")  # its process is gone from this host: taken at once, 59.6 s before expiry
        assert claim is not None and survivor.taken_over == 1
        (line,) = took_over_lines(caplog)
        assert "expired" not in line and "no longer runs on this host" in line and f"pid {pid}" in line, line
        assert "s of its lease were left" in line, line
        # Read from another host (a login node), where the dead pid cannot be checked: the survivor's record says
        # whose claim it took, so the killed worker is dead now, not once its record expires in a minute.
        monkeypatch.setattr(socket, "gethostname", lambda: "login-node")
        status = run_status(kv, url, JOB)
        assert [w["owner"] for w in status.dead] == ["killed"], status.line()
        assert [w["owner"] for w in status.live] == [survivor.owner] and not status.stopped, status.line()
        line = status.line()
        assert "1 live, 0 stopped renewing, 0 exited, 1 dead" in line and f"pid {pid}" in line, line
        # u1 is the survivor's now; u2, not yet taken, is held by the dead worker, not by a live one.
        assert "claimed now: 1, 1 by workers that stopped renewing or died" in line, line
        monkeypatch.undo()
        survivor.release(claim)


def test_status_says_what_a_unit_of_the_run_is(tmp_path):
    """A probe read "0 of 2 units" in status while the job's bar counted 5/12 utterances: the run record names them."""
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    with WorkClaims(kv, url, JOB, ttl=60) as opener:
        opener.register(total=2, done_at_start=0, opener=True, what="blocks of up to 8 utterances of one language")
        line = run_status(kv, url, JOB).line()
        assert "0 of 2 units (blocks of up to 8 utterances of one language) done (0%)" in line, line


def test_status_on_the_dead_workers_host_counts_it_dead_before_any_claim_is_taken(tmp_path):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    plant(kv, "killed", host=socket.gethostname(), pid=dead_pid(), left=50.0)
    status = run_status(kv, url, JOB)
    assert not status.live and len(status.dead) == 1 and status.held(live=False), status.line()


def test_an_expired_claim_is_called_expired_with_how_long_ago(tmp_path, caplog):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    plant(kv, "lost", host="another-host", pid=12, left=-3.0)
    caplog.set_level(logging.INFO, logger="engine.runtime.claims")
    with WorkClaims(kv, url, JOB, ttl=60) as survivor:
        survivor.register(total=3, done_at_start=0, opener=False)
        claim = survivor.claim("u1")
        assert claim is not None
        (line,) = took_over_lines(caplog)
        assert "took over the expired claim of another-host pid 12 on u1" in line and "expired 3." in line, line
        survivor.release(claim)


def test_a_stalled_worker_that_renews_after_its_claim_was_taken_is_live_again(tmp_path):
    url = str(tmp_path / "out")
    _, kv = open_kvstore(url)
    plant(kv, "stalled", host="another-host", pid=12, left=-1.0)
    with WorkClaims(kv, url, JOB, ttl=60) as survivor:
        survivor.register(total=3, done_at_start=0, opener=False)
        claim = survivor.claim("u1")  # expired: taken over
        status = run_status(kv, url, JOB)
        assert [w["owner"] for w in status.dead] == ["stalled"], status.line()
        time.sleep(0.01)
        plant(kv, "stalled", host="another-host", pid=12, left=60.0, units=())  # it wakes and renews its record
        status = run_status(kv, url, JOB)
        assert sorted(w["owner"] for w in status.live) == sorted(["stalled", survivor.owner]), status.line()
        assert not status.dead, status.line()
        survivor.release(claim)


def test_a_killed_process_its_parent_has_not_reaped_is_dead_here():
    """A job SIGKILLed under a supervisor that had not called wait() yet (a zombie) still answered signal 0, so its
    lease held an immediate resume off for two minutes (kill-and-resume probe). Its state Z says it is gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = {"host": socket.gethostname(), "pid": child.pid}
    try:
        assert not dead_here(holder)  # running
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(500):  # not reaped: no wait() or poll() until it is a zombie
            with open(f"/proc/{child.pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    break
            time.sleep(0.01)
        assert dead_here(holder)
    finally:
        child.kill()
        child.wait()
