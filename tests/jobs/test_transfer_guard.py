"""The two loops of the headline job run under a guard that refuses implicit host-to-device copies (as big_vision runs
its loops): the seqsim job's kernel calls (``Kernel.score``) and the encode job's batches. What a kernel or an
encoder needs on the device it puts there with ``jax.device_put``; an index, a length or a scalar sent implicitly,
once per pair or per batch, is an error in every test of those jobs, not an unseen copy on an accelerator.

Every seqsim job test runs its kernels under the guard already; here, each measure's kernel and each SeqSim path on
a ragged pair (a one-frame utterance among them) gives under the guard exactly what it gives without, and both
guards are shown to be on: a kernel call or an encoder that copies implicitly is refused (``TransferGuardError``, with
JAX's words and how to run on), unless ``BABELGRID_TRANSFER_GUARD`` says otherwise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import BabelgridError
from engine.pipelines.seqsim.measures import MEASURES, SEQSIM, SEQSIM_PATHS, Kernel, MeasureContext, Scores, Side
from engine.runtime.transfers import ENV, REFUSED, TransferGuardError, guard_level


@pytest.fixture(scope="module")
def sides() -> tuple[Side, Side]:
    """Two languages' ragged states on the device, as the job loads them (``tiling.tiles.load_piece``), padding NaN."""
    rng = np.random.default_rng(3)
    made = []
    for lengths in (np.array([1, 7, 12, 3, 9], np.int32), np.array([5, 12, 1, 8], np.int32)):
        x = rng.standard_normal((len(lengths), 12, 16)).astype(np.float32)
        for u, n in enumerate(lengths):
            x[u, n:] = np.nan
        made.append(Side(np.arange(len(lengths)), lengths, jax.device_put(x)))
    return made[0], made[1]


def fresh(side: Side) -> Side:
    """The side without its cached packing and pools, so that a kernel builds them again (under the guard)."""
    return dataclasses.replace(side)


def values(scores: dict[str, Scores]) -> dict[str, np.ndarray]:
    return {name: np.asarray(s.values) for name, s in scores.items()}


KERNELS = {measure.kernel.name: (measure.kernel, frozenset({name})) for name, measure in MEASURES.items()}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_kernel_scores_under_the_guard_as_without_it(kernel, sides):
    kernel, names = KERNELS[kernel]
    context = MeasureContext("float32")
    A, B = sides
    guarded = values(kernel.score(fresh(A), fresh(B), context, names))
    free = values(kernel.call(fresh(A), fresh(B), context, names))
    assert guarded.keys() == free.keys()
    for name in guarded:
        np.testing.assert_array_equal(guarded[name], free[name], err_msg=name)


@pytest.mark.parametrize("path", sorted(SEQSIM_PATHS))
def test_every_seqsim_path_scores_under_the_guard_as_without_it(path, sides):
    """blocks, packed, pallas (interpret mode here) and fp8: each path's own kernel call, all three terms."""
    precision = "fp8" if path == "fp8" else "dtype"
    context = MeasureContext("float32", seqsim_kernel="packed" if path == "fp8" else path, seqsim_precision=precision)
    assert context.seqsim_path == path
    names = frozenset({"seqsim", "seqsim_a2b", "seqsim_b2a"})
    A, B = sides
    guarded = values(SEQSIM.score(fresh(A), fresh(B), context, names))
    free = values(SEQSIM.call(fresh(A), fresh(B), context, names))
    for name in names:
        np.testing.assert_array_equal(guarded[name], free[name], err_msg=name)


def careless_kernel(A, B, context, names):  # the lengths sent to the device implicitly, as numpy arguments
    return {"duration": Scores(np.asarray(jnp.asarray(A.lengths)[:, None] + jnp.asarray(B.lengths)[None]))}


def test_a_kernel_that_copies_implicitly_is_refused(sides):
    kernel = Kernel("careless", careless_kernel, SEQSIM.cost)
    assert kernel.call(*sides, MeasureContext("float32"), frozenset({"duration"}))  # no guard: it runs
    with pytest.raises(TransferGuardError, match=f"seqsim's careless kernel: .*{REFUSED}.*{ENV}=log") as refused:
        kernel.score(*sides, MeasureContext("float32"), frozenset({"duration"}))
    assert isinstance(refused.value.__cause__, jax.errors.JaxRuntimeError)


@pytest.mark.parametrize("level", ["log", "allow"])
def test_the_environment_lets_a_run_go_on(level, sides, monkeypatch):
    """``BABELGRID_TRANSFER_GUARD=log`` (or ``allow``): what the default refuses runs, so that a run which meets such a
    copy (a bug) need not stop; another value is refused, naming the variable."""
    kernel = Kernel("careless", careless_kernel, SEQSIM.cost)
    monkeypatch.setenv(ENV, level)
    assert guard_level() == level
    got = kernel.score(*sides, MeasureContext("float32"), frozenset({"duration"}))["duration"].values
    np.testing.assert_array_equal(got, sides[0].lengths[:, None] + sides[1].lengths[None])
    monkeypatch.setenv(ENV, "off")
    with pytest.raises(BabelgridError, match=f"{ENV}='off': use one of disallow, log, allow"):
        kernel.score(*sides, MeasureContext("float32"), frozenset({"duration"}))


def test_an_encoder_that_copies_implicitly_is_refused(tiny_whisper, tmp_path):
    """The encode job's loop: the tiny Whisper's own encoder (which puts its batch) runs; one that hands its NumPy
    batch to a compiled function as it is stops the job with JAX's error, before anything is marked done."""
    from engine.models.whisper.encoder import WhisperEncoder
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.runtime.options import configure
    from engine.stores.reader import open_store
    from tests.jobs.workers import write_clips

    class Careless(WhisperEncoder):
        def sharded(self, mesh, layers, out_dtype):
            return Sent(super().sharded(mesh, layers, out_dtype))

    class Sent:
        """The sharded encoder, but its batch first goes through a compiled call as the NumPy array it is."""

        def __init__(self, run):
            self.run, self.scale = run, jax.jit(lambda x: x * 1.0)

        def __getattr__(self, name):
            return getattr(self.run, name)

        def __call__(self, mel, *rest):
            return self.run(self.scale(mel), *rest)

    def config(out):
        return configure(EncodeConfig, out=str(out), dataset=f"folder:{tmp_path / 'clips'}", progress=False)

    write_clips(tmp_path / "clips", ("de",), 2, seed=5)
    summary = run_encode(config(tmp_path / "fine"), encoder=WhisperEncoder(tiny_whisper))
    assert summary.done == 2, summary.report()
    with pytest.raises(TransferGuardError, match=f"the encode job's batch: .*{REFUSED}"):
        run_encode(config(tmp_path / "careless"), encoder=Careless(tiny_whisper))
    assert (open_store(str(tmp_path / "careless")).lengths("de") < 0).all()  # nothing marked done


def test_the_pool_threads_take_the_callers_guard():
    """``kernels._cpu.on_cores`` runs a kernel's tiles (DTW's, OT's) on a thread pool on CPU and inline, one worker,
    on an accelerator. The guard is the calling thread's: the pool's threads take it on, so that what an accelerator
    would refuse inline is refused on CPU too."""
    from kernels._cpu import on_cores

    careless = jax.jit(lambda x: x + 1)
    assert [int(y) for y in on_cores(lambda i: careless(np.int32(i)), [1, 2], 2)] == [2, 3]
    with jax.transfer_guard_host_to_device("disallow"), pytest.raises(jax.errors.JaxRuntimeError, match=REFUSED):
        on_cores(lambda i: careless(np.int32(i)), [1, 2], 2)
