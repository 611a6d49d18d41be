"""The damage matrix: each kind of damage to each store is detected by the job that reads it and by ``verify``, and
``verify --repair`` plus a rerun of the job that wrote it gives files byte-equal to the undamaged run's.

A clean run (encode, seqsim, retrieval) of a tiny random Whisper over 2 languages x 4 synthetic clips is made once;
each case copies it, damages one thing, and checks detection, the verify table, the repair and the rerun.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.similarity.config import SimilarityConfig
from engine.pipelines.similarity.run import run_similarity
from engine.pipelines.verify.config import VerifyConfig
from engine.pipelines.verify.run import run_verify
from engine.runtime import parts
from engine.runtime.options import configure
from engine.stores.integrity import DamageError
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity

LANGS = ("de", "en")
N = 4
VOLATILE = ("lease.json", "claims", "runs")  # files a run rewrites whatever the data: not compared


def _encode(out, clips, whisper):
    config = configure(EncodeConfig, out=str(out), dataset=f"folder:{clips}", batch_size=4, progress=False)
    return run_encode(config, whisper=whisper)


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


def test_a_corrupt_lengths_chunk_is_rebuilt_from_the_shards(clean, damaged, tiny_whisper):
    store = damaged / "store"
    flip(store / "de" / "lengths" / "c.0", at=0.3)
    with pytest.raises(DamageError, match=r"done markers \(lengths\) of language 'de'"):
        open_store(str(store)).lengths("de")
    report = _verify(store)
    assert [d.key for d in report.damage] == ["de/lengths/c.0"] and report.exit_code == 1
    assert _verify(store, repair=True).exit_code == 0
    assert _encode(store, clean / "clips", tiny_whisper).done == 0  # every shard verified: nothing to redo
    assert files(store) == files(clean / "run" / "store")


def test_a_truncated_utterance_table_is_a_named_error_and_rewritten_by_encode(clean, damaged, tiny_whisper):
    store = damaged / "store"
    truncate(store / "en" / "utterances.parquet")
    with pytest.raises(DamageError, match=r"en/utterances.parquet .* truncated, corrupt or not a Parquet file"):
        open_store(str(store)).utterances_table("en")
    report = _verify(store)
    assert [d.key for d in report.damage] == ["en/utterances.parquet"]
    _verify(store, repair=True)
    assert _encode(store, clean / "clips", tiny_whisper).done == 0
    assert files(store) == files(clean / "run" / "store")


@pytest.mark.parametrize("how", ["delete", "flip"])
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
    for first in (0, 2):
        rows = {"utterance": [first, first + 1], "word": ["hallo", "welt"]}
        kv.write(f"de/parts/{first:08d}.parquet", parts.part_bytes(rows, schema, [first, first + 1], [])).result()
    flip(out / "de" / "parts" / "00000002.parquet", at=0.1)
    with pytest.raises(DamageError, match=r"de/parts/00000002.parquet .* rerun the align job"):
        parts.read_part(kv, "de/parts/00000002.parquet", str(out), "align")
    assert parts.read_part(kv, "de/parts/00000000.parquet", str(out), "align") is not None
    report = _verify(out)
    assert report.kind == "output folder" and [d.key for d in report.damage] == ["de/parts/00000002.parquet"]
    _verify(out, repair=True)
    assert not (out / "de" / "parts" / "00000002.parquet").exists()
    assert (out / "de" / "parts" / "00000000.parquet").exists() and _verify(out).exit_code == 0


def test_verify_on_the_command_line(run_job, clean, damaged):
    shard(damaged / "store", "de", 1).unlink()
    proc = run_job("verify", str(damaged / "store"), expect=1)  # babelgrid verify <location>
    assert "DAMAGED: 1" in proc.stdout and "de utterance 1 (id 'utt1')" in proc.stdout
    proc = run_job("verify", "--location", str(damaged / "store"), "--repair", expect=0)
    assert "repaired: now rerun encode" in proc.stdout
    run_job("verify", str(tmp := damaged / "nothing"), expect=1)
    assert not tmp.exists()
