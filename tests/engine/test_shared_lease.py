"""The lease that ``--worker`` processes share (``engine.runtime.lease.SharedLease``), step by step in one process.

The race these steps replay was met in CI (the encode workers test): the last worker that ended deleted the lease
while another still worked; a third found no lease and opened the run again; the renewal of the one still at work
rewrote the new opener's ``opening`` record as ``open``, and the opener then failed on its own ``open``."""

from __future__ import annotations

import threading

import pytest

from engine.runtime.lease import LEASE, OPEN, OPENING, SharedLease, StoreBusyError, WriterLease
from engine.stores.kv import open_kvstore, read_value, write_value
from engine.stores.records import parse_record

SETTINGS = {"model": "tiny", "batch_size": 2}


def lease_of(tmp_path, job="encode", **kw) -> SharedLease:
    url = str(tmp_path / "store")
    return SharedLease(open_kvstore(url)[1], url, job, SETTINGS, ttl=60, **kw)


def holder(tmp_path) -> dict:
    url = str(tmp_path / "store")
    found = read_value(open_kvstore(url)[1], LEASE, url)
    return parse_record(found.value) if found.state == "value" else {}


def delete_lease(tmp_path) -> None:
    """What a worker that ends does when it finds no other worker's record live."""
    url = str(tmp_path / "store")
    write_value(open_kvstore(url)[1], LEASE, None, url)


@pytest.fixture
def at_work(tmp_path):
    """A worker that opened the run and still works; its renewal thread is stopped, so the test renews it."""
    first = lease_of(tmp_path)
    first.take()
    first.open()
    first._stop_renewing()
    yield first
    first._stop.set()


def test_a_renewal_leaves_a_new_openers_record_alone(tmp_path, at_work):
    delete_lease(tmp_path)
    opener = lease_of(tmp_path)
    opener.take()
    opener._stop_renewing()
    assert opener.opener and holder(tmp_path)["state"] == OPENING
    assert at_work.renew()
    assert holder(tmp_path)["owner"] == opener.owner and holder(tmp_path)["state"] == OPENING
    opener.open()
    assert holder(tmp_path)["state"] == OPEN
    assert at_work.renew() and holder(tmp_path)["owner"] == at_work.owner  # renewals take turns again


def test_the_opener_accepts_a_record_that_a_worker_at_work_wrote_meanwhile(tmp_path, at_work):
    delete_lease(tmp_path)
    opener = lease_of(tmp_path)
    opener.take()
    opener._stop_renewing()
    delete_lease(tmp_path)  # the worker at work finds it deleted again, and writes it again
    assert at_work.renew() and holder(tmp_path)["owner"] == at_work.owner
    opener.open()
    assert holder(tmp_path)["state"] == OPEN and holder(tmp_path)["owner"] == opener.owner
    opener.check()


def test_the_opener_still_loses_to_a_run_without_workers(tmp_path):
    opener = lease_of(tmp_path)
    opener.take()
    opener._stop_renewing()
    url = str(tmp_path / "store")
    WriterLease(open_kvstore(url)[1], url, "encode", ttl=60, break_lease=True).take()
    with pytest.raises(StoreBusyError, match="taken by another run .*while this worker opened it"):
        opener.open()


def test_a_joiner_waits_while_the_record_says_opening(tmp_path, at_work):
    delete_lease(tmp_path)
    opener = lease_of(tmp_path)
    opener.take()
    opener._stop_renewing()
    at_work.renew()  # before the fix, this flipped the record to "open" and let the joiner in at once
    joiner = lease_of(tmp_path, poll=0.05)
    joined = threading.Event()
    thread = threading.Thread(target=lambda: (joiner.take(), joined.set()), daemon=True)
    thread.start()
    assert not joined.wait(0.5), "the joiner went on while the run was still being opened"
    opener.open()
    assert joined.wait(10)
    assert not joiner.opener
    joiner._stop_renewing()
