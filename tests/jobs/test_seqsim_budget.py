"""The seqsim job under a memory budget (issue 42): tiles that evict, pairs split into blocks, units sized by FLOPs.

Stores are random states written through ``LayerStore`` (``bench.grid.write_random_store``), small enough that a
run takes seconds: 30 languages of 6 short utterances for the budget, 4 languages of which 2 span several packed
bins for the splits. Matrices are compared bit for bit: the same kernels on the same bins give the same bits.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import signal
import types

import numpy as np
import pytest

from bench.grid import write_random_store
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.measures import MeasureContext, Side
from engine.pipelines.seqsim.run import held_languages, run_similarity
from engine.pipelines.seqsim.tiling import blocks as tiling_blocks
from engine.pipelines.seqsim.tiling.tiles import BudgetError, Language, Sizing
from engine.pipelines.verify.config import VerifyConfig
from engine.pipelines.verify.run import run_verify
from engine.runtime.budget import host_memory
from engine.runtime.options import ConfigError, configure
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity
from engine.stores.similarity_blocks import STAGING, StagedBlock, StagingSimilarityStore, marker_digest
from tests.jobs.multiprocess import run_processes, start_processes
from tests.jobs.test_scaleout import assert_same_store
from tests.waits import patient

GRID_MEASURES = ("seqsim", "mean")
SPLIT_MEASURES = "seqsim,seqsim_b2a,mean,duration"
UNIT_GFLOPS = "0.0004"  # the big pairs are 3-4 units, the small ones grouped


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory) -> pathlib.Path:
    """30 languages of 6 utterances of 22-40 frames (every side one packed bin of 256 frames: one compiled shape)."""
    rng = np.random.default_rng(0)
    lengths = {f"l{i:02d}": rng.integers(22, 41, 6).astype(np.int32) for i in range(30)}
    out = tmp_path_factory.mktemp("budget") / "store"
    write_random_store(str(out), lengths, 8, 1)
    return out


@pytest.fixture(scope="module")
def split_store(tmp_path_factory) -> pathlib.Path:
    """2 languages of 24 utterances of 60-120 frames (3 bins each) and 2 of 5 short ones, 2 layers."""
    rng = np.random.default_rng(1)
    lengths = {lang: rng.integers(60, 121, 24).astype(np.int32) for lang in ("big0", "big1")}
    lengths |= {lang: rng.integers(10, 30, 5).astype(np.int32) for lang in ("s0", "s1")}
    out = tmp_path_factory.mktemp("split") / "store"
    write_random_store(str(out), lengths, 8, 2)
    return out


def grid_run(store, out, **options):
    config = configure(SimilarityConfig, store=str(store), out=str(out), measures=GRID_MEASURES, progress=False)
    return run_similarity(dataclasses.replace(config, run=dataclasses.replace(config.run, **options)))


def assert_same_matrices(got: pathlib.Path, want: pathlib.Path) -> None:
    a, b = open_similarity(str(got)), open_similarity(str(want))
    assert a.measures() == b.measures()
    for measure in b.measures():
        assert a.pairs(measure) == b.pairs(measure)
        for pair in b.pairs(measure):
            assert a.done(measure, *pair) == b.done(measure, *pair) == list(b.layers)
            for layer in b.layers:
                np.testing.assert_array_equal(a.matrix(measure, *pair, layer)[0], b.matrix(measure, *pair, layer)[0])


def test_a_budget_that_evicts_gives_the_same_matrices_and_holds_within_it(grid_store, tmp_path):
    """Acceptance: 30 languages under a budget of about 5 of them, against the same run with the machine's budget."""
    whole = grid_run(grid_store, tmp_path / "whole")
    assert whole.pair_layers == 435 and max(whole.reads.values()) == 1.0, whole.report()
    reader = open_store(str(grid_store))
    request_lengths = {lang: np.asarray(reader.lengths(lang)) for lang in reader.languages()}
    sizes = held_languages(request_lengths, {lang: np.arange(6) for lang in request_lengths}, 8,
                           MeasureContext("float32"), GRID_MEASURES)  # fmt: skip
    budget = 5 * max(language.whole_bytes for language in sizes.values())
    tight = grid_run(grid_store, tmp_path / "tight", memory_budget=budget)
    assert tight.peak_held <= budget < whole.peak_held, tight.report()
    # Tiles of 4 languages: every language is read again once per earlier tile, and each at least once.
    assert 1.0 < sum(tight.reads.values()) / len(tight.reads) < 6, tight.reads
    assert f"of a {budget / 1024:.3g} KiB budget (--memory_budget)" in tight.report()
    assert_same_matrices(tmp_path / "tight", tmp_path / "whole")


def test_a_budget_too_small_for_a_pair_is_refused_before_anything_is_written(split_store, tmp_path):
    config = configure(SimilarityConfig, store=str(split_store), out=str(tmp_path / "o"), progress=False,
                       memory_budget="64KiB")  # fmt: skip
    with pytest.raises(BudgetError, match=r"64 KiB .* too small for the pair big0:big1: its smallest block .* needs "
                                          r"(\S+ \S+); raise --memory_budget to at least \1"):  # fmt: skip
        run_similarity(config)
    assert not (tmp_path / "o").exists()


def test_held_sizes_bound_the_arrays_a_side_holds(split_store):
    """The job's count of what it holds (tiles.Language.part_bytes) is the most bytes a side's arrays take: its
    states, and its packed bins while the second role is built from them (both roles and the gathered frames)."""
    reader = open_store(str(split_store))
    n = np.asarray(reader.lengths("big0"))
    language = Language("big0", n, Sizing(8, 4, states=True, packs=True))
    states, _ = reader.language_layer("big0", 0, dtype=np.float32, frames=int(n.max()), zero_padding=False)
    side = Side(np.arange(len(n)), n, states)
    arrays = {id(x): x for b in side.packed._per_bin for x in b}  # the gathered frames: dropped after both roles
    for role in (True, False):
        arrays |= {id(x): x for b in side.packed.bins(role) for x in b}  # index arrays shared between them
    held = states.nbytes + sum(x.nbytes for x in arrays.values())
    assert held <= language.whole_bytes < 1.05 * held


def seqsim_args(store, out) -> list[str]:
    return ["--store", str(store), "--out", str(out), "--measure", SPLIT_MEASURES, "--unit_gflops", UNIT_GFLOPS]


@pytest.fixture(scope="module")
def one_process(split_store, tmp_path_factory):
    """The split store scored by one process, this one (the seqsim job's library call, with ``seqsim_args``'
    settings; the job prints the same report): the reference of the two tests below."""
    out = tmp_path_factory.mktemp("one") / "sim"
    config = configure(SimilarityConfig, store=str(split_store), out=str(out), progress=False,
                       measures=tuple(SPLIT_MEASURES.split(",")), unit_gflops=float(UNIT_GFLOPS))  # fmt: skip
    return out, run_similarity(config).report()


def verify(location, repair=False):
    return run_verify(configure(VerifyConfig, location=str(location), repair=repair, progress=False))


def blocks(output: str) -> int:
    found = re.search(r"(\d+) blocks of split pairs", output)
    return int(found.group(1)) if found else 0


def test_two_processes_write_the_same_store_with_units_split_by_size(split_store, one_process, tmp_path):
    """Acceptance: big0:big1 and the big-small pairs split into blocks of bins, the small pair grouped; two
    jax.distributed processes share the units and write, byte for byte, the store one process writes."""
    one, output = one_process
    units = int(re.search(r"(\d+) units", output).group(1))
    assert blocks(output) >= 4 and units > 6 * 2, output  # more units than pair-layers: some pairs split
    two = tmp_path / "two"
    outputs = run_processes("jobs.seqsim", [*seqsim_args(split_store, two), "--progress=false"])
    assert sum(blocks(o) for o in outputs) == blocks(output), outputs
    assert all(int(re.search(r"(\d+) units", o).group(1)) > 0 for o in outputs), outputs
    assert_same_store(two, one)
    assert not (two / STAGING.rstrip("/")).exists(), "staging left behind"


def test_a_kill_mid_pair_resumes_only_the_missing_blocks(split_store, one_process, tmp_path):
    """Acceptance: a process killed right after its 2nd staged block leaves its pair-layer not done (blocks staged,
    no marker); the resume computes only the other blocks, and the store is the uninterrupted run's."""
    one, output = one_process
    out = tmp_path / "killed"
    (proc,) = start_processes("jobs.seqsim", seqsim_args(split_store, out), n=1,
                              env_per_process={0: {"BABELGRID_FAULT_KILL": "after_block:2"}})  # fmt: skip
    proc.communicate(timeout=patient(600))
    assert proc.returncode == -signal.SIGKILL
    files = sorted((out / STAGING).rglob("*.npz"))
    staged = sorted(p.relative_to(out / STAGING).parts for p in files)
    assert staged, "the killed run staged blocks"
    for measure, pair, layer, *_ in staged:
        marker = out / measure / pair / "done" / f"{layer}.json"
        assert not marker.exists(), f"{measure} {pair} layer {layer} marked done with blocks still staged"
    # verify reads the staged blocks as babelgrid's (not "files babelgrid did not write"), and names a damaged one
    found = verify(out)
    assert found.exit_code == 0 and found.checked["staged blocks"] == len(files), found.report()
    assert f"{len(files)} staged blocks of " in found.report() and "not ours" not in found.report(), found.report()
    assert "a run of seqsim has not finished here (its claims or worker records remain)" in found.report()
    files[0].write_bytes(files[0].read_bytes()[:-40])
    found = verify(out, repair=True)
    assert [d.key for d in found.damage] == [files[0].relative_to(out).as_posix()], found.report()
    assert found.damage[0].problem == "corrupt" and not files[0].exists(), found.report()
    measures = tuple(SPLIT_MEASURES.split(","))
    config = configure(SimilarityConfig, store=str(split_store), out=str(out), progress=False, measures=measures,
                       unit_gflops=float(UNIT_GFLOPS))  # fmt: skip
    resumed = run_similarity(config)
    assert resumed.blocks == blocks(output) - 2 + 1, resumed.report()  # 2 staged (a file per measure), 1 damaged
    assert_same_store(out, one)
    done = json.loads((out / "seqsim" / "big0__big1" / "done" / "1.json").read_text())
    assert done["rows_done"] == 24 and done["cols_done"] == 24
    # The digest a committed marker stands for is the one its blocks were staged under: what verify and the end of a
    # run compare to find blocks left over
    for measure, pair, layer, grid, *_ in staged:
        marker = json.loads((out / measure / pair / "done" / f"{layer}.json").read_text())
        assert marker_digest({k: v for k, v in marker.items() if k != "digest"}) == grid.split("-")[1], marker


def test_a_budget_beyond_the_machine_is_refused_before_the_output_is_made(grid_store, tmp_path):
    """``--memory_budget`` past this machine's RAM (the states' memory on CPU) is refused in one line, and nothing is
    written."""
    out = tmp_path / "beyond"
    with pytest.raises(ConfigError, match=r"^--memory_budget .* GiB is more than the .* GiB of this machine's RAM"):
        grid_run(grid_store, out, memory_budget=host_memory() + 2**30)
    assert not out.exists()


def test_a_pair_scored_in_blocks_gives_the_bytes_of_the_pair_scored_whole(split_store, tmp_path):
    """Two seqsim workers with other --memory_budget values (how a run computes, not what it writes) joined one run:
    one scored big0:big1 in blocks, the other whole, and their mean and centre matrices differed in the last bits
    (up to 7.2e-7), layer 3 from one, layer 6 from the other, in one store (cluster-user probe). Now a budget changes
    no byte of any measure."""
    measures = ("seqsim", "mean", "centre", "duration")
    whole = run_similarity(configure(SimilarityConfig, store=str(split_store), out=str(tmp_path / "whole"),
                                     measures=measures, progress=False))  # fmt: skip
    split = run_similarity(configure(SimilarityConfig, store=str(split_store), out=str(tmp_path / "split"),
                                     measures=measures, progress=False, memory_budget="256KiB"))  # fmt: skip
    assert blocks(split.report()) > 0 == blocks(whole.report()), (split.report(), whole.report())
    assert_same_matrices(tmp_path / "split", tmp_path / "whole")


def _plant(out: pathlib.Path, digest: str) -> pathlib.Path:
    """A block of seqsim big0:big1 layer 1 staged in ``out`` with ``digest``, as a seqsim process stages it."""
    store = StagingSimilarityStore.create_or_open(str(out), open_similarity(str(out)).manifest)
    block = StagedBlock(np.arange(2), np.arange(3), np.zeros((2, 3), np.float32), {})
    store.stage_block("seqsim", "big0", "big1", 1, (2, 2), digest, (0, 1), block)
    return out / STAGING / "seqsim" / "big0__big1" / "1" / f"2x2-{digest}" / "0.1.npz"


def _committed_digest(out: pathlib.Path) -> str:
    marker = json.loads((out / "seqsim" / "big0__big1" / "done" / "1.json").read_text())
    return marker_digest({k: v for k, v in marker.items() if k != "digest"})


def test_blocks_staged_for_a_committed_pair_layer_are_named_and_deleted(split_store, one_process, tmp_path):
    """A worker that staged a block of a pair-layer another worker had committed (workers with other --memory_budget
    plan other blocks) left it in staging/ for good, and verify called it a file babelgrid did not write. Now verify
    names it as left over, --repair deletes it, and so does the end of the next seqsim run; a block of another
    digest (the pair-layer being computed again) stays."""
    out = tmp_path / "sim"
    shutil.copytree(one_process[0], out)
    leftover, pending = _plant(out, _committed_digest(out)), _plant(out, "0123456789abcdef")
    found = verify(out)
    assert found.exit_code == 0 and found.leftover == [leftover.relative_to(out).as_posix()], found.report()
    assert "1 staged blocks of pair-layers already committed" in found.report(), found.report()
    assert "1 staged blocks of 1 split pair-layers not committed yet" in found.report(), found.report()
    assert "not ours" not in found.report(), found.report()
    repaired = verify(out, repair=True)
    assert repaired.repaired and not leftover.exists() and pending.exists(), repaired.report()
    assert "which nothing reads (a seqsim process" in repaired.report() and ": deleted" in repaired.report()
    leftover = _plant(out, _committed_digest(out))
    config = configure(SimilarityConfig, store=str(split_store), out=str(out), progress=False,
                       measures=tuple(SPLIT_MEASURES.split(",")), unit_gflops=float(UNIT_GFLOPS))  # fmt: skip
    assert run_similarity(config).pair_layers == 0
    assert not leftover.exists() and pending.exists()


def test_a_block_staged_after_its_pair_layer_was_committed_is_deleted_by_its_stager(one_process, tmp_path):
    """The race the leftovers came from: process A stages a block of a pair-layer that process B committed meanwhile
    (deleting its staging first). A's commit, right after it staged, finds the pair-layer committed and deletes the
    block; the end-of-run commit of a block staged before does not (it may be another process's, in progress)."""
    out = tmp_path / "sim"
    shutil.copytree(one_process[0], out)
    store = StagingSimilarityStore.create_or_open(str(out), open_similarity(str(out)).manifest)
    work = types.SimpleNamespace(out=store, context=types.SimpleNamespace(dtype="float32"), matches=lambda *_: True,
                                 wanted={("seqsim", "big0", "big1"): {"rows_done": 24}})  # fmt: skip
    staged = _plant(out, tiling_blocks.digest(work, "seqsim", "big0", "big1"))
    assert not tiling_blocks.commit(work, 1, "big0", "big1", ("seqsim",), (2, 2), None) and staged.exists()
    assert not tiling_blocks.commit(work, 1, "big0", "big1", ("seqsim",), (2, 2), None, staged_now=True)
    assert not staged.exists()
