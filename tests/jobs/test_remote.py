"""Every job against object stores: an S3 server (moto) and a GCS emulator (gcp-storage-emulator), each started here
on a free 127.0.0.1 port. The chain encode -> seqsim -> retrieval -> align -> decode runs through the jobs' flags
with --out s3://... and gs://..., and everything it writes is compared byte for byte with the same chain on a local
folder. The writer lease and write-once keys are checked on both servers.

Endpoints reach the jobs as a user's would: S3 through AWS_ENDPOINT_URL / AWS_REGION / AWS_ACCESS_KEY_ID (and once
through --kvstore_spec), GCS through TENSORSTORE_GCS_HTTP_URL.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import socket
import time

import gcp_storage_emulator.server as gcs_emulator
import moto.server as moto_server
import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.errors import StoreError
from engine.pipelines.verify.config import VerifyConfig
from engine.pipelines.verify.run import run_verify
from engine.runtime.lease import LEASE, SharedLease, StoreBusyError, WriterLease
from engine.runtime.options import configure
from engine.stores.kv import create_key, open_kvstore
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity

BUCKET = "babelgrid-test"
LANGS = ("en", "de")
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; the test process reaches it through the same variables as the jobs."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = dict(S3_ENV, AWS_ENDPOINT_URL=f"http://{host}:{port}")
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", **_keys()).create_bucket(
        Bucket=BUCKET
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    _restore(saved)
    server.stop()


@pytest.fixture(scope="module")
def gcs():
    """A gcp-storage-emulator server (in memory) with one bucket, through TENSORSTORE_GCS_HTTP_URL."""
    port = free_port()
    restore = _emulator_fixes()
    server = gcs_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    # TensorStore's own GCS tests use this token: it skips the metadata-server lookup of application default
    # credentials, which would wait for a network this machine does not have.
    env = {"TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    _restore(saved)
    server.stop()
    restore()


def _emulator_fixes():
    """Makes gcp-storage-emulator (2026.7.19) answer two requests as GCS does; returns the undo.

    - downloads carry ``x-goog-generation``: TensorStore's gcs driver makes every partial chunk write conditional
      on the generation read (read-modify-write); without it the emulator reports generation 0 and every second write
      to a chunk fails with "Malformed StorageGeneration";
    - suffix ranges (``bytes=-N``) are served: sharded zarr arrays read their shard index from a shard's end;
    - listings honour ``startOffset`` / ``endOffset``: TensorStore lists a key range that way (a store's
      ``languages/`` folder), and the emulator returned every key under the prefix.

    The emulator also ignores ``ifGenerationMatch``, which the writer lease detects (``WriterLease.conditional``).
    """
    from gcp_storage_emulator.handlers import objects

    original_download, original_ls = objects.download, objects.ls

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            headers = request._request_handler.headers
            suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range") or "")
            if suffix:  # the last N bytes, as a start-end range the emulator understands
                n_bytes = int(obj["size"])
                del headers["range"]
                headers["Range"] = f"bytes={max(n_bytes - int(suffix.group(1)), 0)}-"
        except Exception:  # noqa: BLE001 - a missing object: the original handler answers 404
            pass
        return original_download(request, response, storage, *args, **kwargs)

    def ls(request, response, storage, *args, **kwargs):
        start = (request.query.get("startOffset") or [""])[0]
        end = (request.query.get("endOffset") or [None])[0]
        send = response.json

        def in_range(data):
            items = data.get("items") or []
            data["items"] = [f for f in items if f["name"] >= start and (end is None or f["name"] < end)]
            send(data)

        response.json = in_range
        return original_ls(request, response, storage, *args, **kwargs)

    def swap(pairs):
        for old, new in pairs:
            if old is original_download or new is original_download:
                objects.download = new  # objects.get calls it for ?alt=media, TensorStore's reads
            for _, handlers in gcs_emulator.HANDLERS:
                for method, fn in handlers.items():
                    if fn is old:
                        handlers[method] = new

    swap([(original_download, download), (original_ls, ls)])
    return lambda: swap([(download, original_download), (ls, original_ls)])


def _keys() -> dict:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _restore(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> pathlib.Path:
    """<root>/{en,de}/{a,b,c}.wav: short tones, with a transcript for each (align and decode score them)."""
    root = tmp_path_factory.mktemp("clips")
    for li, lang in enumerate(LANGS):
        (root / lang).mkdir()
        for i, name in enumerate("abc"):
            rng = np.random.default_rng(10 * li + i)
            t = np.arange(int((0.4 + 0.2 * i) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / lang / f"{name}.wav", x.astype(np.float32), SAMPLE_RATE)
            (root / lang / f"{name}.txt").write_text(f"word {name} {lang}\n")
    return root


CHAIN = ("store", "similarity", "retrieval", "align", "decode")
DECODE = dict(layers=(2,), tasks=("transcribe",), decodings=("greedy",), max_new_tokens=4)


def run_chain(run_job, root: str, clips: pathlib.Path, model: pathlib.Path, env: dict | None = None, extra=()) -> dict:
    """encode -> seqsim -> retrieval -> align -> decode, every output under ``root``; the outputs' URLs by job."""
    out = {job: f"{root}/{job}" for job in CHAIN}
    model_flag = ("--model", str(model))
    run_job("encode", "--out", out["store"], *model_flag, "--dataset", f"folder:{clips}", *extra, env=env)
    run_job("seqsim", "--store", out["store"], "--out", out["similarity"], *extra, env=env)
    run_job("retrieval", "--similarity", out["similarity"], "--out", out["retrieval"], *extra, env=env)
    run_job("align", "--store", out["store"], "--out", out["align"], *model_flag, *extra, env=env)
    decode = ("--layers", "2", "--tasks", "transcribe", "--decoding", "greedy", "--max_new_tokens", "4")
    run_job("decode", "--store", out["store"], "--out", out["decode"], *model_flag, *decode, *extra, env=env)
    return out


def run_local_chain(root: str, clips: pathlib.Path, model: pathlib.Path) -> dict:
    """``run_chain``'s jobs on a local folder through the library calls their ``main`` makes, in this process: the
    reference the remote chains (each job a process, through its flags) are compared with byte for byte, so any
    difference between the two routes fails the comparison too. Five job start-ups fewer."""
    from engine.pipelines.align.config import AlignConfig
    from engine.pipelines.align.run import run_align
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.pipelines.retrieval.config import RetrievalConfig
    from engine.pipelines.retrieval.run import run_retrieval
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity

    out = {job: f"{root}/{job}" for job in CHAIN}
    quiet = dict(progress=False)
    run_encode(configure(EncodeConfig, out=out["store"], model=str(model), dataset=f"folder:{clips}", **quiet))
    run_similarity(configure(SimilarityConfig, store=out["store"], out=out["similarity"], **quiet))
    run_retrieval(configure(RetrievalConfig, similarity=out["similarity"], out=out["retrieval"], **quiet))
    run_align(configure(AlignConfig, store=out["store"], out=out["align"], model=str(model), **quiet))
    run_decode(configure(DecodeConfig, store=out["store"], out=out["decode"], model=str(model), **DECODE, **quiet))
    return out


@pytest.fixture(scope="module")
def chains(run_job, s3, gcs, clips, tiny_model_dir, tmp_path_factory) -> dict:
    """The chain on a local folder (in this process), on S3 and on GCS (the jobs' processes), run side by side (each
    job is a process that mostly imports and compiles on one core): ``{"local" | "s3" | "gs": Future of the
    chain's outputs}``."""
    # The S3 jobs get the endpoint through --kvstore_spec (region and keys from the variables); this process reads
    # the outputs back through AWS_ENDPOINT_URL.
    spec = ("--kvstore_spec", f'{{"endpoint": "{s3["AWS_ENDPOINT_URL"]}"}}')
    runs = {
        "s3": (f"s3://{BUCKET}/run", dict(s3, AWS_ENDPOINT_URL=""), spec),
        "gs": (f"gs://{BUCKET}/run", gcs, ()),
    }
    with concurrent.futures.ThreadPoolExecutor(len(runs) + 1) as pool:
        futures = {
            name: pool.submit(run_chain, run_job, root, clips, tiny_model_dir, env=env, extra=extra)
            for name, (root, env, extra) in runs.items()
        }
        futures["local"] = pool.submit(run_local_chain, str(tmp_path_factory.mktemp("local")), clips, tiny_model_dir)
        concurrent.futures.wait(futures.values())
    return futures


def all_values(url: str, root: str) -> dict[str, bytes]:
    """Every key under ``url`` and its bytes, with the run's ``root`` written as ``<root>`` (manifests name the
    stores they read), the creation records of JSON manifests (time, host) and the digests over them, and the figures
    and their digest files left out."""
    _, kv = open_kvstore(url)
    values = {}
    for key in kv.list().result():
        if key.endswith((b".png", b".png.sha256")):  # figures print the store's location in their subtitles, as pixels
            continue
        value = bytes(kv.read(key).result().value).replace(root.encode(), b"<root>")
        if key.endswith(b".json"):
            value = json.dumps(_without_created(json.loads(value)), sort_keys=True).encode()
        values[key.decode()] = value
    return values


def _without_created(value):
    if isinstance(value, dict):
        return {k: _without_created(v) for k, v in value.items() if k not in ("created", "digest")}
    if isinstance(value, list):
        return [_without_created(v) for v in value]
    return value


def assert_same_outputs(local: dict, remote: dict) -> None:
    """Arrays through the readers, then every key of every output byte for byte (but the lease, which is gone)."""
    a, b = open_store(local["store"]), open_store(remote["store"])
    assert sorted(a.languages()) == sorted(b.languages()) == sorted(LANGS)
    assert a.info.layers == b.info.layers
    for lang in a.languages():
        np.testing.assert_array_equal(a.lengths(lang), b.lengths(lang))
        for layer in a.info.layers:
            np.testing.assert_array_equal(a.language_layer(lang, layer)[0], b.language_layer(lang, layer)[0])
        assert a.utterances_table(lang).equals(b.utterances_table(lang))
    sa, sb = open_similarity(local["similarity"]), open_similarity(remote["similarity"])
    assert sa.layers == sb.layers
    for measure in ("seqsim",):
        assert sa.pairs(measure) == sb.pairs(measure)
        for x, y in sa.pairs(measure):
            for layer in sa.layers:
                (ma, *ids_a), (mb, *ids_b) = sa.matrix(measure, x, y, layer), sb.matrix(measure, x, y, layer)
                np.testing.assert_array_equal(ma, mb)
                assert ids_a == ids_b
    local_root, remote_root = (out["store"].rsplit("/", 1)[0] for out in (local, remote))
    for job in local:
        mine, theirs = all_values(local[job], local_root), all_values(remote[job], remote_root)
        assert sorted(mine) == sorted(theirs), job
        differ = [key for key in mine if mine[key] != theirs[key]]
        assert not differ, f"{job}: {differ} differ between the local and the remote run"


def test_s3_chain_equals_local(chains):
    assert_same_outputs(chains["local"].result(), chains["s3"].result())


def test_gcs_chain_equals_local(chains):
    assert_same_outputs(chains["local"].result(), chains["gs"].result())


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_verify_finds_and_repair_redoes_a_deleted_shard_on_an_object_store(scheme, chains, run_job, clips,
                                                                           tiny_model_dir, s3, gcs):  # fmt: skip
    remote = chains[scheme].result()
    for job in ("store", "similarity", "align", "decode"):
        report = run_verify(configure(VerifyConfig, location=remote[job], progress=False))
        assert report.damage == [] and report.checked, report.report()
    _, kv = open_kvstore(remote["store"])
    kv.write("de/states/c.0.1.0.0", None).result()  # deleted
    report = run_verify(configure(VerifyConfig, location=remote["store"], progress=False))
    assert [(d.what, d.key) for d in report.damage] == [("de utterance 1 (id 'b')", "de/states/c.0.1.0.0")]
    assert run_verify(configure(VerifyConfig, location=remote["store"], repair=True, progress=False)).exit_code == 0
    if scheme == "s3":
        env, extra = dict(s3, AWS_ENDPOINT_URL=""), ("--kvstore_spec", f'{{"endpoint": "{s3["AWS_ENDPOINT_URL"]}"}}')
    else:
        env, extra = gcs, ()
    proc = run_job("encode", "--out", remote["store"], "--model", str(tiny_model_dir), "--dataset",
                   f"folder:{clips}", *extra, env=env)  # fmt: skip
    assert "encoded 1 utterances" in proc.stdout, proc.stdout  # exactly the repaired one
    assert_same_outputs(chains["local"].result(), remote)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_lease_and_write_once_keys(scheme, request, caplog):
    request.getfixturevalue({"s3": "s3", "gs": "gcs"}[scheme])
    url = f"{scheme}://{BUCKET}/lease-{time.time_ns()}"
    _, kv = open_kvstore(url)
    assert create_key(kv, "once.json", b"1", url)
    with WriterLease(kv, url, "first", ttl=30) as first:
        # moto honours S3's If-None-Match / If-Match; gcp-storage-emulator ignores ifGenerationMatch.
        assert first.conditional == (scheme == "s3")
        with pytest.raises(StoreBusyError, match="being written by another run: first"):
            WriterLease(kv, url, "second", ttl=30).take()
        assert kv.read(LEASE).result().state == "value"
    assert kv.read(LEASE).result().state == "missing"
    # --worker runs are warned too (a probe's two GCS workers encoded 33 utterances of 30, without a word)
    caplog.clear()
    with SharedLease(kv, url, "encode", {"format": "babelgrid-encode"}, ttl=30):
        warned = [r.getMessage() for r in caplog.records if "ignores conditional writes" in r.getMessage()]
    assert len(warned) == (scheme == "gs") and all("--claim_utterances 256" in w for w in warned), warned
    assert not create_key(kv, "once.json", b"2", url)
    assert bytes(kv.read("once.json").result().value) == b"1"


def test_a_bucket_that_does_not_exist_is_named_not_taken_for_a_lease_race(s3):
    """S3 answers a conditional write into a missing bucket as a failed condition: every job said "another run took
    the writer lease at the same moment" (cluster-user probe)."""
    url = f"s3://no-such-bucket-{time.time_ns()}/out"
    _, kv = open_kvstore(url)
    with pytest.raises(StoreError, match=r"writer lease \(lease\.json\) could not be written, and no other run's is "
                       r"there: .*Does the bucket exist") as refused:  # fmt: skip
        WriterLease(kv, url, "encode", ttl=30).take()
    assert not isinstance(refused.value, StoreBusyError)
    with pytest.raises(StoreError, match=r"could not be written, and no other run's is there"):  # retried for ever
        SharedLease(kv, url, "encode", {"format": "babelgrid-encode"}, ttl=30).take()
    # A reader was told "no babelgrid store ... has no manifest.json. Check the path" (a read in a missing bucket
    # answers "missing"), and status and verify dumped the server's XML answer
    with pytest.raises(
        StoreError, match=r"NoSuchBucket: The specified bucket does not exist\): the bucket does not ex"
    ) as e:
        open_store(url)
    assert "http_response_body" not in str(e.value) and len(str(e.value)) < 300, str(e.value)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_broken_lease_stops_its_holder(scheme, request):
    request.getfixturevalue({"s3": "s3", "gs": "gcs"}[scheme])
    url = f"{scheme}://{BUCKET}/broken-{time.time_ns()}"
    _, kv = open_kvstore(url)
    first = WriterLease(kv, url, "first", ttl=0.6)
    first.take()
    try:
        WriterLease(kv, url, "second", ttl=30, break_lease=True).take()  # a run sure that "first" is dead
        deadline = time.time() + 10
        while first._lost is None and time.time() < deadline:
            time.sleep(0.1)
        with pytest.raises(StoreBusyError, match="broken by another run"):
            first.check()
    finally:
        first.release()
    assert b"second" in bytes(kv.read(LEASE).result().value)  # the holder that lost it does not delete it


def test_a_study_reruns_a_stage_whose_remote_input_changed(chains, s3, tmp_path):
    """A study whose retrieval stage reads the S3 chain's similarity store (a remote input, fingerprinted by its
    listing and manifest): skipped while the store is unchanged; a key added to it on S3 reruns the stage."""
    from tests.jobs.test_studies import babelgrid, lines

    remote = chains["s3"].result()
    (tmp_path / "study.yaml").write_text(
        f'stages:\n  - retrieval: {{similarity: "{remote["similarity"]}", out: "{tmp_path / "retrieval"}"}}\n'
    )
    first = babelgrid("study.yaml", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    record = json.loads((tmp_path / "out" / "runs" / "01-retrieval.json").read_text())
    assert record["inputs"]["similarity"].startswith("listing:") and "None" not in str(record["inputs"]), record
    assert lines(babelgrid("study.yaml", cwd=tmp_path))["1 retrieval"].endswith("skipped")
    _, kv = open_kvstore(remote["similarity"])
    kv.write("notes/added.txt", b"a file added on S3 after the study ran\n").result()
    second = babelgrid("study.yaml", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert lines(second)["1 retrieval"].startswith("runs (inputs changed since it completed: --similarity=s3://")
