"""A host that dies: two ``jax.distributed`` processes share encode, seqsim, decode and align through work claims
(``engine.runtime.claims``); one is SIGKILLed mid-run, the other finishes its own work and, once the dead one's claims
expire, the dead one's. The stores must then equal, key for key and byte for byte, the stores of one-process runs.

Kept cheap: the tiny random model, 2 languages of 10 clips of 0.2 to 0.6 s (4 with transcripts for decode and align),
claims of 2 utterances, a 3 s claim expiry and a 10 s heartbeat timeout.
"""

from __future__ import annotations

import json
import pathlib
import re
import resource
import signal
import time

import numpy as np
import pytest
import soundfile as sf
import tensorstore as ts

from engine.data.audio import SAMPLE_RATE
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.text_decoder import WhisperDecoder
from engine.pipelines.align.config import AlignConfig
from engine.pipelines.align.run import run_align
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.hypotheses import read_hypotheses
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.claims import CLAIMS_DIR
from engine.runtime.options import configure
from engine.stores.words import read_words
from tests.jobs.multiprocess import start_processes
from tests.waits import patient

LANGS = ("de", "en")
N_CLIPS = 10
CLAIM = ["--claim_ttl", "3", "--heartbeat_timeout", "10", "--progress=false"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("scaleout-clips")
    write_tones(root, N_CLIPS, seed=3, shortest_s=0.2)
    return root


def write_tones(root: pathlib.Path, n: int, *, seed: int, shortest_s: float, texts: dict | None = None) -> None:
    """``n`` noisy tones of shortest_s..0.6 s per language in ``root/<lang>/utt<i>.wav``, with ``texts[lang] i`` as
    transcripts when given."""
    rng = np.random.default_rng(seed)
    for lang in LANGS:
        (root / lang).mkdir()
        for i in range(n):
            t = np.arange(int(rng.uniform(shortest_s, 0.6) * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / lang / f"utt{i}.wav", x.astype(np.float32), SAMPLE_RATE)
            if texts:
                (root / lang / f"utt{i}.txt").write_text(f"{texts[lang]} {i}\n")


def all_keys(path: pathlib.Path) -> dict[str, bytes]:
    """Every key of a store and its bytes; the manifests' ``created`` (time, host) and their digest over it left out."""
    kv = ts.KvStore.open({"driver": "file", "path": str(path) + "/"}).result()
    out = {}
    for key in kv.list().result():
        value = bytes(kv.read(key).result().value)
        if key.decode().endswith("manifest.json"):
            manifest = json.loads(value)
            manifest.pop("created", None)
            manifest.pop("digest", None)
            value = json.dumps(manifest, sort_keys=True).encode()
        out[key.decode()] = value
    return out


def assert_same_store(got: pathlib.Path, want: pathlib.Path) -> None:
    a, b = all_keys(got), all_keys(want)
    assert not [k for k in a if k.startswith(CLAIMS_DIR)], "claims left behind"
    assert sorted(a) == sorted(b)
    different = [k for k in a if a[k] != b[k]]
    assert not different, different


def taken_over(output: str) -> int:
    """The count of claims of other processes (expired, or found dead) a run's summary says it took over."""
    return int(re.search(r"(\d+) taken over from other processes", output).group(1))


def run_with_a_death(module: str, args: list[str], kill_env: dict) -> tuple[str, str]:
    """The job as 2 processes, process 1 killing itself as ``kill_env`` says; returns the two outputs."""
    procs = start_processes(module, [*args, *CLAIM], env_per_process={1: kill_env})
    survivor, dead = (p.communicate(timeout=patient(600))[0] for p in procs)
    assert procs[1].returncode == -signal.SIGKILL, f"process 1 was not killed:\n{dead}"
    assert procs[0].returncode == 0, survivor
    return survivor, dead


@pytest.mark.slow
def test_a_host_dies_and_the_other_finishes_its_work(clips, tiny_model_dir, tiny_whisper, tmp_path):
    encode_args = ["--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--batch_size", "4"]
    encode_args += ["--claim_utterances", "2", "--prefetch", "1"]
    two = tmp_path / "two"
    # Process 1 dies right after its 3rd states shard commits, before that utterance is marked done: its claim on
    # that unit is held and not released.
    survivor, dead = run_with_a_death(
        "jobs.encode", [*encode_args, "--out", str(two)], {"BABELGRID_FAULT_KILL": "after_states:3"}
    )
    assert taken_over(survivor) >= 1, survivor  # the unit the dead process held
    one = tmp_path / "one"
    config = configure(
        EncodeConfig, out=str(one), dataset=f"folder:{clips}", batch_size=4, claim_utterances=2, progress=False
    )
    run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert_same_store(two, one)

    sim_two = tmp_path / "sim-two"
    # Process 1 dies right after its 2nd matrix, in the middle of a (layer, pair) unit of 4 measures.
    survivor, dead = run_with_a_death(
        "jobs.seqsim",
        ["--store", str(two), "--out", str(sim_two)],
        {"BABELGRID_FAULT_KILL": "after_matrix:2"},
    )
    assert taken_over(survivor) >= 1, survivor
    sim_one = tmp_path / "sim-one"
    run_similarity(configure(SimilarityConfig, store=str(two), out=str(sim_one), progress=False))
    assert_same_store(sim_two, sim_one)


# -- decode and align: parts are the work units ---------------------------------------------------------------------

PART_CLIPS = 4  # per language
TEXTS = {"de": "guten tag", "en": "good morning"}


@pytest.fixture(scope="module")
def part_store(tiny_whisper, tmp_path_factory) -> pathlib.Path:
    """A layer store of 2 x 4 clips with transcripts (layers 1 and 3, the final one), encoded in this process."""
    root = tmp_path_factory.mktemp("scaleout-parts")
    clips = root / "clips"  # beside the store, not around it: an output inside what the job reads is refused
    clips.mkdir()
    write_tones(clips, PART_CLIPS, seed=5, shortest_s=0.3, texts=TEXTS)
    store = root / "store"
    run_encode(
        configure(EncodeConfig, out=str(store), dataset=f"folder:{clips}", layers=(1, 3), progress=False),
        encoder=WhisperEncoder(tiny_whisper),
    )
    return store


def units_claimed(output: str) -> int:
    return int(re.search(r"work units: (\d+)", output).group(1))


@pytest.mark.slow
def test_decode_shares_its_parts_and_survives_a_death(part_store, tiny_model_dir, tiny_whisper, tmp_path):
    """6 units (2 languages x layers 1 on/off, 3), 2 parts each (transcribe, translate). Process 1 dies right before
    its 2nd part, i.e. between the two parts of its first unit: one part of that unit written, its claim held."""
    settings = dict(layers=(1, 3), tasks=("transcribe", "translate"), max_new_tokens=4, ln_post="both")
    args = ["--store", str(part_store), "--model", str(tiny_model_dir), "--layers", "1,3", "--ln_post", "both"]
    args += ["--tasks", "transcribe,translate", "--max_new_tokens", "4"]
    two = tmp_path / "two"
    survivor, dead = run_with_a_death(
        "jobs.decode", [*args, "--out", str(two)], {"BABELGRID_FAULT_KILL": "before_part:2"}
    )
    assert taken_over(survivor) >= 1, survivor
    one = tmp_path / "one"
    config = configure(DecodeConfig, store=str(part_store), out=str(one), progress=False, **settings)
    run_decode(config, decoder=WhisperDecoder(tiny_whisper))
    assert read_hypotheses(str(one)).num_rows == len(LANGS) * PART_CLIPS * 3 * 2  # utterances x units x parts
    assert_same_store(two, one)


@pytest.mark.slow
def test_align_shares_its_parts_and_survives_a_death(part_store, tiny_model_dir, tmp_path):
    """4 parts of 2 utterances. Process 1 dies right before it writes its first part, holding that part's claim;
    process 0 aligns the others and, after the claim expires, that one."""
    args = ["--store", str(part_store), "--model", str(tiny_model_dir), "--chunk", "2"]
    two = tmp_path / "two"
    survivor, dead = run_with_a_death(
        "jobs.align", [*args, "--out", str(two)], {"BABELGRID_FAULT_KILL": "before_part:1"}
    )
    assert taken_over(survivor) == 1 and units_claimed(survivor) == 2 * PART_CLIPS // 2, survivor
    one = tmp_path / "one"
    run_align(
        configure(AlignConfig, store=str(part_store), out=str(one), model=str(tiny_model_dir), chunk=2, progress=False)
    )
    for lang in LANGS:
        assert set(read_words(str(one), lang).column("utterance").to_pylist()) == set(range(PART_CLIPS))
    assert_same_store(two, one)


@pytest.mark.slow
def test_a_process_killed_before_the_first_barrier_is_named_within_the_stated_bound(clips, tiny_model_dir, tmp_path):
    """Process 1 dies as it reaches its first barrier (the store's creation). Process 0, waiting there, names it once
    its heartbeat has been silent for --heartbeat_timeout (10 s here), within the bound it states (timeout + 2.5 s),
    and stops with the command that resumes; it does not wait out the barrier's hour."""
    args = ["--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--out", str(tmp_path / "store"), *CLAIM]
    procs = start_processes("jobs.encode", args, env_per_process={1: {"BABELGRID_FAULT_KILL": "barrier:1"}})
    dead = procs[1].communicate(timeout=patient(300))[0]
    died = time.monotonic()
    assert procs[1].returncode == -signal.SIGKILL, dead
    survivor = procs[0].communicate(timeout=patient(300))[0]
    waited = time.monotonic() - died
    assert procs[0].returncode == 1, survivor
    named = re.search(r"PeerLostError: process 1 of 2 \(.*\) stopped answering: its heartbeat has been silent for "
                      r"(\d+) s .* named within --heartbeat_timeout 10 s \+ 2\.5 s\)", survivor)  # fmt: skip
    assert named, survivor
    assert 10 <= int(named.group(1)) <= 13, survivor
    assert "rerun the same command on every process to resume (python -m jobs.encode" in survivor, survivor
    assert waited < patient(40), f"process 0 ended {waited:.0f} s after process 1 died"
    assert "encode: process 1 of 2 was killed (SIGKILL)" in dead, dead  # the supervising parent's line


def test_a_peer_that_never_starts_ends_the_run_at_init_timeout_naming_it(clips, tiny_model_dir, tmp_path):
    """Process 1 of 2 is never started. Process 0 waits --init_timeout (3 s here, JAX's own 300 s by default) for it,
    then ends with one line that names the flag and the command that resumes, having written nothing."""
    args = ["--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--out", str(tmp_path / "store"), *CLAIM,
            "--init_timeout", "3"]  # fmt: skip
    core = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, core[1]))  # the abort writes no core file where cores are on
    try:
        (proc,) = start_processes("jobs.encode", args, started=[0])
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, core)
    output = proc.communicate(timeout=patient(120))[0]
    assert proc.returncode == -signal.SIGABRT, output
    assert "DEADLINE_EXCEEDED" in output, output  # JAX's own line: no process registered in time
    assert (
        "encode: process 0 of 2 was ended by SIGABRT from JAX's runtime: another process of the run died or never "
        "connected (every process waits --init_timeout 3 s for all the others at the start)" in output
    ), output
    assert "rerun the same command on every process to resume (python -m jobs.encode" in output, output
    assert not (tmp_path / "store").exists()
