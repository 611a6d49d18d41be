"""Independent workers (``--worker``): any number of processes run the same command on one output, with no
coordinator, rank or barrier, and start, die and join at any time, as the tasks of a SLURM array do.

The acceptance scenario, for encode, seqsim and decode (``tests.jobs.workers.staggered_run``): worker 1 starts and
is SIGKILLed in the middle of a unit; workers 2 and 3 start while it works, a second apart; worker 4 starts after the
kill. The output must equal a 1-process run's key for key and byte for byte, hold no claims, worker records or lease,
and be called clean by verify. Kept cheap as tests/jobs/test_scaleout.py is: the tiny random model, 3 languages of
0.2-0.6 s tones, a 3 s claim expiry, and units slowed down (``BABELGRID_FAULT_DELAY``) so that the workers overlap.
The jobs whose own units are what is checked beyond that (neurons, heads, outliers) run the scenario with one worker
joining while worker 1 works and one after its death: 3 job processes, not 4, each the price of a JAX start-up and the
job's compiles; the crowd of workers 2 and 3 is the acceptance runs' (encode, seqsim, decode), on the same claim code.
"""

from __future__ import annotations

import logging
import pathlib

import pytest

from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.text_decoder import WhisperDecoder
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.heads.config import HeadsConfig
from engine.pipelines.heads.run import run_heads
from engine.pipelines.neurons.config import NeuronsConfig
from engine.pipelines.neurons.run import run_neurons
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.pipelines.verify.config import VerifyConfig
from engine.pipelines.verify.run import run_verify
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.test_scaleout import all_keys, assert_same_store
from tests.jobs.workers import staggered_run, start_worker, taken_over, units_claimed
from tests.waits import patient

WORKER = ["--worker", "--claim_ttl", "3", "--progress=false"]
TINY_UNITS = "0.00001"  # GFLOP: one seqsim unit per pair-layer


def assert_clean(out: pathlib.Path) -> None:
    keys = all_keys(out)
    assert not [k for k in keys if k.startswith(("workers/", "claims/")) or k == "lease.json"], sorted(keys)
    report = run_verify(configure(VerifyConfig, location=str(out), progress=False))
    assert report.exit_code == 0, report.report()


def assert_shared(outputs: list[str]) -> None:
    """The unit the killed worker held was taken over, and the survivors did units too (worker 1 did one at least:
    the others started only then)."""
    survivors = outputs[1:]
    assert sum(taken_over(o) for o in survivors) >= 1, survivors
    assert sum(units_claimed(o) for o in survivors) >= 1, outputs


@pytest.mark.slow
def test_encode_workers_started_killed_and_joined_write_what_one_process_does(worker_clips, tiny_model_dir,
                                                                             tiny_whisper, tmp_path):  # fmt: skip
    clips = worker_clips
    out = tmp_path / "workers"
    command = ["-m", "jobs.encode", "--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--out", str(out),
               "--claim_utterances", "2", "--batch_size", "2", "--prefetch", "1", *WORKER]  # fmt: skip
    # Worker 1 dies right after its 5th states shard commits, before that utterance is marked done.
    outputs = staggered_run(command, out, "encode", kill="after_states:5", delay="after_states:0.4")
    assert_shared(outputs)
    one = tmp_path / "one"
    config = configure(EncodeConfig, out=str(one), dataset=f"folder:{clips}", claim_utterances=2, batch_size=2,
                       progress=False)  # fmt: skip
    run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert_same_store(out, one)
    assert_clean(out)


@pytest.mark.slow
def test_seqsim_workers_started_killed_and_joined_write_what_one_process_does(worker_store, tmp_path, caplog):
    store = worker_store
    out = tmp_path / "workers"
    command = ["-m", "jobs.seqsim", "--store", str(store), "--out", str(out), "--unit_gflops", TINY_UNITS, *WORKER]
    # Worker 1 dies right after its 6th matrix, in the middle of its second (layer, pair) unit of 4 measures.
    outputs = staggered_run(command, out, "seqsim", kill="after_matrix:6", delay="after_matrix:0.3")
    assert_shared(outputs)
    one = tmp_path / "one"
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(one), progress=False))
    assert_same_store(out, one)
    assert_clean(out)
    # A worker started after the run finished finds nothing to do and says so (the run in this process: a job
    # process more would only add its start-up).
    late = configure(SimilarityConfig, store=str(store), out=str(out), unit_gflops=float(TINY_UNITS), worker=True,
                     claim_ttl=3, progress=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="engine.runtime.units"):
        run_similarity(late)
    assert "nothing left to do" in caplog.text, caplog.text
    assert_same_store(out, one)


@pytest.mark.slow
def test_decode_workers_started_killed_and_joined_write_what_one_process_does(worker_store, tiny_model_dir,
                                                                             tiny_whisper, tmp_path):  # fmt: skip
    store = worker_store
    settings = dict(layers=(1, 3), tasks=("transcribe", "translate"), max_new_tokens=4, ln_post="both")
    out = tmp_path / "workers"
    command = ["-m", "jobs.decode", "--store", str(store), "--model", str(tiny_model_dir), "--out", str(out),
               "--layers", "1,3", "--ln_post", "both", "--tasks", "transcribe,translate", "--max_new_tokens", "4",
               *WORKER]  # fmt: skip
    # Worker 1 dies right before its 3rd part: between the two parts of its second unit, one written, its claim held.
    outputs = staggered_run(command, out, "decode", kill="before_part:3", delay="before_part:0.5")
    assert_shared(outputs)
    one = tmp_path / "one"
    run_decode(
        configure(DecodeConfig, store=str(store), out=str(one), progress=False, **settings),
        decoder=WhisperDecoder(tiny_whisper),
    )
    assert_same_store(out, one)
    assert_clean(out)


@pytest.mark.slow
def test_two_workers_with_other_settings_race_one_wins_the_other_names_the_difference(worker_store, tmp_path):
    """Started at the same moment on one output, seqsim workers with different measures: one opens the run, the other
    is refused with both values named; the output holds the winner's measures only."""
    out = tmp_path / "race"
    base = ["-m", "jobs.seqsim", "--store", str(worker_store), "--out", str(out), "--layers", "1", *WORKER]
    # each matrix takes 2 s more, so that the winner still runs when the other opens, however late a loaded machine
    # starts it (CI: the loser once started after the winner had finished, and a finished run takes another measure)
    slow = {"BABELGRID_FAULT_DELAY": "after_matrix:2"}
    procs = [start_worker([*base, "--measure", measure], slow) for measure in ("seqsim", "seqsim,mean")]
    outputs = [p.communicate(timeout=patient(300))[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], outputs
    loser = outputs[codes.index(1)]
    assert "other settings: measures" in loser and "'seqsim'" in loser and "'mean'" in loser, loser
    winner_has_mean = codes.index(0) == 1
    assert (out / "mean").exists() == winner_has_mean
    assert_clean(out)


def test_status_reads_a_run_from_its_store(worker_store, tmp_path, run_job):
    """``babelgrid status`` on a finished output, on one being opened, and on a path that is not a folder."""
    out = tmp_path / "sim"
    run_similarity(configure(SimilarityConfig, store=str(worker_store), out=str(out), layers=(1,), measures=("mean",),
                             progress=False))  # fmt: skip
    done = run_job("status", str(out))
    assert "no run in progress" in done.stdout and "layer store:" not in done.stdout, done.stdout
    # a finished layer store says how complete it is (it said only "no run in progress")
    store = run_job("status", str(worker_store)).stdout
    reader = open_store(str(worker_store))
    counts = {lang: (int((reader.lengths(lang) >= 0).sum()), len(reader.lengths(lang))) for lang in reader.languages}
    each = ", ".join(f"{lang} {d}/{n}" for lang, (d, n) in counts.items())
    assert f"layer store: {sum(d for d, _ in counts.values())} of " in store and each in store, store
    missing = run_job("status", str(tmp_path / "nothing"), expect=1)
    assert "is not a folder" in missing.stderr


@pytest.mark.slow
def test_neurons_workers_share_languages_and_passes_and_write_what_one_process_does(worker_clips, tiny_model_dir,
                                                                                   tmp_path):  # fmt: skip
    """Languages (counts) and intervention passes are the units: worker 1 dies after writing its first language's
    counts, before releasing its claim; the others count the rest, take its claim over, share the passes, and the
    folder's files equal a 1-process run's."""
    out = tmp_path / "workers"
    command = ["-m", "jobs.neurons", "--model", str(tiny_model_dir), "--dataset", f"folder:{worker_clips}",
               "--out", str(out), "--batch_size", "4", "--intervene", "de", "--intervene_utterances", "8",
               "--random_draws", "1", "--lape_share", "0.1", "--rate_quantile", "0.9", *WORKER]  # fmt: skip
    outputs = staggered_run(command, out, "neurons", kill="after_count:1", delay="before_count:1.5", joining=1)
    assert sum("wrote" in o and "intervention.csv" in o for o in outputs[1:]) >= 1, outputs
    one = tmp_path / "one"
    config = configure(NeuronsConfig, out=str(one), model=str(tiny_model_dir), dataset=f"folder:{worker_clips}",
                       batch_size=4, intervene=("de",), intervene_utterances=8, random_draws=1, lape_share=0.1,
                       rate_quantile=0.9, progress=False)  # fmt: skip
    run_neurons(config)
    assert_same_files(out, one)
    assert not (out / "claims").exists() and not (out / "workers").exists() and not (out / "lease.json").exists()


def assert_same_files(got: pathlib.Path, want: pathlib.Path) -> None:
    """Every file of ``want`` is in ``got`` with the same bytes, and no other is."""
    files = sorted(p.relative_to(want) for p in want.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(got) for p in got.rglob("*") if p.is_file())
    differ = [str(f) for f in files if (want / f).read_bytes() != (got / f).read_bytes()]
    assert not differ, differ


@pytest.mark.slow
def test_heads_workers_share_the_passes_and_write_what_one_process_does(worker_store, tiny_model_dir, tmp_path):
    """The heads job's units (the unablated pass, each block's ablations, attention statistics; decoding and importance
    left out here, tests/jobs/test_heads.py has them): worker 1
    dies after writing its first, before releasing its claim; the others do the rest, take its claim over, and the
    folder's files equal a 1-process run's."""
    out = tmp_path / "workers"
    # 4 utterances a language, a multiple of --batch_size 4: a pass's rows (a window under a mask) fill whole batches,
    # where 5 made a fifth more rows and a part-padded batch at each language's end, in each of the 3 workers and the
    # 1-process run.
    command = ["-m", "jobs.heads", "--store", str(worker_store), "--model", str(tiny_model_dir), "--out", str(out),
               "--utterances", "4", "--batch_size", "4", "--nodecode", "--importance", "none", *WORKER]  # fmt: skip
    outputs = staggered_run(command, out, "heads", kill="after_part:1", delay="before_part:1.5", joining=1)
    assert sum("wrote" in o and "heads.parquet" in o for o in outputs[1:]) >= 1, outputs
    one = tmp_path / "one"
    run_heads(configure(HeadsConfig, out=str(one), store=str(worker_store), model=str(tiny_model_dir), utterances=4,
                        batch_size=4, decode=False, importance=("none",), progress=False))  # fmt: skip
    assert_same_files(out, one)
    assert not (out / "claims").exists() and not (out / "workers").exists() and not (out / "lease.json").exists()


@pytest.mark.slow
def test_outliers_workers_share_the_layers_and_write_what_one_process_does(worker_store, tmp_path):
    """The outliers job's units (its layers): worker 1 dies after writing its first part, before releasing its claim;
    the others measure the rest, take its claim over, and the folder's files equal a 1-process run's."""
    from engine.pipelines.outliers.config import OutliersConfig
    from engine.pipelines.outliers.run import run_outliers

    out = tmp_path / "workers"
    command = ["-m", "jobs.outliers", "--store", str(worker_store), "--out", str(out), *WORKER]
    outputs = staggered_run(command, out, "outliers", kill="after_part:1", delay="before_part:1.5", joining=1)
    assert sum("wrote" in o and "outliers.csv" in o for o in outputs[1:]) >= 1, outputs
    one = tmp_path / "one"
    run_outliers(configure(OutliersConfig, out=str(one), store=str(worker_store), progress=False))
    assert_same_files(out, one)
    assert_clean(out)
