"""Layer store: round trips, the commit protocol under kills, concurrent writers, refusals, reader."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_dtypes
import numpy as np
import pytest
import tensorstore as ts

from engine.errors import BabelgridError, ShapeError
from engine.models import family
from engine.models.interface import WAV2VEC2_LAYERS, FamilyDims
from engine.models.whisper import features as whisper_features
from engine.stores import schema
from engine.stores.integrity import DamageError
from engine.stores.kv import StoreError
from engine.stores.language import utterance_range
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from engine.stores.schema import FORMAT_VERSION, LENGTHS_CHUNK, StoreDims, StoreInfo
from engine.stores.utterances import StoreMismatchError, UtteranceRow
from tests.engine.scripts import store_writer as writer
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
WRITER = REPO / "tests" / "engine" / "scripts" / "store_writer.py"

DIMS = writer.DIMS  # L = 2 blocks: layers 0..3, embed 32
INFO = writer.INFO  # layers (0, 2, 3), float32


def make_rows(frames, lang="de", ids=None):
    return [
        UtteranceRow(
            id=ids[u] if ids else f"id{u}",
            lang=lang,
            path=f"/data/{lang}/{u}.ogg",
            transcription=f"sentence {u}" if u % 2 else None,
            duration_s=n / 50,
            n_frames=n,
            n_windows=1 + n // 1500,
            speaker=f"spk{u % 3}",
            gender="female" if u % 2 else None,
        )
        for u, n in enumerate(frames)
    ]


def random_states(rng, info, n_frames):
    return (rng.standard_normal((len(info.layers), n_frames, info.embed)) * 3).astype(np.float32)


def fill(tmp_url, info=INFO, frames=(5, 17, 1, 40, 23), lang="de"):
    """A store with one language, every utterance written; returns (store, arrays, rows, float32 states)."""
    s = LayerStore.create_or_open(tmp_url, info, creation={"command": "pytest"})
    rows = make_rows(frames, lang)
    arrays = s.language(lang, rows)
    rng = np.random.default_rng(0)
    data = [random_states(rng, info, n) for n in frames]
    handles = [arrays.write_utterance(u, x) for u, x in enumerate(data)]
    arrays.flush()
    assert all(h.done() for h in handles)
    return s, arrays, rows, data


@pytest.fixture
def url(tmp_path):
    return f"file://{tmp_path}/out"


def test_manifest_from_before_compute_settings_were_recorded(tmp_path):
    """A manifest without compute_dtype, long_audio and features (written by earlier babelgrid) reads as the only
    settings those versions' jobs had, resumes with them, and refuses others."""
    url = str(tmp_path / "out")
    LayerStore.create_or_open(url, INFO)
    path = tmp_path / "out" / "manifest.json"
    old = json.loads(path.read_text())
    for field in ("compute_dtype", "long_audio", "features", "digest"):
        del old[field]
    path.write_text(json.dumps(old))
    assert open_store(url).info == INFO
    LayerStore.create_or_open(url, INFO)
    with pytest.raises(StoreMismatchError, match="compute_dtype: store has 'float32', this run 'bfloat16'"):
        LayerStore.create_or_open(url, dataclasses.replace(INFO, compute_dtype="bfloat16"))


def test_round_trip_float32_is_bitwise(url):
    _, arrays, rows, data = fill(url)
    reader = open_store(url)
    assert reader.info == INFO and reader.languages() == ["de"]
    for u, x in enumerate(data):
        for position, layer in enumerate(INFO.layers):
            got = reader.states("de", u, layer)
            assert got.dtype == np.float32 and got.shape == (rows[u].n_frames, DIMS.n_audio_state)
            np.testing.assert_array_equal(got, x[position])
    np.testing.assert_array_equal(reader.lengths("de"), [r.n_frames for r in rows])


def _state_files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "de" / "states").iterdir()) if p.name != "zarr.json"}


def test_stores_are_the_same_bytes_whatever_the_threads_and_lending(tmp_path):
    """One writer thread or many, the caller's cast or the writer's (lent): the same shard bytes, buffers reused
    across utterances of other lengths included (stale frames of a longer one must be zeroed either way)."""
    frames = (40, 5, 17, 1, 40, 23, 2, 39)
    rng = np.random.default_rng(0)
    data = [random_states(rng, INFO, n).astype(ml_dtypes.bfloat16) for n in frames]
    info = dataclasses.replace(INFO, dtype="bfloat16")
    written = {}
    for threads, lent in ((1, False), (1, True), (4, True), (4, False)):
        folder = tmp_path / f"{threads}-{lent}"
        s = LayerStore.create_or_open(str(folder), info)
        shard_bytes = len(info.layers) * max(frames) * info.embed * 2
        with s.language("de", make_rows(frames), write_threads=threads, max_in_flight_bytes=2 * shard_bytes) as arrays:
            for u, x in enumerate(data):  # two shards in flight at most: the buffers are reused
                arrays.write_utterance(u, x, lent=lent)
        written[threads, lent] = _state_files(folder)
    reference = written[1, False]
    assert len(reference) == len(frames)
    for key, files in written.items():
        assert files == reference, key


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_round_trip_low_precision_is_the_cast(tmp_path, dtype):
    info = dataclasses.replace(INFO, dtype=dtype)
    _, _, _, data = fill(str(tmp_path / "out"), info)  # a plain local path
    reader = open_store(str(tmp_path / "out"))
    storage = ts.dtype(dtype).numpy_dtype
    eps = {"bfloat16": 2.0**-8, "float16": 2.0**-11}[dtype]
    for u, x in enumerate(data):
        got = reader.states("de", u, 2)
        assert got.dtype == storage
        np.testing.assert_array_equal(got, x[1].astype(storage))
        np.testing.assert_allclose(reader.states("de", u, 2, dtype=np.float32), x[1], rtol=eps, atol=1e-6)


def test_memory_store_outlives_its_handle():
    url = "memory://test_store/mem"
    _, _, _, data = fill(url)
    reader = open_store(url)
    np.testing.assert_array_equal(reader.states("de", 3, 0), data[3][0])


def test_lengths_and_done(url):
    s = LayerStore.create_or_open(url, INFO)
    rows = make_rows([4, 9, 2, 7])
    arrays = s.language("de", rows)
    np.testing.assert_array_equal(arrays.lengths(), [-1, -1, -1, -1])
    assert not arrays.done().any()
    rng = np.random.default_rng(1)
    arrays.write_utterance(1, random_states(rng, INFO, 9)).result()
    arrays.write_utterance(3, random_states(rng, INFO, 7))
    arrays.flush()
    np.testing.assert_array_equal(arrays.lengths(), [-1, 9, -1, 7])
    np.testing.assert_array_equal(LayerStore.open(url).language("de").done(), [False, True, False, True])


def test_manifest_and_layout(url, tmp_path):
    fill(url)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 3
    assert manifest["layers"] == [0, 2, 3] and manifest["dtype"] == "float32" and manifest["frame_rate"] == 50.0
    assert manifest["dims"] == DIMS.to_dict() and manifest["checkpoint_sha256"] == "0" * 64
    assert manifest["created"]["command"] == "pytest" and manifest["created"]["jax_version"]
    states = json.loads((tmp_path / "out" / "de" / "states" / "zarr.json").read_text())
    assert states["dimension_names"] == ["layer", "utterance", "frame", "embed"]
    assert states["shape"] == [3, 5, 40, 32]
    lengths = json.loads((tmp_path / "out" / "de" / "lengths" / "zarr.json").read_text())
    assert lengths["fill_value"] == -1 and lengths["chunk_grid"]["configuration"]["chunk_shape"] == [LENGTHS_CHUNK]
    table = open_store(url).utterances_table("de")
    assert table.column_names == ["utterance", *(f.name for f in dataclasses.fields(UtteranceRow))]
    assert json.loads((tmp_path / "out" / "languages" / "de.json").read_text())["n_utterances"] == 5


@pytest.mark.parametrize(
    "field, change",
    [
        ("model_name", {"model_name": "other"}),
        ("checkpoint_sha256", {"checkpoint_sha256": "f" * 64}),
        ("dims.n_audio_state", {"dims": dataclasses.replace(DIMS, n_audio_state=64)}),
        ("layers", {"layers": (0, 1, 2, 3)}),
        ("dtype", {"dtype": "bfloat16"}),
        ("compute_dtype", {"compute_dtype": "bfloat16"}),
        ("long_audio", {"long_audio": "truncate"}),
        ("features.hop_length", {"features": {**INFO.features, "hop_length": 320}}),
    ],
)
def test_create_or_open_refuses_another_configuration(url, field, change):
    LayerStore.create_or_open(url, INFO)
    other = dataclasses.replace(INFO, **change)
    with pytest.raises(StoreMismatchError, match=field) as e:
        LayerStore.create_or_open(url, other)
    assert isinstance(e.value, BabelgridError)

    def shown(info):  # the message shows values as the manifest's JSON holds them: tuples as lists
        value = getattr(info, field)
        return repr(list(value) if isinstance(value, tuple) else value)

    if "." not in field:
        assert shown(INFO) in str(e.value) and shown(other) in str(e.value)
    LayerStore.create_or_open(url, INFO)  # the same settings still open


def test_reopen_with_another_utterance_table_is_refused(url):
    s, arrays, rows, _ = fill(url)
    assert s.language("de", rows) is arrays
    assert LayerStore.create_or_open(url, INFO).language("de", rows).n_utterances == 5
    renamed = [*rows[:2], dataclasses.replace(rows[2], id="other"), *rows[3:]]
    for other, match in [(rows[:4], "5 utterances"), (renamed, "utterance 2 .* id"), (rows[::-1], "utterance 0")]:
        with pytest.raises(StoreMismatchError, match=match):
            LayerStore.create_or_open(url, INFO).language("de", other)
    with pytest.raises(StoreMismatchError, match="never resized"):
        LayerStore.create_or_open(url, INFO).language("de", rows, max_frames=41)


@pytest.mark.parametrize("lang", ["../x", "a/b", ".", "..", "", "a b", "x.json", "/abs", "languages", "-x", 3])
def test_language_names_that_could_escape_are_refused(url, lang):
    s = LayerStore.create_or_open(url, INFO)
    with pytest.raises(StoreError, match="cannot name a store folder"):
        s.language(lang, make_rows([3]))


def test_language_layer_equals_slicing_and_zeroes_padding(url):
    _, arrays, rows, data = fill(url)
    reader = open_store(url)
    for position, layer in enumerate(INFO.layers):
        states, lengths = reader.language_layer("de", layer)
        assert states.shape == (5, 40, 32)
        np.testing.assert_array_equal(states, arrays.states_store[position].read().result())
        for u, x in enumerate(data):
            np.testing.assert_array_equal(states[u, : rows[u].n_frames], x[position])
            assert not states[u, rows[u].n_frames :].any()
        sub, sub_lengths = reader.language_layer("de", layer, utterances=[3, 0])
        np.testing.assert_array_equal(sub, states[[3, 0]])
        np.testing.assert_array_equal(sub_lengths, lengths[[3, 0]])
    with pytest.raises(StoreError, match=r"layer 1 is not in .* \[0, 2, 3\]"):
        reader.states("de", 0, 1)
    # docs/store.md's block of range(0, 512) on a language of 30: the message says what was passed
    with pytest.raises(StoreError, match=r"indices in 0..4 of 'de' \(it has 5\); got 507 outside, e.g. 5"):
        reader.language_layer("de", 0, utterances=range(0, 512))


def test_shard_killed_before_its_marker_is_not_done(url):
    s = LayerStore.create_or_open(url, INFO)
    rows = make_rows([6, 8])
    arrays = s.language("de", rows)
    rng = np.random.default_rng(2)
    shard = np.zeros((3, 8, 32), np.float32)
    shard[:, :8] = random_states(rng, INFO, 8)
    arrays._write_states(1, shard)  # what a kill between the shard commit and the marker leaves
    arrays.write_utterance(0, random_states(rng, INFO, 6)).result()
    reader = open_store(url)
    np.testing.assert_array_equal(reader.done("de"), [True, False])
    with pytest.raises(StoreError, match="not done"):
        reader.states("de", 1, 0)
    states, lengths = reader.language_layer("de", 0)
    assert lengths[1] == -1 and not states[1].any()
    # The one-pass read for kernels that mask by length: the frames asked for, cast while reading, padding as stored;
    # an utterance not done is never read (its shard, if any, is not trusted), so it reads as zeros.
    raw, raw_lengths = reader.language_layer("de", 0, dtype=ml_dtypes.bfloat16, frames=7, zero_padding=False)
    assert raw.shape == (2, 7, 32) and raw.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(raw_lengths, lengths)
    assert not raw[1].any()
    np.testing.assert_array_equal(raw[0, :6], states[0, :6].astype(ml_dtypes.bfloat16))
    with pytest.raises(StoreError, match="frames must be in 0..8"):
        reader.language_layer("de", 0, frames=9)
    arrays.write_utterance(1, shard).result()  # the resume redoes it
    np.testing.assert_array_equal(open_store(url).states("de", 1, 3), shard[2])


def _run_writer(url, start, stop, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(WRITER), url, str(start), str(stop), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_done_utterances(url, expect_all=False):
    reader = open_store(url)
    lengths = reader.lengths(writer.LANG)
    done = np.flatnonzero(lengths >= 0)
    for u in done:
        assert lengths[u] == writer.n_frames(u)
        expected = writer.utterance_states(u)
        for position, layer in enumerate(INFO.layers):
            np.testing.assert_array_equal(reader.states(writer.LANG, int(u), layer), expected[position])
    if expect_all:
        assert done.size == lengths.size
    return done.size


@pytest.mark.slow
def test_sigkill_while_writing_leaves_only_complete_utterances(tmp_path):
    url = f"file://{tmp_path}/out"
    n = writer.N_UTTERANCES
    for threshold in (60, 350):  # killed in the first pass, then again while overwriting done utterances
        proc = _run_writer(url, 0, n, "--forever")
        arrays = None
        deadline = time.monotonic() + patient(120)
        while time.monotonic() < deadline:
            if arrays is None and (tmp_path / "out" / "languages" / "xx.json").exists():
                arrays = LayerStore.open(url).language(writer.LANG)
            if arrays is not None and arrays.done().sum() >= threshold:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert 0 < _check_done_utterances(url) < n or threshold == 350
    resume = _run_writer(url, 0, n)  # redoes everything; a real resume would skip the done ones
    assert resume.wait(timeout=patient(120)) == 0, resume.communicate()
    _check_done_utterances(url, expect_all=True)


@pytest.mark.slow
def test_two_processes_write_disjoint_aligned_ranges(tmp_path):
    url = f"file://{tmp_path}/out"
    n = writer.N_UTTERANCES
    ranges = [utterance_range(n, i, 2) for i in range(2)]
    assert ranges == [range(0, 256), range(256, 600)]
    procs = [_run_writer(url, r.start, r.stop) for r in ranges]  # both create the store and the language at once
    for proc in procs:
        assert proc.wait(timeout=patient(120)) == 0, proc.communicate()
    _check_done_utterances(url, expect_all=True)


def test_utterance_range_is_aligned_disjoint_and_complete():
    for n, count in [(1, 1), (600, 2), (1000, 3), (5000, 7), (300, 4)]:
        ranges = [utterance_range(n, i, count) for i in range(count)]
        assert [u for r in ranges for u in r] == list(range(n))
        assert all(r.start % LENGTHS_CHUNK == 0 for r in ranges if r)
    with pytest.raises(StoreError):
        utterance_range(10, 2, 2)


def test_file_count_grows_with_utterances_not_layers(tmp_path):
    info = dataclasses.replace(INFO, layers=(0, 1, 2, 3))
    frames = [3 + u % 5 for u in range(300)]
    s = LayerStore.create_or_open(str(tmp_path / "out"), info)
    arrays = s.language("de", make_rows(frames))
    for u, n in enumerate(frames):
        arrays.write_utterance(u, np.full((4, n, 32), u + 1, np.float32))
    arrays.flush()
    files = [p for p in (tmp_path / "out" / "de").rglob("*") if p.is_file()]
    # one shard per utterance, two lengths chunks, two zarr.json, the table
    assert len(files) == 300 + 2 + 2 + 1, sorted(p.name for p in files)[:10]
    assert not any(p.is_dir() for p in (tmp_path / "out" / "de" / "states").iterdir())


def _file_bytes_read():
    metrics = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read")
    return sum(m["values"][0].get("value", 0) for m in metrics)


def test_writes_read_nothing_back_and_a_layer_read_reads_one_layer(tmp_path):
    info = dataclasses.replace(INFO, layers=(0, 1, 2, 3))
    s = LayerStore.create_or_open(str(tmp_path / "out"), info)
    frames = [50] * 20
    arrays = s.language("de", make_rows(frames))
    rng = np.random.default_rng(3)
    before = _file_bytes_read()
    for u in range(20):
        arrays.write_utterance(u, random_states(rng, info, 50))
    arrays.flush()
    # only the lengths chunk is read (to set one element), never a states shard
    assert _file_bytes_read() - before <= 20 * LENGTHS_CHUNK * 4
    shard_bytes = sum(p.stat().st_size for p in (tmp_path / "out" / "de" / "states").glob("c.*"))
    before = _file_bytes_read()
    open_store(str(tmp_path / "out")).language_layer("de", 2)
    read = _file_bytes_read() - before
    assert read < shard_bytes / 4 * 1.2, (read, shard_bytes)


def test_write_utterance_checks_its_input(url):
    info = dataclasses.replace(INFO, dtype="float16")
    s = LayerStore.create_or_open(url, info)
    arrays = s.language("de", make_rows([4, 6]))
    good = np.ones((3, 4, 32), np.float32)
    with pytest.raises(ShapeError, match="n_frames=4"):
        arrays.write_utterance(0, np.ones((3, 5, 32), np.float32))
    with pytest.raises(ShapeError, match="layer=3"):
        arrays.write_utterance(0, np.ones((2, 4, 32), np.float32))
    with pytest.raises(ShapeError, match="floating point"):
        arrays.write_utterance(0, good.astype(np.int32))
    with pytest.raises(StoreError, match="outside 0..1"):
        arrays.write_utterance(2, good)
    with pytest.raises(StoreError, match="read-only"):
        LayerStore.open(url).language("de").write_utterance(0, good)
    with pytest.raises(StoreError, match="reach 1e\\+06, past the float16 maximum 6.55e\\+04"):
        arrays.write_utterance(0, good * -1e6)
    with pytest.raises(StoreError, match="NaN or inf"):
        arrays.write_utterance(0, np.where(np.arange(32) == 5, np.nan, good).astype(np.float32))
    with pytest.raises(StoreError, match="NaN or inf"):
        arrays.write_utterance(1, np.full((3, 6, 32), -np.inf, np.float32))
    assert not arrays.done().any()


def test_a_failed_write_is_raised_by_flush_and_the_next_write(url, monkeypatch):
    s = LayerStore.create_or_open(url, INFO)
    arrays = s.language("de", make_rows([4, 4, 4]), max_in_flight_bytes=1)  # one write in flight at a time
    real = arrays._write_states

    def failing(u, shard):
        if u == 1:
            raise OSError("disk full")
        real(u, shard)

    monkeypatch.setattr(arrays, "_write_states", failing)
    x = np.ones((3, 4, 32), np.float32)
    arrays.write_utterance(0, x)
    handle = arrays.write_utterance(1, x)
    with pytest.raises(OSError, match="disk full"):
        handle.result()
    with pytest.raises(StoreError, match="utterance 1 .* disk full"):
        arrays.flush()
    with pytest.raises(StoreError, match="utterance 1"):
        arrays.write_utterance(2, x)
    np.testing.assert_array_equal(arrays.lengths(), [4, -1, -1])


def test_unreadable_utterances_are_listed_but_never_written(url):
    s = LayerStore.create_or_open(url, INFO)
    rows = make_rows([5, 7])
    rows[1] = dataclasses.replace(rows[1], n_frames=0, n_windows=0, duration_s=0.0)  # audio that could not be read
    arrays = s.language("de", rows)
    assert arrays.max_frames == 5
    with pytest.raises(StoreError, match="n_frames=0"):
        arrays.write_utterance(1, np.zeros((3, 0, 32), np.float32))
    only_unreadable = s.language("fr", [dataclasses.replace(rows[1], lang="fr")])
    assert only_unreadable.max_frames == 1 and not only_unreadable.done().any()


def test_create_language_checks_max_frames(url):
    s = LayerStore.create_or_open(url, INFO)
    with pytest.raises(StoreError, match="max_frames=10 is shorter than utterance 1"):
        s.language("de", make_rows([4, 12]), max_frames=10)
    arrays = s.language("de", make_rows([4, 12]), max_frames=2000)  # long utterances: several windows
    assert arrays.max_frames == 2000
    assert LayerStore.create_or_open(url, INFO).language("de", make_rows([4, 12])).max_frames == 2000


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no babelgrid store .* manifest.json"):
        open_store(str(tmp_path / "nothing"))
    url = str(tmp_path / "out")
    fill(url)
    with pytest.raises(StoreError, match="no language 'fr'; it has \\['de'\\]"):
        open_store(url).utterances_table("fr")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest["format_version"] = 4
    del manifest["digest"]  # a hand edit: else the digest refuses it first
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="format version 4; this babelgrid reads versions 1, 2, 3"):
        open_store(url)
    with pytest.raises(StoreError, match="store location"):
        LayerStore.open("nonsense://x")


def test_reader_table_lookup_and_ids(url):
    ids = ["a", "b", "a", "c", "d"]  # "a": two recordings of one sentence
    s = LayerStore.create_or_open(url, INFO)
    rows = make_rows([5, 6, 7, 8, 9], ids=ids)
    arrays = s.language("de", rows)
    rng = np.random.default_rng(4)
    data = [random_states(rng, INFO, r.n_frames) for r in rows]
    for u, x in enumerate(data):
        arrays.write_utterance(u, x)
    arrays.flush()
    reader = open_store(url)
    assert reader.lookup("de", "a") == [0, 2] and reader.lookup("de", "zz") == []
    np.testing.assert_array_equal(reader.states("de", "c", 3), data[3][2])
    with pytest.raises(StoreError, match=r"names 2 utterances .*\[0, 2\]"):
        reader.states("de", "a", 0)
    df = reader.utterances("de")
    assert list(df.index) == [0, 1, 2, 3, 4] and list(df["id"]) == ids
    assert df.loc[1, "transcription"] == "sentence 1" and df["transcription"].isna().tolist() == [1, 0, 1, 0, 1]
    assert [r.n_frames for r in rows] == list(df["n_frames"])


def test_languages_are_listed_once_created(url):
    s = LayerStore.create_or_open(url, INFO)
    assert s.languages() == []
    s.language("fr", make_rows([3], "fr"))
    s.language("de", make_rows([3]))
    assert s.languages() == ["de", "fr"] == open_store(url).languages()


def test_a_changed_utterance_row_is_named_with_its_id_and_file():
    """A resume whose table differs names the utterance by id and file, and says when a clip the store holds as
    unreadable (skipped) reads now: the dataset changed under the store."""
    from engine.stores.utterances import check_same_rows

    stored = UtteranceRow(id="s7", lang="en", path="/d/en/s7.wav", duration_s=0.0, n_frames=0, n_windows=0)
    now = dataclasses.replace(stored, duration_s=8.76, n_frames=438, n_windows=1)
    want = (
        r"utterance 0 \(id 's7', /d/en/s7\.wav\) of language 'en' in 'S' differs from this run's: duration_s is "
        r"0\.0 in the store, 8\.76 now \(unreadable when the store was made, readable now: it was replaced\)"
    )
    with pytest.raises(StoreMismatchError, match=want):
        check_same_rows([stored], [now], "en", "S")
    check_same_rows([now], [now], "en", "S")


def test_store_info_validates():
    with pytest.raises(StoreError, match="layers"):
        StoreInfo("m", "x", DIMS, (0, 4), "float32")  # L = 2: layers 0..3
    with pytest.raises(StoreError, match="dtype"):
        StoreInfo("m", "x", DIMS, (0,), "int8")
    with pytest.raises(StoreError, match="n_frames"):
        UtteranceRow(id="a", lang="de", path="p", duration_s=1.0, n_frames=-1, n_windows=1)
    with pytest.raises(StoreError, match="recording"):
        UtteranceRow(id="a", lang="de", path="p", duration_s=1.0, n_frames=1, n_windows=1, recording="1")
    with pytest.raises(StoreError, match="id"):
        UtteranceRow(id=7, lang="de", path="p", duration_s=1.0, n_frames=1, n_windows=1)
    assert StoreInfo.from_dict(INFO.to_dict()) == INFO
    assert isinstance(INFO.dims, StoreDims) and INFO.dims.to_dict() == DIMS.to_dict()  # the model's record, whole
    assert (INFO.n_layers_out, INFO.embed, INFO.n_blocks) == (DIMS.n_encoder_layers_out, DIMS.n_audio_state, 2)
    with pytest.raises(StoreError, match="n_audio_layer"):
        StoreInfo("m", "x", {k: v for k, v in DIMS.to_dict().items() if k != "n_audio_layer"}, (0,), "float32")
    with pytest.raises(StoreError, match="family"):
        StoreInfo("m", "x", DIMS, (0,), "float32", family="no family/")


def test_store_dims_read_every_family_s_record_and_give_it_back_whole():
    """One dims type for every family: a Whisper record (OpenAI's fields) and another family's
    ``{n_layers_out, embed, config}`` both read as ``StoreDims`` and write back as they came."""
    other = FamilyDims(n_layers_out=5, embed=16, config={"kernel": (10, 3), "norm": "layer"})
    info = StoreInfo("m", "x", other, (0, 4), "float32", family="wav2vec2", layer_meaning=WAV2VEC2_LAYERS)
    assert (info.n_layers_out, info.embed, info.n_blocks) == (5, 16, 4)
    assert info.to_dict()["dims"] == other.to_dict() | {"config": {"kernel": [10, 3], "norm": "layer"}}
    assert StoreInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    assert json.dumps(INFO.to_dict()["dims"]) == json.dumps(DIMS.to_dict())  # manifests stay byte-identical


def test_depth_puts_each_family_s_last_norm_at_one():
    """compare's depth axis, each family's rule read off a store's dims (``Family.store_depth``: the store itself
    holds none): Whisper's ln_post (L + 1) at 1; a wav2vec2-style store's last layer L at L / (L + 1); a speech LLM's
    tower counted by its blocks, so Voxtral's final norm (L + 1) is at 1 as ln_post is and Qwen2-Audio's last block
    at L / (L + 1); its final output at 1 and its projector one block past."""

    def depth(name, dims, layers=(0,)):
        info = StoreInfo("m", "x", dims, layers, "float32", family=name)
        return family.FAMILIES[name].store_depth(info)

    assert depth("whisper", DIMS)(INFO.n_blocks + 1) == 1.0 and depth("whisper", DIMS)(1) == 1 / (INFO.n_blocks + 1)
    assert depth("wav2vec2", FamilyDims(5, 8, {}))(4) == 4 / 5

    def tower(output, n_layers_out):
        return depth("speechllm", FamilyDims(n_layers_out, 8, {"layers": 4, "output": output}))

    assert tower("layers", 6)(5) == 1.0 and tower("layers", 6)(4) == 4 / 5  # Voxtral: 4 blocks + norm
    assert tower("layers", 5)(4) == 4 / 5  # Qwen2-Audio: 4 blocks, its norm after the pooling
    assert tower("final", 1)(0) == 1.0 and tower("projector", 1)(0) == 1 + 1 / 5


def test_store_dims_are_read_by_their_layout_not_the_family_name():
    """A dims record is OpenAI's ``ModelDimensions`` (Whisper's stores) or ``{n_layers_out, embed, config}``, told
    apart by ``config``: a manifest's family, or its lack (stores before families were recorded), decides nothing."""
    assert StoreDims.from_dict(DIMS.to_dict()).n_blocks == DIMS.n_audio_layer
    other = StoreDims.from_dict({"n_layers_out": 5, "embed": 8, "config": {}})
    assert (other.n_layers_out, other.embed, other.n_blocks) == (5, 8, 4)
    old = {k: v for k, v in INFO.to_dict().items() if k != "family"}  # a manifest from before families
    assert StoreInfo.from_dict(old) == INFO and StoreInfo.from_dict(old).family == "whisper"


def test_what_old_manifests_mean_is_still_whisper_s_own():
    """The store writes out what a manifest without family, layer meaning, frame rate or features means (it imports
    no model); those are Whisper's, and must stay so for stores already written."""
    assert (schema.DEFAULT_FAMILY, schema.WHISPER_LAYERS) == (family.DEFAULT_FAMILY, family.WHISPER_LAYERS)
    assert (schema.FRAME_RATE, schema.FEATURES) == (whisper_features.FRAME_RATE, whisper_features.FEATURES)
    assert all(schema.FAMILY.fullmatch(name) for name in family.FAMILIES)


def test_a_table_from_before_raw_transcription_reads_as_nulls_and_resumes(tmp_path):
    """Stores written before the ``raw_transcription`` column read it as null, and a source that now fills it
    resumes them instead of being refused as another table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = f"file://{tmp_path}/out"
    _, _, rows, _ = fill(url)
    table_path = tmp_path / "out" / "de" / "utterances.parquet"
    table = pq.read_table(table_path)
    old = table.drop_columns(["raw_transcription"]).replace_schema_metadata(None)  # no declared columns then
    pq.write_table(old, table_path)  # as an old store wrote it
    reread = open_store(url).utterances_table("de")
    assert reread.column("raw_transcription").to_pylist() == [None] * len(rows)
    assert reread.schema.field("raw_transcription").type == pa.string()
    filled = [dataclasses.replace(r, raw_transcription=f"Sentence {u}.") for u, r in enumerate(rows)]
    assert LayerStore.create_or_open(url, INFO).language("de", filled).n_utterances == len(rows)


def test_a_version_1_store_reads_with_one_warning_and_still_refuses_a_missing_shard(tmp_path, caplog):
    """Stores written before checksums (format version 1) read as before, with one warning per store; a deleted
    shard of a done utterance is still an error, not zeros (the arrays are opened with fill_missing_data_reads off)."""
    url = str(tmp_path / "old")
    _, _, _, states = fill(url)
    manifest_path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["digest"]  # version 1 manifests had none
    manifest_path.write_text(json.dumps({**manifest, "format_version": 1}))
    with caplog.at_level("WARNING", logger="engine.stores.integrity"):
        reader = open_store(url)
        open_store(url)
        np.testing.assert_array_equal(reader.states("de", 1, 2), states[1][1])
    warnings = [r for r in caplog.records if "without chunk checksums or metadata digests" in r.getMessage()]
    assert len(warnings) == 1
    (tmp_path / "old" / "de" / "states" / "c.0.3.0.0").unlink()
    with pytest.raises(DamageError, match=r"utterance 3 \(id 'id3'.*missing"):
        open_store(url).language_layer("de", 0)


def test_a_parquet_read_starts_no_thread_that_outlives_it():
    """verify exited once in ~200 runs with "terminate called without an active exception" (134) after its report:
    the worker threads pq.read_table starts (a dataset scan, even with use_threads off) were still alive when the
    process exited, the race of apache/arrow#34314. Every babelgrid Parquet read decodes on the calling thread."""
    code = (
        "import os, pyarrow as pa\n"
        "from engine.stores.integrity import parquet_bytes, read_parquet\n"
        "data = parquet_bytes(pa.table({'utterance': list(range(1000)), 'word': ['w'] * 1000}))\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "assert read_parquet(data, 'k', 'u', fix='').num_rows == 1000\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=patient(300))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0"], proc.stdout  # threads started by the read


def test_a_refused_read_or_write_gets_the_advice_that_fits_it():
    """A read refused for want of credentials (verify on an s3:// store with none) was told that the location is
    not writable and to choose another output folder (cluster-user probe)."""
    from engine.stores.kv import storage_error

    denied = ValueError("PERMISSION_DENIED: HTTP response code: 403 with body: AccessDenied")
    remote = str(storage_error("read", "manifest.json", "s3://bucket/store", denied))
    assert "refused these credentials (read)" in remote and "AWS_ACCESS_KEY_ID" in remote, remote
    assert "output folder" not in remote
    local_read = str(storage_error("read", "manifest.json", "/data/store", denied))
    assert "may not read it" in local_read and "output folder" not in local_read, local_read
    local_write = str(storage_error("write", "lease.json", "/data/store", denied))
    assert "not writable by this user; choose another output folder" in local_write, local_write


def test_a_refusal_names_each_differing_setting_in_a_few_words():
    """A store from another model was refused in one line of 2,500 characters: a whole config in each value hid the
    field that differed (newcomer probe). Values are cut; nested ones compare key by key."""
    from engine.stores.records import manifest_diffs

    big = "x" * 2000
    diffs = manifest_diffs({"model_name": big + "a", "dims": {"n_mels": 80}}, {"model_name": big + "b",
                           "dims": {"n_mels": 128}}, ("model_name", "dims"))  # fmt: skip
    assert diffs[1] == "dims.n_mels: store has 80, this run 128", diffs
    assert diffs[0].startswith("model_name: store has 'xxx") and len(diffs[0]) < 700 and diffs[0].count(" ...") == 2


def test_an_utterance_not_done_while_a_run_writes_the_store_names_the_run(tmp_path):
    """An utterance not done yet said "never committed; rerun the encode job" while the encode job was writing it
    (analyst probe). With an unexpired writer lease there, the run is named; without one, the rerun is advised."""
    url = str(tmp_path / "out")
    s = LayerStore.create_or_open(url, INFO)
    s.language("de", make_rows((5, 7), "de")).flush()
    reader = open_store(url)
    with pytest.raises(StoreError, match=r"never committed; rerun the encode job on this store to finish it$"):
        reader.states("de", 0, INFO.layers[0])
    lease = {"job": "encode", "host": "node-3", "pid": 77, "expires_unix": time.time() + 60}
    (tmp_path / "out" / "lease.json").write_text(json.dumps(lease))
    with pytest.raises(StoreError, match=r"finish it \(a run writes it now: encode on host 'node-3', pid 77\)"):
        reader.states("de", 0, INFO.layers[0])


def test_a_refusal_names_the_first_settings_that_differ_not_forty(tmp_path):
    """Encoding with a model of another family into a store named some 40 differing dims.* and features.* fields,
    2,000 characters: the first six, in the order the fields are compared (family and model first), then a count."""
    from engine.stores.kv import create_or_compare, open_kvstore

    _, kv = open_kvstore(str(tmp_path / "out"))
    first = {"family": "whisper", **{f"f{i:02d}": i for i in range(20)}}
    create_or_compare(kv, "m.json", first, str(tmp_path), fields=list(first), error=StoreError, what="store")
    other = {"family": "owsm", **{f"f{i:02d}": -i - 1 for i in range(20)}}
    with pytest.raises(StoreError, match=r"other settings: family: store has 'whisper', this run 'owsm'; f00: .*; "
                                         r"f04: store has 4, this run -5; and 15 more\. Rerun"):  # fmt: skip
        create_or_compare(kv, "m.json", other, str(tmp_path), fields=list(other), error=StoreError, what="store")


def test_an_unset_setting_reads_unset_not_none():
    """ "layers: the running workers have None, this run [1, 2, 3]" read as a bug (a cluster probe's)."""
    from engine.stores.records import manifest_diffs

    assert manifest_diffs({"layers": None}, {"layers": [1, 2, 3]}, ["layers"]) == [
        "layers: store has unset, this run [1, 2, 3]"
    ]
