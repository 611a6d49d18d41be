"""Bounded waits on object stores (issue 25): an unreachable endpoint ends a job with a named error instead of a hang,
and a server that stops mid-run fails the next write within the bound."""

import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import moto.server as moto_server
import pytest

from engine.stores import kv as kv_lib
from engine.stores.kv import StoreError, open_kvstore, read_value, set_store_timeout, write_value

REPO = pathlib.Path(__file__).resolve().parents[2]
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_retry_schedule_adds_up_to_the_bound():
    for seconds in (3, 60, 600):
        settings = kv_lib._retries(seconds)["s3_request_retries"]
        cap = float(settings["max_delay"].rstrip("s"))
        delays = [min(cap, 2.0**i) for i in range(settings["max_retries"])]
        assert seconds <= sum(delays) < seconds + cap, (seconds, settings)
    with pytest.raises(StoreError, match="positive"):
        set_store_timeout(0)


def test_encode_against_a_closed_port_fails_naming_the_endpoint(tmp_path, tiny_model_dir):
    port = free_port()  # nothing listens there
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
               **KEYS)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.encode", "--model", str(tiny_model_dir), "--out", "s3://babelgrid-test/run",
         "--store_timeout", "3", "--progress=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,  # a hang fails here
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot reach store location 's3://babelgrid-test/run'" in proc.stderr, proc.stderr
    assert f"http://127.0.0.1:{port}" in proc.stderr and "AWS_ENDPOINT_URL" in proc.stderr
    assert "gave up after about 3 s" in proc.stderr and "Traceback" not in proc.stderr


def test_a_server_stopped_mid_run_fails_the_next_write_within_the_bound(monkeypatch):
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {**KEYS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="babelgrid-test")  # fmt: skip
    set_store_timeout(3)
    try:
        url = "s3://babelgrid-test/mid-run"
        _, kv = open_kvstore(url)
        write_value(kv, "a.json", b"{}", url)
        assert read_value(kv, "a.json", url).value == b"{}"
        server.stop()
        with pytest.raises(StoreError, match="a.json|b.json"):
            write_value(kv, "b.json", b"{}", url)
    finally:
        set_store_timeout(kv_lib.DEFAULT_STORE_TIMEOUT)


class Partition:
    """A TCP proxy to ``upstream`` that forwards until ``stall`` is set, then holds every connection open and moves
    nothing (a network partition: connections stay up, no byte passes)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream, self.stall, self.held = upstream, threading.Event(), []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn = self.server.accept()[0]
            except OSError:
                return
            self.held.append(conn)
            if not self.stall.is_set():
                up = socket.create_connection(self.upstream)
                self.held.append(up)
                for a, b in ((conn, up), (up, conn)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                while self.stall.is_set():
                    time.sleep(0.05)  # the partition: what was read goes nowhere
                dst.sendall(data)
        except OSError:
            return

    def close(self):
        self.server.close()
        for conn in self.held:
            conn.close()


STALLED_WRITE = """
import sys
from engine.stores.kv import StoreError, open_kvstore, set_store_timeout, write_value
set_store_timeout(4)  # as --store_timeout 4, before the first request
url = "s3://babelgrid-test/partition"
_, kv = open_kvstore(url)
write_value(kv, "a.json", b"{}", url)
print("written", flush=True)
sys.stdin.readline()  # the partition begins
try:
    write_value(kv, "b.json", b"{}", url)
except StoreError as e:
    print("StoreError:", e, flush=True)
"""


def test_a_partition_mid_run_fails_the_next_write_within_the_bound(monkeypatch):
    """A network partition mid-run (connections stay open, no byte passes) hung a probe's encode in a flush for
    minutes, SIGTERM unanswered: retries cover failed requests, not stalled ones. libcurl's low-speed limit now fails
    a request that moves nothing for a quarter of --store_timeout, and it is retried as a failed one."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="babelgrid-test")  # fmt: skip
    proxy = Partition((host, port))
    env = dict(os.environ, PYTHONPATH=str(REPO), AWS_ENDPOINT_URL=proxy.endpoint, **KEYS)
    for name in (kv_lib.STALL_SECONDS, kv_lib.STALL_BYTES):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-c", STALLED_WRITE], cwd=REPO, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "written"
        proxy.stall.set()
        t0 = time.monotonic()
        out, err = proc.communicate("go\n", timeout=200)  # the hang failed here
        seconds = time.monotonic() - t0
    finally:
        proc.kill()
        proxy.close()
        server.stop()
    assert "StoreError:" in out and "b.json" in out and "Operation too slow" in out, out + err
    assert seconds < 100, seconds  # about 4 s of backoff and four 1 s stalls, with room for a loaded machine
