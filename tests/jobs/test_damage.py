"""The damage matrix: each kind of damage to each store is detected by the job that reads it and by ``verify``, and
``verify --repair`` plus a rerun of the job that wrote it gives files byte-equal to the undamaged run's.

A clean run (encode, seqsim, retrieval) of a tiny random Whisper over 2 languages x 4 synthetic clips is made once;
each case copies it, damages one thing, and checks detection, the verify table, the repair and the rerun.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.text_decoder import WhisperDecoder
from engine.pipelines.compare.config import CompareConfig
from engine.pipelines.compare.run import run_compare
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.pipelines.verify import checks
from engine.pipelines.verify.config import VerifyConfig
from engine.pipelines.verify.run import run_verify
from engine.runtime.options import configure
from engine.stores import parts
from engine.stores.integrity import DamageError
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity

LANGS = ("de", "en")
N = 4
VOLATILE = ("lease.json", "claims", "runs")  # files a run rewrites whatever the data: not compared


def _encode(out, clips, whisper):
    config = configure(EncodeConfig, out=str(out), dataset=f"folder:{clips}", batch_size=4, progress=False)
    return run_encode(config, encoder=WhisperEncoder(whisper))


def _seqsim(store, out):
    config = configure(SimilarityConfig, store=str(store), out=str(out), measures=("seqsim", "mean"), progress=False)
    return run_similarity(config)


def _retrieval(sim):
    return run_retrieval(configure(RetrievalConfig, similarity=str(sim)))


def _verify(location, repair=False):
    return run_verify(configure(VerifyConfig, location=str(location), repair=repair, progress=False))


@pytest.fixture(scope="module")
def clean(tiny_whisper, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("damage")
    rng = np.random.default_rng(5)
    for lang in LANGS:
        (root / "clips" / lang).mkdir(parents=True)
        for i in range(N):
            t = np.arange(int(rng.uniform(0.3, 0.6) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / "clips" / lang / f"utt{i}.wav", x.astype(np.float32), SAMPLE_RATE)
    assert _encode(root / "run" / "store", root / "clips", tiny_whisper).done == len(LANGS) * N
    _seqsim(root / "run" / "store", root / "run" / "sim")
    _retrieval(root / "run" / "sim")
    return root


@pytest.fixture
def damaged(clean, tmp_path) -> pathlib.Path:
    """A copy of the clean run to damage."""
    shutil.copytree(clean / "run", tmp_path / "run")
    return tmp_path / "run"


def files(folder: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part in VOLATILE for part in p.relative_to(folder).parts) and p.suffix != ".png"
    }


def flip(path: pathlib.Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: pathlib.Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def alter(path: pathlib.Path, change) -> None:
    """``change(value)`` applied to the JSON object at ``path``, written back as valid JSON under its old digest: what
    a flipped bit that leaves valid JSON does."""
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=1) + "\n")


def flip_column_name(path: pathlib.Path, name: str = "speaker") -> None:
    """One bit of column ``name`` in the Parquet footer's schema (its first mention there): no page CRC covers it."""
    data = bytearray(path.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[data.index(name.encode(), footer) + 1] ^= 0x01
    path.write_bytes(bytes(data))


def shard(store: pathlib.Path, lang: str, u: int) -> pathlib.Path:
    return store / lang / "states" / f"c.0.{u}.0.0"


STATE_DAMAGE = {"delete": pathlib.Path.unlink, "flip": flip, "truncate": truncate}


@pytest.mark.parametrize("how", sorted(STATE_DAMAGE))
def test_a_damaged_shard_is_named_by_the_reader_and_verify_and_repaired_exactly(how, clean, damaged, tiny_whisper):
    store = damaged / "store"
    STATE_DAMAGE[how](shard(store, "en", 2))
    # The job that reads it: seqsim stops, naming the utterance; nothing is computed from zeros.
    with pytest.raises(DamageError, match=r"utterance 2 \(id 'utt2'.*(missing|corrupt).*verify .*--repair"):
        _seqsim(store, damaged / "sim2")
    reader = open_store(str(store))
    with pytest.raises(DamageError, match="utterance 2"):  # a flip damages one layer's chunk: read them all
        for layer in reader.info.layers:
            reader.language_layer("en", layer)
    report = _verify(store)
    assert report.exit_code == 1 and [(d.what, d.key) for d in report.damage] == [
        ("en utterance 2 (id 'utt2')", "en/states/c.0.2.0.0")
    ], report.report()
    assert "en utterance 2" in report.report() and "--repair" in report.report()
    repaired = _verify(store, repair=True)
    assert repaired.exit_code == 0 and "rerun encode" in repaired.report()
    assert not open_store(str(store)).done("en")[2]
    assert _verify(store).damage == []  # not done is not damage
    summary = _encode(store, clean / "clips", tiny_whisper)
    assert summary.done == 1, summary.report()  # exactly the damaged utterance is redone
    assert files(store) == files(clean / "run" / "store")


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_lengths_chunk_is_rebuilt_from_the_shards(how, clean, damaged, tiny_whisper):
    store = damaged / "store"
    chunk = store / "de" / "lengths" / "c.0"
    if how == "flip":
        flip(chunk, at=0.3)
    else:  # the first 514 of 1028 bytes: TensorStore says FAILED_PRECONDITION, "Not enough data"
        chunk.write_bytes(chunk.read_bytes()[:514])
    with pytest.raises(DamageError, match=r"done markers \(lengths\) of language 'de'"):
        open_store(str(store)).lengths("de")
    report = _verify(store)
    assert [d.key for d in report.damage] == ["de/lengths/c.0"] and report.exit_code == 1
    assert _verify(store, repair=True).exit_code == 0
    assert _encode(store, clean / "clips", tiny_whisper).done == 0  # every shard verified: nothing to redo
    assert files(store) == files(clean / "run" / "store")


@pytest.mark.parametrize("how", ["truncate", "footer"])
def test_a_damaged_utterance_table_is_a_named_error_and_rewritten_by_encode(how, clean, damaged, tiny_whisper):
    store = damaged / "store"
    (truncate if how == "truncate" else flip_column_name)(store / "en" / "utterances.parquet")
    reason = "truncated, corrupt or not a Parquet file" if how == "truncate" else "not the one its writer declared"
    with pytest.raises(DamageError, match=rf"en/utterances.parquet .* {reason}"):
        open_store(str(store)).utterances_table("en")
    report = _verify(store)
    assert [d.key for d in report.damage] == ["en/utterances.parquet"]
    _verify(store, repair=True)
    assert _encode(store, clean / "clips", tiny_whisper).done == 0
    assert files(store) == files(clean / "run" / "store")


@pytest.mark.parametrize("how", sorted(STATE_DAMAGE))
def test_a_damaged_similarity_chunk_is_named_and_recomputed(how, clean, damaged):
    sim = damaged / "sim"
    chunk = sim / "seqsim" / "de__en" / "c.1.0.0"  # layer position 1
    layer = open_similarity(str(sim)).layers[1]
    STATE_DAMAGE[how](chunk)
    with pytest.raises(DamageError, match=rf"'seqsim' matrix of seqsim/de__en at layer {layer} is (missing|corrupt)"):
        _retrieval(sim)
    report = _verify(sim)
    assert [(d.what, d.key) for d in report.damage] == [(f"seqsim de__en layer {layer}", "seqsim/de__en/c.1.0.0")]
    assert _verify(sim, repair=True).exit_code == 0
    summary = _seqsim(clean / "run" / "store", sim)  # the store it was computed from (its manifest names it)
    assert summary.pair_layers == 1, summary.report()  # the one pair-layer
    _retrieval(sim)
    assert files(sim) == files(clean / "run" / "sim")  # retrieval.csv included


def test_a_damaged_part_is_named_and_deleted_by_repair(tmp_path):
    out = tmp_path / "out"
    _, kv = open_kvstore(str(out))
    import pyarrow as pa

    schema = pa.schema([pa.field("utterance", pa.int32()), pa.field("word", pa.string())])
    for first in (0, 2, 4):
        rows = {"utterance": [first, first + 1], "word": ["hallo", "welt"]}
        kv.write(f"de/parts/{first:08d}.parquet", parts.part_bytes(rows, schema, [first, first + 1], [])).result()
    flip(out / "de" / "parts" / "00000002.parquet", at=0.1)
    flip_column_name(out / "de" / "parts" / "00000004.parquet", "word")  # no ArrowInvalid when merged: named here
    with pytest.raises(DamageError, match=r"de/parts/00000002.parquet .* rerun the align job"):
        parts.read_part(kv, "de/parts/00000002.parquet", str(out), "align")
    with pytest.raises(DamageError, match=r"de/parts/00000004.parquet .* \(columns \['utterance', 'wnrd'\]\)"):
        parts.read_part(kv, "de/parts/00000004.parquet", str(out), "align")
    assert parts.read_part(kv, "de/parts/00000000.parquet", str(out), "align") is not None
    report = _verify(out)
    assert report.kind == "output folder" and [d.key for d in report.damage] == [
        "de/parts/00000002.parquet",
        "de/parts/00000004.parquet",
    ]
    _verify(out, repair=True)
    assert not (out / "de" / "parts" / "00000002.parquet").exists()
    assert (out / "de" / "parts" / "00000000.parquet").exists() and _verify(out).exit_code == 0


def test_a_decode_part_with_a_damaged_footer_is_named_by_decode_and_verify_and_redone(damaged, tiny_whisper, tmp_path):
    """The issue's case itself: a byte of a column name in a decode part's footer made the rerun crash in Arrow and
    verify call the folder clean. Now the rerun names the part, verify names it, and repair plus a rerun redo it
    byte for byte."""
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode

    out = tmp_path / "decode"
    config = configure(DecodeConfig, store=str(damaged / "store"), out=str(out), layers=(1,), tasks=("transcribe",),
                       max_new_tokens=4, progress=False)  # fmt: skip
    run_decode(config, decoder=WhisperDecoder(tiny_whisper))
    clean_files = {k: v for k, v in files(out).items() if k.endswith(".parquet") or k.endswith(".csv")}
    part = sorted((out / "parts").rglob("*.parquet"))[0]
    flip_column_name(part, "hypothesis")
    key = str(part.relative_to(out))
    with pytest.raises(DamageError, match=rf"{key} .*rerun the decode job"):
        run_decode(config, decoder=WhisperDecoder(tiny_whisper))
    assert [d.key for d in _verify(out).damage] == [key]
    assert _verify(out, repair=True).exit_code == 0 and not part.exists()
    run_decode(config, decoder=WhisperDecoder(tiny_whisper))
    assert {k: v for k, v in files(out).items() if k in clean_files} == clean_files
    # Truncated, the footer's seal is gone: verify called the part (parts/<lang>/...) a user's file and left it, while
    # decode refused it and sent the user to verify (kill-and-resume probe). It is named by its place now.
    truncate(part)
    found = _verify(out)
    assert [d.key for d in found.damage] == [key] and "not ours" not in found.report(), found.report()
    assert _verify(out, repair=True).exit_code == 0 and not part.exists()
    run_decode(config, decoder=WhisperDecoder(tiny_whisper))
    assert {k: v for k, v in files(out).items() if k in clean_files} == clean_files


def test_a_damaged_csv_is_named_by_compare_and_verify_and_rewritten(clean, damaged, tmp_path):
    sim = damaged / "sim"
    truncate(sim / "retrieval.csv")
    config = configure(CompareConfig, stores=(str(damaged / "store"),), retrieval=(str(sim),), out=str(tmp_path / "c"),
                       retrieval_measure="seqsim", measures=("cka",), levels=("utterance",))  # fmt: skip
    with pytest.raises(DamageError, match=r"retrieval.csv .* does not match its digest \(retrieval.csv.sha256\)"):
        run_compare(config)  # never by_depth.csv from the rows that survived
    report = _verify(sim)
    assert [(d.key, d.problem) for d in report.damage] == [("retrieval.csv", "checksum mismatch")], report.report()
    assert _verify(sim, repair=True).exit_code == 0 and not (sim / "retrieval.csv").exists()
    _retrieval(sim)
    assert files(sim) == files(clean / "run" / "sim")
    assert _verify(clean / "run" / "sim").checked["output files"] >= 1  # every CSV and figure has its digest


def test_a_store_inside_a_store_is_named(clean, damaged):
    """seqsim --out S/en put a similarity store in a language folder, which verify called clean (the jobs now refuse
    it: tests/jobs/test_cli.py); one made before is named."""
    shutil.copytree(damaged / "sim", damaged / "store" / "en" / "sim")
    report = _verify(damaged / "store")
    assert [(d.what, d.key) for d in report.damage] == [("a babelgrid-similarity in en/sim/", "en/sim/manifest.json")]
    assert report.exit_code == 1


def test_verify_on_the_command_line(run_job, clean, damaged):
    shard(damaged / "store", "de", 1).unlink()
    proc = run_job("verify", str(damaged / "store"), expect=1)  # babelgrid verify <location>
    assert "DAMAGED: 1" in proc.stdout and "de utterance 1 (id 'utt1')" in proc.stdout
    proc = run_job("verify", "--location", str(damaged / "store"), "--repair", expect=0)
    assert "repaired: now rerun encode" in proc.stdout
    run_job("verify", str(tmp := damaged / "nothing"), expect=1)
    assert not tmp.exists()


# Similarity metadata: (key, damage). A marker's row list and an id changed into other valid JSON (the bit
# flips), both truncated, and a pair's ids.json gone while its done markers stay.
SIM_METADATA = {
    "marker altered": ("seqsim/de__en/done/{layer}.json", lambda p: alter(p, lambda v: v["rows"].__setitem__(-1, 2))),
    "marker truncated": ("seqsim/de__en/done/{layer}.json", truncate),
    "ids altered": ("mean/de__en/ids.json", lambda p: alter(p, lambda v: v["row_ids"].__setitem__(3, "utt2"))),
    "ids truncated": ("mean/de__en/ids.json", truncate),
    "ids deleted": ("mean/de__en/ids.json", pathlib.Path.unlink),
}


@pytest.mark.parametrize("case", sorted(SIM_METADATA))
def test_damaged_similarity_metadata_is_named_and_redone(case, clean, damaged):
    sim = damaged / "sim"
    key, damage = SIM_METADATA[case]
    key = key.format(layer=open_similarity(str(sim)).layers[1])
    damage(sim / key)
    with pytest.raises(DamageError, match=key.split("/")[-1]):
        _retrieval(sim)  # never 4 queries scored instead of 5, nor other ids
    report = _verify(sim)
    assert [d.key for d in report.damage] == [key] and report.exit_code == 1, report.report()
    assert _verify(sim, repair=True).exit_code == 0
    if case.startswith("marker"):  # marked not done: verify said only "no damage found" (remote-store probe)
        notes = " ".join(_verify(sim).notes)
        assert f"1 of 8 (measure, pair, layer) not done (seqsim de__en layer {key[-6]}): rerun seqsim" in notes, notes
    _seqsim(clean / "run" / "store", sim)
    _retrieval(sim)
    assert files(sim) == files(clean / "run" / "sim")


# Layer store metadata: the index key of a language and the roster of every language's, deleted or truncated.
STORE_METADATA = {
    "index deleted": ("languages/de.json", pathlib.Path.unlink),
    "index truncated": ("languages/de.json", truncate),
    "index altered": ("languages/de.json", lambda p: alter(p, lambda v: v.__setitem__("n_utterances", 3))),
    "roster deleted": ("languages.json", pathlib.Path.unlink),
    "roster truncated": ("languages.json", truncate),
}


@pytest.mark.parametrize("case", sorted(STORE_METADATA))
def test_a_damaged_language_index_is_named_and_redone(case, clean, damaged, tiny_whisper):
    store = damaged / "store"
    key, damage = STORE_METADATA[case]
    damage(store / key)
    with pytest.raises(DamageError, match=key):
        _seqsim(store, damaged / "sim2")  # never 8 pair-layers of en alone
    if case == "index truncated":  # the writer too: never "complete" over a damaged index
        with pytest.raises(DamageError, match=key):
            _encode(store, clean / "clips", tiny_whisper)
    report = _verify(store)
    assert [d.key for d in report.damage] == [key] and report.exit_code == 1, report.report()
    assert _verify(store, repair=True).exit_code == 0
    assert _encode(store, clean / "clips", tiny_whisper).done == 0
    assert files(store) == files(clean / "run" / "store")


def test_a_damaged_manifest_is_named_and_not_rebuilt(clean, damaged):
    sim = damaged / "sim"
    alter(sim / "manifest.json", lambda v: v.__setitem__("layers", v["layers"][:-1]))
    with pytest.raises(DamageError, match="manifest.json .* does not match its digest"):
        _retrieval(sim)
    report = _verify(sim, repair=True)
    assert [(d.key, d.repair) for d in report.damage] == [("manifest.json", checks.NOT_REPAIRABLE)]
    assert report.exit_code == 1 and "restore it from a copy" in report.report()
    assert "not repairable: 1" in report.report() and "rerun  with" not in report.report()  # no job named: no line


# -- what verify judges: only what babelgrid wrote (issue 82, F1, F7, F8) --------------------------------------------

USER_FILES = {"notes.txt": b"my notes\n", "README.md": b"# mine\n", "mine.png": b"\x89PNG not really",
              "mine.csv": b"a,b\n1,2\n", "mine.json": b"[1, 2, 3]\n", "broken.json": b"{not json",
              "de/transcripts.txt": b"hallo welt\n", "mine.parquet": b"not a parquet",
              "digested.json": b'{"a": 1, "digest": "sha256:00"}\n'}  # fmt: skip  # a field named as our seal


def test_repair_keeps_the_users_files_and_says_so(clean, damaged):
    """F1: every user file without a .sha256 was called damaged and deleted by --repair; now verify judges only what
    babelgrid wrote, names the rest "not ours" and leaves them, while a damaged output of its own is still repaired."""
    sim = damaged / "sim"
    for name, data in USER_FILES.items():
        (sim / name).parent.mkdir(parents=True, exist_ok=True)
        (sim / name).write_bytes(data)
    truncate(sim / "retrieval.csv")
    report = _verify(sim, repair=True)
    assert [d.key for d in report.damage] == ["retrieval.csv"], report.report()
    assert all((sim / name).read_bytes() == data for name, data in USER_FILES.items())
    text = report.report()
    assert f"{len(USER_FILES)} files babelgrid did not write" in text and "not ours: left alone" in text, text
    assert f" s; {len(USER_FILES)} files not ours, left alone\n" in text, text  # after what was read, not in it
    assert report.exit_code == 0 and _verify(sim).exit_code == 0


def test_every_file_a_run_writes_is_one_verify_knows_as_ours(clean):
    """The names verify judges without a digest (``ownership.OUTPUT_NAMES``) cover what the jobs write: each output
    file with a digest in the clean run matches them, so a deleted digest is still named as damage."""
    from engine.pipelines.verify.ownership import coordination, documented

    digested = []
    for folder in (clean / "run" / "store", clean / "run" / "sim"):
        keys = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
        digested += [k[: -len(".sha256")] for k in keys if k.endswith(".sha256")]
        assert "not ours" not in " ".join(_verify(folder).notes)
        assert all(documented(k) or coordination(k) for k in keys if k.endswith(".json")), keys
    assert len(digested) >= 3 and all(documented(k) for k in digested), [k for k in digested if not documented(k)]
    assert not any(documented(name) for name in USER_FILES)


def test_a_checkpoint_is_judged_by_its_manifest_and_never_deleted(tmp_path):
    """F7: orbax's commit_success.txt in an sae or finetune checkpoint was called damaged and deleted by --repair,
    after which the resume was refused. Now a checkpoint is judged by its checksums.json, as the job's restore is."""
    from engine.pipelines.stages import checkpoints

    out = tmp_path / "sae"
    step = out / "layer-4" / "checkpoints" / "200"
    (step / "state" / "d").mkdir(parents=True)
    (step / "state" / "commit_success.txt").write_text("Checkpoint commit was successful to ...\n")
    (step / "state" / "d" / "0.bin").write_bytes(b"\1" * 64)
    (step / "checksums.json").write_text(json.dumps(checkpoints.manifest(step)))
    (out / "manifest.json").write_text(json.dumps({"format": "babelgrid-sae"}))
    report = _verify(out, repair=True)
    assert report.exit_code == 0 and not report.damage and report.checked["checkpoints"] == 1, report.report()
    assert (step / "state" / "commit_success.txt").exists()
    flip(step / "state" / "d" / "0.bin")
    report = _verify(out, repair=True)
    assert [(d.key, d.problem) for d in report.damage] == [
        ("layer-4/checkpoints/200/", "file 'state/d/0.bin' does not match its sha256 in checksums.json")
    ], report.report()
    assert checkpoints.verify(step) == report.damage[0].problem  # the one rule, as the job's restore reads it
    assert (step / "state" / "d" / "0.bin").exists() and (step / "state" / "commit_success.txt").exists()


def test_nan_in_a_store_is_damage_to_readers_and_verify(clean, damaged, tiny_whisper):
    """F8: NaN written into a shard with valid checksums: verify said clean and seqsim wrote NaN matrices. Now the
    readers name the utterance, verify names it and the repair plus an encode rerun restore the store."""
    from engine.stores.integrity import NON_FINITE
    from engine.stores.layers import LayerStore

    store = damaged / "store"
    writable = LayerStore.create_or_open(str(store), LayerStore.open(str(store)).info)
    arrays = writable.language("de", indexed=False)
    shard = arrays.states_store[:, 2].read().result()
    shard[1, 0, 3] = np.nan
    arrays.states_store[:, 2].write(shard).result()
    with pytest.raises(DamageError, match=r"utterance 2 \(id 'utt2'.*holds NaN or inf"):
        _seqsim(store, damaged / "sim2")
    poisoned = LayerStore.open(str(store)).info.layers[1]  # the NaN's layer: no matrix of it is marked done
    assert f"{poisoned}.json" not in {p.name for p in (damaged / "sim2").rglob("done/*.json")}
    report = _verify(store)
    assert [(d.what, d.problem) for d in report.damage] == [("de utterance 2 (id 'utt2')", NON_FINITE)]
    assert _verify(store, repair=True).exit_code == 0
    assert _encode(store, clean / "clips", tiny_whisper).done == 1
    assert files(store) == files(clean / "run" / "store")


def test_verify_on_a_run_folder_descends_into_its_stores(clean, damaged, tiny_whisper):
    """Issue 87: verify on a study's run folder said "no damage found" while a shard of the store inside was corrupt.
    Now each store inside an output folder is verified as itself, and repaired under its own lease."""
    flip(shard(damaged / "store", "de", 1))
    report = _verify(damaged)
    assert [(d.what, d.key) for d in report.damage] == [
        ("store/: de utterance 1 (id 'utt1')", "store/de/states/c.0.1.0.0")
    ], report.report()
    assert report.checked["shards"] == len(LANGS) * N and report.checked["pair-layers"] > 0
    assert _verify(damaged, repair=True).exit_code == 0
    assert _encode(damaged / "store", clean / "clips", tiny_whisper).done == 1
    assert files(damaged / "store") == files(clean / "run" / "store") and _verify(damaged).exit_code == 0


def test_a_truncated_array_metadata_file_is_damage_to_readers_and_one_row_of_verify(clean, damaged, tiny_whisper):
    """A remote-store probe truncated de/lengths/zarr.json: the reader raised a plain StoreError (DATA_LOSS is
    damage), and verify listed it twice, once to delete and rerun, once to restore from a copy."""
    store = damaged / "store"
    truncate(store / "de" / "lengths" / "zarr.json")
    with pytest.raises(DamageError, match=r"metadata of array .*de/lengths.* is damaged"):
        open_store(str(store)).lengths("de")
    report = _verify(store)
    assert report.exit_code == 1 and len(report.damage) == 1, report.report()
    assert _verify(store, repair=True).exit_code == 0
    _encode(store, clean / "clips", tiny_whisper)
    assert _verify(store).exit_code == 0
