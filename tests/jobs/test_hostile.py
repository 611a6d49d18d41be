"""What a hostile or careless user hit (issue 61), each case reproduced at a small size: a job that writes without
the writer lease or reads a store still being written, digests treated as optional, settings refused only after they
were recorded, unbounded work, values stored as written, tracebacks where a named error belongs, damage verify did
not see.

The jobs run through their library entry points in this process (``run_similarity``, ``run_verify``, ...: what the
flags reach, and what the job prints is the report or the error named here), so that one compiled seqsim and one
loaded JAX serve every case instead of a job process each (34 of them took 211 s of CI). The line a user sees for a
refusal on the command line is shown by the symbolic-link case below and by tests/jobs/test_refusals_early.py.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

import pytest

from engine.errors import BabelgridError, DamageError
from engine.runtime.lease import StoreBusyError
from engine.runtime.options import configure

LIVE = 3600.0  # seconds a planted lease is valid: longer than any test


def hold_lease(folder: pathlib.Path, job: str, **extra) -> None:
    """A live writer lease of ``job`` in ``folder``, as a run on another host holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {"owner": "f" * 32, "host": "another-host", "pid": 4242, "job": job, "renewed": "2026-11-25T00:00:00",
              "expires": "2026-11-26T00:00:00", "expires_unix": now + LIVE, **extra}  # fmt: skip
    (folder / "lease.json").write_text(json.dumps(record))


def seqsim(store: pathlib.Path, out: pathlib.Path, **settings):
    """The seqsim job's run (``--store STORE --out OUT`` and ``settings`` as its flags give them); its summary."""
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity

    return run_similarity(configure(SimilarityConfig, store=str(store), out=str(out), progress=False, **settings))


def verify(location: pathlib.Path, **settings):
    """``babelgrid verify LOCATION``: its summary (``report()`` is what it prints, ``exit_code`` its exit status)."""
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify

    return run_verify(configure(VerifyConfig, location=str(location), progress=False, **settings))


def retrieval(similarity: pathlib.Path, out: pathlib.Path | None = None):
    from engine.pipelines.retrieval.config import RetrievalConfig
    from engine.pipelines.retrieval.run import run_retrieval

    return run_retrieval(configure(RetrievalConfig, similarity=str(similarity), out=out and str(out)))


def encode_again(store: pathlib.Path, clips: pathlib.Path, tiny_whisper) -> None:
    """The encode rerun that restores what was deleted: the settings ``worker_store`` was encoded with."""
    from engine.models.whisper.encoder import WhisperEncoder
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode

    run_encode(configure(EncodeConfig, out=str(store), dataset=f"folder:{clips}", progress=False),
               encoder=WhisperEncoder(tiny_whisper))  # fmt: skip


@pytest.fixture(scope="module")
def similarity(worker_store, tmp_path_factory) -> pathlib.Path:
    """A finished similarity store of the worker store: the mean measure at layer 1."""
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure

    out = tmp_path_factory.mktemp("hostile") / "sim"
    run_similarity(configure(SimilarityConfig, store=str(worker_store), out=str(out), layers=(1,), measures=("mean",),
                             progress=False))  # fmt: skip
    return out


# -- 1. every job that writes holds the lease; a job does not read a store being written ----------------------------


def test_retrieval_refuses_a_similarity_store_still_being_written(similarity, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(similarity, copy)
    hold_lease(copy, "seqsim")
    with pytest.raises(StoreBusyError, match="is being written now by seqsim .*nothing was written"):
        retrieval(copy)  # its output defaults to the similarity store itself
    assert not (copy / "retrieval.csv").exists()
    out = tmp_path / "elsewhere"
    with pytest.raises(StoreBusyError, match="being written now by seqsim"):
        retrieval(copy, out)
    assert not (out / "retrieval.csv").exists()


def test_a_second_retrieval_into_one_folder_is_refused(similarity, tmp_path):
    out = tmp_path / "out"
    hold_lease(out, "retrieval")
    with pytest.raises(StoreBusyError, match="being written by another run"):
        retrieval(similarity, out)
    assert not (out / "retrieval.csv").exists()


def test_jobs_refuse_a_layer_store_still_being_encoded_unless_told(worker_store, tmp_path):
    from engine.pipelines.probes.config import ProbesConfig
    from engine.pipelines.probes.run import run_probes

    store = tmp_path / "store"
    shutil.copytree(worker_store, store)
    hold_lease(store, "encode", mode="workers", state="open")
    with pytest.raises(StoreBusyError, match="being written now by workers of encode.*--allow_partial"):
        seqsim(store, tmp_path / "sim", layers=(1,))
    assert not (tmp_path / "sim").exists() or not any((tmp_path / "sim").iterdir())
    seqsim(store, tmp_path / "sim2", layers=(1,), measures=("mean",), allow_partial=True)  # told: it reads it
    with pytest.raises(StoreBusyError, match="being written now by"):
        run_probes(configure(ProbesConfig, store=str(store), out=str(tmp_path / "probes"), progress=False))
    with pytest.raises(StoreBusyError, match="being written now by"):
        verify(store)


def test_every_job_that_writes_takes_the_lease():
    """The audit, in the code: every job's library entry takes its output's writer lease (``job_lease``,
    ``output_run`` or ``writer_lease``), so a second writer is refused and a kill leaves the lease to expire."""
    root = pathlib.Path(__file__).resolve().parents[2] / "engine" / "pipelines"
    takes = ("job_lease(", "output_run(", "writer_lease(", "output_lease(")
    without = [p.parent.name for p in sorted(root.glob("*/run.py")) if not any(t in p.read_text() for t in takes)]
    assert not without, f"jobs whose run.py takes no writer lease: {without}"


# -- 2. a missing digest is damage -------------------------------------------------------------------------------------


def test_a_transform_whose_digest_was_deleted_is_damage_not_read_unchecked(worker_store, tmp_path):
    """The probe's case: the transform's digest deleted, the npz altered and one done marker deleted; the rerun used
    to score that pair-layer under the altered transform ("read unchecked"), and verify saw nothing."""
    sim = tmp_path / "sim"
    settings = dict(layers=(1,), measures=("mean",), remove_language="mean")
    seqsim(worker_store, sim, **settings)
    npz = sim / "language_transform" / "layer-1.npz"
    (sim / "language_transform" / "layer-1.npz.sha256").unlink()
    npz.write_bytes(npz.read_bytes() + b"\0")
    (sim / "mean" / "de__en" / "done" / "1.json").unlink()
    with pytest.raises(DamageError, match="has no digest file"):
        seqsim(worker_store, sim, **settings)
    found = verify(sim)
    report = found.report()
    assert found.exit_code == 1 and "digest missing" in report and "layer-1.npz" in report, report


def test_compare_refuses_a_retrieval_csv_whose_digest_was_deleted(tmp_path):
    """A truncated retrieval.csv whose .sha256 was deleted: compare's reader names it, and reads nothing of it."""
    from engine.errors import DamageError
    from engine.pipelines.compare.depth import _read_csv

    (tmp_path / "retrieval.csv").write_text("lang_a,lang_b,layer\nde,en,")
    with pytest.raises(DamageError, match="retrieval.csv .* has no digest file"):
        _read_csv(str(tmp_path), "retrieval.csv")


# -- 3. every setting is checked before anything is recorded; 6. values stored as the field means them -----------------


def test_lda_with_as_many_directions_as_languages_is_refused_before_the_store_records_it(worker_store, tmp_path):
    sim = tmp_path / "sim"
    with pytest.raises(BabelgridError, match=r"lda:3 needs K <= languages - 1 = 2"):
        seqsim(worker_store, sim, layers=(1,), measures=("mean",), remove_language="lda:3")
    assert not (sim / "manifest.json").exists()
    seqsim(worker_store, sim, layers=(1,), measures=("mean",), remove_language="lda:2")  # the corrected rerun


def test_a_value_with_spaces_is_recorded_as_meant_so_the_resume_is_not_refused(worker_store, tmp_path, run_job):
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.runtime.options import configure

    config = configure(SimilarityConfig, store="s", out="o", remove_language=" mean ", dtype=" float32")
    assert (config.remove_language, config.dtype) == ("mean", "float32")
    sim = tmp_path / "sim"
    # Through the flags (the job's main in this process: seqsim is the job tests/jobs/test_seqsim.py runs there too)
    args = ["--store", str(worker_store), "--out", str(sim), "--layers", "1", "--measure", "mean"]
    run_job("seqsim", *args, "--remove_language", " mean", in_process=True)
    again = seqsim(worker_store, sim, layers=(1,), measures=("mean",), remove_language="mean").report()
    assert "already complete" in again, again


def test_empty_lists_of_choices_mean_every_choice_not_a_traceback():
    from engine.pipelines.compare.config import LEVELS, MEASURES, CompareConfig
    from engine.pipelines.decode.config import TASKS, DecodeConfig
    from engine.runtime.options import configure

    config = configure(CompareConfig, stores=("s",), out="o", null_levels=None, levels=None, measures=None)
    assert config.null_levels == LEVELS and config.levels == LEVELS and config.measures == MEASURES
    assert configure(DecodeConfig, store="s", out="o", tasks=None).tasks == TASKS


def test_a_batch_beyond_memory_is_refused_before_the_output_records_anything(worker_store, tiny_model_dir,
                                                                           worker_clips, tmp_path):  # fmt: skip
    from engine.pipelines.decode.config import DecodeConfig, DecodeError
    from engine.pipelines.decode.run import run_decode
    from engine.pipelines.neurons.config import NeuronsConfig
    from engine.pipelines.neurons.run import run_neurons
    from engine.runtime.options import ConfigError

    out = tmp_path / "neurons"
    with pytest.raises(ConfigError, match="batch_size 100000000 needs about .*pass --batch_size"):
        run_neurons(configure(NeuronsConfig, model=str(tiny_model_dir), dataset=f"folder:{worker_clips}", out=str(out),
                              batch_size=100000000, progress=False))  # fmt: skip
    assert not (out / "manifest.json").exists()
    out = tmp_path / "decode"
    with pytest.raises(DecodeError, match="batch_size 100000000 needs at least"):
        run_decode(configure(DecodeConfig, store=str(worker_store), model=str(tiny_model_dir), out=str(out),
                             batch_size=100000000, progress=False))  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


# -- 4. unbounded work gets an estimate -------------------------------------------------------------------------------


def test_a_null_of_a_billion_permutations_is_refused_with_its_estimate(worker_store, tmp_path):
    from engine.pipelines.compare.config import CompareConfig
    from engine.pipelines.compare.run import run_compare

    out = tmp_path / "compare"
    # a billion permutations of 30 examples hold 112 GiB (CI's 24 GiB machine killed the run that took it for 17.5 h)
    with pytest.raises(BabelgridError, match="holds about .*more than the"):
        run_compare(configure(CompareConfig, stores=(str(worker_store),), out=str(out), null_permutations=1000000000,
                              levels=("utterance",), progress=False))  # fmt: skip
    assert not out.exists() or not (out / "manifest.json").exists()


def test_a_null_planned_for_days_is_refused_with_its_estimate(worker_store, tmp_path, monkeypatch):
    """A null that fits in memory but would run for days (a plan of 30 h stands in: on a small store memory runs out
    first) is refused before anything is written, with the permutations that fit in 24 h."""
    import types

    from engine.pipelines.compare import run as compare_run
    from engine.pipelines.compare.config import CompareConfig, CompareError
    from engine.runtime.options import configure

    plan = types.SimpleNamespace(seconds_here=30 * 3600.0, peak_memory=1.0)
    monkeypatch.setattr(compare_run, "plan_compare_run", lambda config, device: plan)
    out = tmp_path / "days"
    config = configure(CompareConfig, stores=(str(worker_store),), out=str(out), null_permutations=5000)
    with pytest.raises(CompareError, match=r"about 30\.0 h here .* more than the 24 h .* about 4000 permutations"):
        compare_run.run_compare(config)
    assert not out.exists()


# -- 5. a config that claims more layers than its weights hold ---------------------------------------------------------


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_a_config_claiming_a_million_layers_is_refused_before_memory_grows(family, tiny_model_dir, tmp_path):
    """The probe's wav2vec2 config.json of 1000000 layers took 25 s and 5 GB before "lacks 15999968 tensors" (a
    segfault at 3000000). Counted here: the refusal names both counts and allocates less than 64 MiB."""
    import tracemalloc

    import torch
    import transformers

    from engine.errors import CheckpointError
    from engine.models.family import load_encoder

    folder = tmp_path / "model"
    if family == "wav2vec2":
        torch.manual_seed(0)
        config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=32, conv_dim=(16,) * 7, num_conv_pos_embeddings=8,
                                             num_conv_pos_embedding_groups=2)  # fmt: skip
        transformers.Wav2Vec2Model(config).save_pretrained(folder)
        key, held = "num_hidden_layers", 2
    else:
        shutil.copytree(tiny_model_dir, folder)
        key, held = "encoder_layers", json.loads((folder / "config.json").read_text())["encoder_layers"]
    settings = json.loads((folder / "config.json").read_text())
    settings[key] = 1_000_000
    (folder / "config.json").write_text(json.dumps(settings))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=rf"is 1000000, but the checkpoint's tensors hold {held} such"):
            load_encoder(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


# -- 8. named errors where tracebacks were -----------------------------------------------------------------------------


def test_verify_on_a_symbolic_link_loop_is_a_named_error(tmp_path, run_job):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    proc = run_job("verify", str(tmp_path / "a"), expect=1)
    assert "Too many levels of symbolic links" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_transform_holding_an_object_array_is_damage_to_seqsim_and_verify(worker_store, tmp_path):
    """An npz holding an object array, with a digest that matches it (both replaced): never unpickled, and named as
    damage by the job that reads it and by verify, not a raw ValueError from NumPy."""
    import io

    import numpy as np

    from engine.stores.integrity import digest_line

    sim = tmp_path / "sim"
    settings = dict(layers=(1,), measures=("mean",), remove_language="mean")
    seqsim(worker_store, sim, **settings)
    buffer = io.BytesIO()
    np.savez(buffer, kind=np.array("mean"), k=np.array(0), languages=np.array([{"de": 1}], dtype=object))
    key = "language_transform/layer-1.npz"
    (sim / key).write_bytes(buffer.getvalue())
    (sim / (key + ".sha256")).write_bytes(digest_line(buffer.getvalue(), key))
    (sim / "mean" / "de__en" / "done" / "1.json").unlink()
    with pytest.raises(DamageError, match="is not an npz of numeric arrays"):
        seqsim(worker_store, sim, **settings)
    found = verify(sim)
    report = found.report()
    assert found.exit_code == 1 and "layer-1.npz" in report and "not numeric npz" in report, report


# -- 9, 10. damage that verify and the readers did not see ------------------------------------------------------------


def test_a_deleted_language_is_named_by_verify_as_the_readers_name_it(worker_store, worker_clips, tiny_whisper,
                                                                     tmp_path):  # fmt: skip
    store = tmp_path / "store"
    shutil.copytree(worker_store, store)
    shutil.rmtree(store / "de")
    (store / "languages" / "de.json").unlink()
    with pytest.raises(BabelgridError, match=r"lists languages \['de'\]"):
        seqsim(store, tmp_path / "sim")
    found = verify(store)
    report = found.report()
    assert found.exit_code == 1, report
    assert "de language (folder and index)" in report and "rerun the encode job" in report, report
    encode_again(store, worker_clips, tiny_whisper)
    assert verify(store).exit_code == 0


def test_a_deleted_pair_is_named_by_verify_and_refused_by_retrieval(worker_store, tmp_path):
    """The new user's case: a pair folder deleted from a finished similarity store; verify said "no damage found" and
    retrieval scored 4 directed pairs of 6 without a word. The roster (format 4) names it."""
    sim = tmp_path / "sim"
    settings = dict(layers=(1,), measures=("mean",))
    seqsim(worker_store, sim, **settings)
    assert json.loads((sim / "pairs.json").read_text())["pairs"] == {"mean": ["de__en", "de__es", "en__es"]}
    shutil.rmtree(sim / "mean" / "de__es")
    found = verify(sim)
    report = found.report()
    assert found.exit_code == 1, report
    assert "mean de__es (the whole pair)" in report and "rerun the seqsim job" in report, report
    with pytest.raises(DamageError, match="lists pairs mean/de__es in pairs.json, but their folders are missing"):
        retrieval(sim, tmp_path / "r")
    seqsim(worker_store, sim, **settings)  # the rerun computes the pair again
    assert verify(sim).exit_code == 0
    done = retrieval(sim, tmp_path / "r").report()
    assert "mean (6 directed pairs measured)" in done, done


# -- 11. small ------------------------------------------------------------------------------------------------------


def test_every_size_a_summary_prints_is_a_size_a_flag_takes():
    from engine.runtime.options import parse_size
    from engine.runtime.plan import size

    assert parse_size("1PiB") == 2**50 and parse_size("2 PB") == 2 * 10**15
    for n in (2**10, 3 * 2**20, 5 * 2**30, 7 * 2**40, 2**50, 3 * 2**50):
        assert abs(parse_size(size(n)) - n) <= 0.01 * n, size(n)


def test_neurons_help_shows_intervene_with_no_default_and_all_means_all():
    from engine.runtime.options import format_value, parse_names

    assert parse_names("all") == ("all",) and parse_names("") is None and parse_names("de, en") == ("de", "en")
    assert format_value(None, "names", "'all': every language that owns a unit; default none") is None


def test_verify_names_whole_problems_and_the_encode_command_that_restores_a_language(worker_store, worker_clips,
                                                                                     tiny_whisper,
                                                                                     tmp_path):  # fmt: skip
    """issue 62 item 6: verify cut its problem text short ("utterances.parque") and offered "none: restore it from a
    copy" for what an encode rerun rebuilds; the command that restores it is named now."""
    from engine.pipelines.verify.checks import Damage
    from engine.pipelines.verify.run import table

    long_key = "a-language-with-a-long-name/utterances.parquet"
    assert long_key in table([Damage("x", long_key, "truncated, corrupt or not Parquet", "deleted")], False)
    store = tmp_path / "store"
    shutil.copytree(worker_store, store)
    (store / "de" / "states" / "zarr.json").unlink()
    (store / "de" / "notes.txt").write_text("mine")  # a user's files in the language's folder outlive the repair
    (store / "de" / "mine").mkdir()
    (store / "de" / "mine" / "keep.bin").write_bytes(b"\x00\x01")
    found = verify(store)
    report = found.report()
    assert found.exit_code == 1 and "de arrays" in report, report
    assert "rerun the encode job (it writes the language again)" in report, report
    assert f"the encode rerun: babelgrid encode --out {store} --dataset folder:" in report, report
    manifest = json.loads((store / "manifest.json").read_text())
    settings = f"--layers {','.join(map(str, manifest['layers']))} --dtype {manifest['dtype']} --compute_dtype "
    assert settings in found.rerun and f"--batch_size {manifest['batch_size']}" in found.rerun, found.rerun  # as run
    assert f"--matmul_precision {manifest['matmul_precision']}" in found.rerun, found.rerun
    # the store's languages, the damaged one among them: as printed, the command encoded every language of the
    # dataset into a store of some (a probe's)
    langs = sorted(p.name for p in store.iterdir() if (p / "lengths").is_dir())
    assert f"--langs {','.join(langs)}" in found.rerun and "de" in langs, found.rerun
    assert verify(store, repair=True).exit_code == 0
    assert (store / "de" / "notes.txt").read_text() == "mine" and (store / "de" / "mine" / "keep.bin").exists()
    assert not (store / "de" / "utterances.parquet").exists() and not (store / "de" / "lengths" / "zarr.json").exists()
    encode_again(store, worker_clips, tiny_whisper)
    assert verify(store).exit_code == 0


def test_a_store_that_lost_its_manifest_is_not_resumed_under_new_settings(worker_store, worker_clips, tiny_whisper,
                                                                            tmp_path):  # fmt: skip
    """A deleted manifest.json let a resume write a new one with its own settings over the languages there: one
    store held two settings. Refused now, naming the languages, and nothing is written."""
    from engine.errors import DamageError

    store = tmp_path / "store"
    shutil.copytree(worker_store, store)
    (store / "manifest.json").unlink()
    with pytest.raises(DamageError, match=r"has lost its manifest\.json but holds languages \(de, en, es\)"):
        encode_again(store, worker_clips, tiny_whisper)
    assert not (store / "manifest.json").exists()
    found = verify(store)  # said "no damage found" of it, as of any output folder
    assert found.exit_code == 1 and "manifest.json of a layer store (languages de, en, es)" in found.report()


def test_a_similarity_store_that_lost_its_manifest_is_named_and_not_adopted(similarity, worker_store, tmp_path):
    """A probe deleted a similarity store's manifest.json and one done marker, then ran seqsim from another model's
    layer store into it: exit 0, one matrix of the new model among the old one's, and verify said clean. Refused now,
    naming the pairs, and nothing is written."""
    from engine.errors import DamageError
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.runtime.options import configure

    sim = tmp_path / "sim"
    shutil.copytree(similarity, sim)
    (sim / "manifest.json").unlink()
    found = verify(sim)
    assert found.exit_code == 1 and "manifest.json of a similarity store (pairs mean/de__en" in found.report()
    before = sorted(p.relative_to(sim) for p in sim.rglob("*"))
    again = configure(SimilarityConfig, store=str(worker_store), out=str(sim), layers=(1,), measures=("mean",),
                      dtype="bfloat16", progress=False)  # fmt: skip
    with pytest.raises(DamageError, match=r"similarity store .* has lost its manifest\.json but holds mean/de__en, "):
        run_similarity(again)
    assert sorted(p.relative_to(sim) for p in sim.rglob("*")) == before


@pytest.mark.parametrize("alter", ["crc32c taken out", "byte order flipped"])
def test_an_array_whose_zarr_json_lists_other_codecs_is_damage_to_readers_and_verify(
    alter, worker_store, worker_clips, tiny_whisper, tmp_path
):
    """TensorStore decodes chunks as zarr.json says: with crc32c taken out of it, 51 of 60 flipped bytes read as other
    numbers, unchecked; with the byte order flipped, every value does. Each array is now opened against the format's
    codecs: the readers name it, verify names it, its repair and the jobs' reruns write the array again."""
    from engine.stores.reader import open_store
    from engine.stores.similarity import open_similarity

    def altered(meta: pathlib.Path, codecs_of) -> None:
        document = json.loads(meta.read_text())
        codecs = codecs_of(document)
        if alter == "crc32c taken out":
            codecs.remove({"name": "crc32c"})
        else:
            codecs[0]["configuration"]["endian"] = "big"
        meta.write_text(json.dumps(document))

    store, sim = tmp_path / "store", tmp_path / "sim"
    shutil.copytree(worker_store, store)
    seqsim(store, sim, layers=(1,), measures=("mean",))
    expected = open_similarity(sim).matrix("mean", "de", "en", 1)[0]
    before = open_store(store).states("en", 0, 1)
    altered(store / "de" / "states" / "zarr.json", lambda d: d["codecs"][0]["configuration"]["codecs"])
    altered(sim / "mean" / "de__en" / "zarr.json", lambda d: d["codecs"])
    with pytest.raises(DamageError, match=r"de/states/ of layer store .*: its zarr\.json lists the codecs .*not the "
                       r"format's sharding_indexed\[bytes\(little\) > zstd > crc32c"):  # fmt: skip
        open_store(store).states("de", 0, 1)
    with pytest.raises(DamageError, match=r"mean/de__en/ of similarity store .*It was altered"):
        open_similarity(sim).matrix("mean", "de", "en", 1)
    for location, what in ((store, "de arrays"), (sim, "mean de__en matrix")):
        found = verify(location)
        assert found.exit_code == 1 and what in found.report() and "codecs altered" in found.report(), found.report()
        assert verify(location, repair=True).exit_code == 0
    encode_again(store, worker_clips, tiny_whisper)
    seqsim(store, sim, layers=(1,), measures=("mean",))
    assert verify(store).exit_code == 0 and verify(sim).exit_code == 0
    assert (open_store(store).states("en", 0, 1) == before).all()
    assert (open_similarity(sim).matrix("mean", "de", "en", 1)[0] == expected).all()
    # zero-filled, not JSON: listed once (it was also "not valid JSON ... restore it from a copy", not repairable)
    (sim / "mean" / "de__en" / "zarr.json").write_bytes(b"\x00" * 40)
    found = verify(sim)
    assert [d.key for d in found.damage] == ["mean/de__en/zarr.json"], found.report()
    assert verify(sim, repair=True).exit_code == 0
