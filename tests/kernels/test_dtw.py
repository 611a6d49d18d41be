"""kernels.dtw against openai-whisper's dtw_cpu (numba), against the NumPy reference, and by its properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import ShapeError
from kernels.dtw import (
    BACKTRACE_BY_ITEM_MAX_BATCH,
    dtw,
    dtw_batch,
    dtw_distance,
    dtw_distance_pairs,
    dtw_similarity_matrix,
    reference_dtw,
    reference_dtw_distance,
    reference_dtw_similarity_matrix,
)
from kernels.dtw_wavefront import ACCUMULATORS, PAD


def whisper_timing():
    return pytest.importorskip(
        "whisper.timing", reason="openai-whisper not installed: pip install --no-deps openai-whisper numba tiktoken"
    )


def path_of(result, b: int) -> np.ndarray:
    """Item b's path as whisper's backtrace returns it: int[2, length]."""
    n = int(result.length[b])
    return np.stack([np.asarray(result.token_idx[b, :n]), np.asarray(result.frame_idx[b, :n])])


def path_cost(x: np.ndarray, path: np.ndarray) -> float:
    """C[N, M] of dtw_cpu: x summed in float64 along its path in path order. Each C[i, j] is x[i-1, j-1] plus C at
    the traced predecessor, and numba makes dtw_cpu's cost array float64, so this is exactly its last entry."""
    return float(np.cumsum(x[path[0], path[1]], dtype=np.float64)[-1])


def cost_matrix(rng, shape, kind: str) -> np.ndarray:
    if kind == "uniform":
        return rng.random(shape, dtype=np.float32)
    if kind == "normal":  # negative costs too
        return rng.standard_normal(shape, dtype=np.float32)
    if kind == "ties":  # few distinct values: equal candidates everywhere, tie-breaking decides the path
        return rng.integers(0, 3, shape).astype(np.float32)
    if kind == "constant":
        return np.ones(shape, np.float32)
    if kind == "tiny":  # many costs below float64's resolution of the running sum: exact ties in dtw_cpu
        return rng.random(shape, dtype=np.float32) ** 4
    raise ValueError(kind)


def ragged_batch(rng, sizes, tokens, frames, kind, poison=np.nan):
    """Pad the matrices of the given sizes into f32[batch, tokens, frames], padding set to ``poison``."""
    cost = np.full((len(sizes), tokens, frames), poison, np.float32)
    mats = [cost_matrix(rng, s, kind) for s in sizes]
    for b, m in enumerate(mats):
        cost[b, : m.shape[0], : m.shape[1]] = m
    n_tokens = np.array([s[0] for s in sizes], np.int32)
    n_frames = np.array([s[1] for s in sizes], np.int32)
    return cost, n_tokens, n_frames, mats


def assert_matches_whisper(result, mats):
    dtw_cpu = whisper_timing().dtw_cpu
    for b, x in enumerate(mats):
        expected = dtw_cpu(x)
        got = path_of(result, b)
        assert got.shape == expected.shape and np.array_equal(got, expected), f"item {b} of shape {x.shape}"
        assert float(result.cost[b]) == np.float32(path_cost(x, expected)), f"item {b}: C[N, M], rounded to float32"


KINDS = ["uniform", "normal", "ties", "constant", "tiny"]


# Unpadded shapes, one jit each: degenerate matrices, and the chunking of the diagonals. One item of each kind.
@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (37, 1), (2, 3), (10, 20), (32, 16), (234, 189), (50, 550)])
def test_dtw_vs_whisper_dtw_cpu(shape):
    rng = np.random.default_rng(sum(shape))
    mats = [cost_matrix(rng, shape, kind) for kind in KINDS]
    n_tokens, n_frames = np.full(len(mats), shape[0]), np.full(len(mats), shape[1])
    assert_matches_whisper(dtw_batch(np.stack(mats), n_tokens, n_frames), mats)


@pytest.mark.parametrize("kind", KINDS)
def test_dtw_vs_whisper_dtw_cpu_ragged_up_to_448x1500(kind):
    """Many shapes, tokens 1..448 and frames 1..1500, as ragged items of one padded 448 x 1500 batch."""
    rng = np.random.default_rng(7)
    sizes = [(448, 1500), (1, 1500), (448, 1), (1, 1), (123, 1500), (448, 17), (5, 9)]
    sizes += [(int(rng.integers(1, 449)), int(rng.integers(1, 1501))) for _ in range(5)]
    cost, n_tokens, n_frames, mats = ragged_batch(rng, sizes, 448, 1500, kind)
    assert_matches_whisper(dtw_batch(cost, n_tokens, n_frames), mats)


@pytest.mark.parametrize("accumulator", ["float64", "float32"])
def test_dtw_vs_whisper_dtw_cpu_with_inf_and_nan_inside(accumulator):
    """Infinite and NaN costs inside the matrix: every comparison with them is false, as in dtw_cpu, and a path
    can be pushed onto the boundary row or column (index -1), as whisper's backtrace does."""
    rng = np.random.default_rng(9)
    mats = []
    for fill in (np.inf, -np.inf, np.nan):
        x = rng.random((12, 30), dtype=np.float32)
        x[rng.random(x.shape) < 0.2] = fill
        mats.append(x)
    mats.append(np.full((5, 7), np.inf, np.float32))  # all ties at inf: left to column 0, then up along it
    wall = rng.random((6, 9), dtype=np.float32)
    wall[:, 4] = np.inf
    mats.append(wall)
    cost, n_tokens, n_frames, _ = ragged_batch(rng, [m.shape for m in mats], 12, 30, "uniform")
    for b, m in enumerate(mats):
        cost[b, : m.shape[0], : m.shape[1]] = m
    result = dtw_batch(cost, n_tokens, n_frames, accumulator=accumulator)
    dtw_cpu = whisper_timing().dtw_cpu
    for b, x in enumerate(mats):
        want = reference_dtw(x, dtype=np.float64 if accumulator == "float64" else np.float32)[0]
        assert np.array_equal(path_of(result, b), want), f"item {b}"
        if accumulator == "float64":
            assert np.array_equal(want, dtw_cpu(x)), f"item {b}"
    assert path_of(result, 3)[1].min() == -1  # the all-inf matrix ends on the boundary column


@pytest.mark.slow
def test_dtw_vs_whisper_dtw_cpu_full_448x1500():
    rng = np.random.default_rng(448)
    for kind in ["uniform", "ties"]:
        cost, n_tokens, n_frames, mats = ragged_batch(rng, [(448, 1500)] * 4, 448, 1500, kind)
        assert_matches_whisper(dtw_batch(cost, n_tokens, n_frames), mats)


@pytest.mark.parametrize("kind", ["uniform", "normal", "ties"])
@pytest.mark.parametrize("accumulator, dtype", [("float64", np.float64), ("float32", np.float32)])
def test_dtw_vs_reference(kind, accumulator, dtype):
    rng = np.random.default_rng(3)
    sizes = [(int(rng.integers(1, 14)), int(rng.integers(1, 30))) for _ in range(12)] + [(13, 29), (1, 1)]
    cost, n_tokens, n_frames, mats = ragged_batch(rng, sizes, 13, 29, kind, poison=1e30)
    result = dtw_batch(cost, n_tokens, n_frames, accumulator=accumulator)
    for b, x in enumerate(mats):
        path, total = reference_dtw(x, dtype=dtype)
        assert np.array_equal(path_of(result, b), path), f"item {b} of shape {x.shape}"
        assert float(result.cost[b]) == np.float32(total)  # the same additions in the same order: bit for bit
        assert np.all(np.asarray(result.token_idx[b, path.shape[1] :]) == PAD)
        assert np.all(np.asarray(result.frame_idx[b, path.shape[1] :]) == PAD)


@pytest.mark.parametrize(
    "seed, shape, power",
    [(0, (32, 100), 4), pytest.param(283, (448, 1500), 1, marks=pytest.mark.slow)],
)
def test_accumulator_precision_decides_ties(seed, shape, power):
    """float32 and float64 accumulation part ways here: with tiny costs (uniform**4), which vanish in a float64 sum
    and make exact ties, and on a plain uniform matrix at a near-tie (seed found by search; ~1 in 60 does it). Each
    accumulator follows the reference in its own precision, and float64 follows dtw_cpu."""
    x = np.random.default_rng(seed).random(shape, dtype=np.float32) ** power
    path64, total64 = reference_dtw(x, dtype=np.float64)
    path32, total32 = reference_dtw(x, dtype=np.float32)
    assert not np.array_equal(path64, path32)
    for accumulator, want, total in (("float64", path64, total64), ("float32", path32, total32)):
        result = dtw_batch(x[None], np.array([shape[0]]), np.array([shape[1]]), accumulator=accumulator)
        assert np.array_equal(path_of(result, 0), want), accumulator
        assert float(result.cost[0]) == np.float32(total), accumulator
    assert np.array_equal(whisper_timing().dtw_cpu(x), path64)


def test_whisper_dtw_cpu_accumulates_in_float64():
    """Why float64 is the default: numba types dtw_cpu's ``np.ones(..., float32) * np.inf`` as float64."""
    numba = pytest.importorskip("numba")
    whisper_timing()
    ones_times_inf = numba.njit(lambda: np.ones((2, 2), dtype=np.float32) * np.inf)
    assert ones_times_inf().dtype == np.float64


def test_whisper_tie_breaking_quirk():
    """diag == up < left: whisper goes left and adds left's larger value. Here C = [[0, 0], [5, 6]], not 1."""
    x = np.array([[0, 0], [5, 1]], np.float32)
    want_path = np.array([[0, 1, 1], [0, 0, 1]])  # (0, 0) -> (1, 0) -> (1, 1): through the cost-5 cell
    path, total = reference_dtw(x)
    assert np.array_equal(path, want_path) and total == 6.0
    got = jax.tree.map(lambda a: a[None], jax.jit(dtw)(x, 2, 2))
    assert np.array_equal(path_of(got, 0), want_path) and float(got.cost[0]) == 6.0
    assert np.array_equal(whisper_timing().dtw_cpu(x), want_path)


def test_dtw_cuda_ties_go_the_other_way():
    """Whisper's GPU DTW (the Triton kernel of ``whisper/triton_ops.py``) stores code 2, then 1, then 0, each where
    that neighbour is <= both others: a tie goes diagonal first. On the quirk's matrix above it takes the diagonal
    (0, 0) -> (1, 1), cost 1, where dtw_cpu goes through the cost-5 cell."""
    x = np.array([[0, 0], [5, 1]], np.float32)
    path, total = reference_dtw(x, dtype=np.float32, ties="dtw_cuda")
    assert np.array_equal(path, [[0, 1], [0, 1]]) and total == 1.0
    got = jax.tree.map(lambda a: a[None], jax.jit(dtw, static_argnames="ties")(x, 2, 2, ties="dtw_cuda"))
    assert np.array_equal(path_of(got, 0), path) and float(got.cost[0]) == 1.0
    with pytest.raises(ValueError, match="ties must be one of"):
        dtw(x, 2, 2, ties="numba")


@pytest.mark.parametrize("kind", ["ties", "constant", "uniform"])
def test_dtw_cuda_ties_vs_reference(kind):
    """``ties="dtw_cuda"`` with the float32 accumulator (dtw_cuda's precision) against the NumPy loop with the Triton
    kernel's rule, on ragged batches with poisoned padding; on tied matrices the two rules give other paths. Checked
    against dtw_cuda itself on a GPU by bench/gpu.py's dtw section."""
    rng = np.random.default_rng(5)
    sizes = [(int(rng.integers(1, 14)), int(rng.integers(1, 30))) for _ in range(12)] + [(13, 29), (1, 1)]
    cost, n_tokens, n_frames, mats = ragged_batch(rng, sizes, 13, 29, kind, poison=1e30)
    result = dtw_batch(cost, n_tokens, n_frames, accumulator="float32", ties="dtw_cuda")
    differ = 0
    for b, x in enumerate(mats):
        path, total = reference_dtw(x, dtype=np.float32, ties="dtw_cuda")
        assert np.array_equal(path_of(result, b), path), f"item {b} of shape {x.shape}"
        assert float(result.cost[b]) == np.float32(total)
        differ += not np.array_equal(path, reference_dtw(x, dtype=np.float32)[0])
    assert differ > 0 or kind == "uniform"


@pytest.mark.parametrize("shape", [(10, 20), (32, 16), (123, 1500), (234, 189)])
def test_planted_path(shape):
    """A random monotone path made cheap (cost - 1, the rest in [0, 1)) is the path found, as in whisper's test."""
    n, m = shape
    rng = np.random.default_rng(n * m)
    steps = np.concatenate([np.zeros(n - 1), np.ones(m - 1)])
    rng.shuffle(steps)
    x = rng.random((n, m), dtype=np.float32)
    i = j = k = 0
    planted = []
    while True:
        x[i, j] -= 1
        planted.append((i, j))
        if k == len(steps):
            break
        if k + 1 < len(steps) and steps[k] != steps[k + 1]:  # a down and a right step in a row: one diagonal step
            i, j, k = i + 1, j + 1, k + 2
            continue
        i, j, k = i + (steps[k] == 0), j + (steps[k] == 1), k + 1
    result = dtw_batch(x[None], np.array([n]), np.array([m]))
    assert np.array_equal(path_of(result, 0), np.array(planted).T)


def test_batched_equals_one_by_one_and_chunking_changes_nothing():
    rng = np.random.default_rng(11)
    sizes = [(int(rng.integers(1, 20)), int(rng.integers(1, 41))) for _ in range(6)]
    cost, n_tokens, n_frames, _ = ragged_batch(rng, sizes, 19, 40, "ties", poison=7.0)
    batched = jax.tree.map(np.asarray, dtw_batch(cost, n_tokens, n_frames))
    assert np.array_equal(batched.cost, np.asarray(dtw_batch(cost, n_tokens, n_frames, accumulator="float32").cost))
    for chunk in (1, 7, 256):  # 256 is cut to 40 = frames, the most diagonals a chunk may take
        one = jax.jit(lambda c, n, m, chunk=chunk: dtw(c, n, m, chunk=chunk))
        for b in range(len(sizes)):
            single = one(cost[b], n_tokens[b], n_frames[b])
            for name, got, want in zip(single._fields, single, batched, strict=True):
                np.testing.assert_array_equal(np.asarray(got), want[b], err_msg=f"{name} of item {b}, chunk {chunk}")


def test_large_batch_backtracks_by_vmap():
    """Above BACKTRACE_BY_ITEM_MAX_BATCH matrices the backtrace runs batched (vmap) instead of item by item."""
    rng = np.random.default_rng(13)
    batch = BACKTRACE_BY_ITEM_MAX_BATCH + 3
    sizes = [(int(rng.integers(1, 7)), int(rng.integers(1, 10))) for _ in range(batch)]
    cost, n_tokens, n_frames, mats = ragged_batch(rng, sizes, 6, 9, "ties")
    result = dtw_batch(cost, n_tokens, n_frames)
    for b, x in enumerate(mats):
        path, total = reference_dtw(x)
        assert np.array_equal(path_of(result, b), path), f"item {b} of shape {x.shape}"
        assert float(result.cost[b]) == total


POISONS = (np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0)


def test_poisoned_padding_changes_nothing():
    """Each matrix's padding holds another of ``POISONS``: one batch checks them all."""
    rng = np.random.default_rng(5)
    sizes = [(3, 30), (17, 2), (1, 1), (9, 33), (20, 39), (19, 40), (20, 40)]  # the last one: no padding
    clean, n_tokens, n_frames, _ = ragged_batch(rng, sizes, 20, 40, "uniform", poison=0.5)
    poisoned = clean.copy()
    for b, poison in enumerate(POISONS):
        n, m = sizes[b]
        poisoned[b, n:, :] = poison
        poisoned[b, :, m:] = poison
    want = jax.tree.map(np.asarray, dtw_batch(clean, n_tokens, n_frames))
    got = jax.tree.map(np.asarray, dtw_batch(poisoned, n_tokens, n_frames))
    for name, g, w in zip(want._fields, got, want, strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("accumulator", ACCUMULATORS)
def test_cpu_split_changes_nothing(accumulator):
    """dtw_batch's pieces (one jitted call per worker, each reading its matrices in place from the batch's buffer)
    give what one call gives, for even and uneven splits. The last matrix fills the whole padded shape, so the last
    piece reads up to the end of the buffer. Paths still match dtw_cpu."""
    rng = np.random.default_rng(17)
    sizes = [(int(rng.integers(1, 24)), int(rng.integers(1, 61))) for _ in range(10)] + [(23, 60)]
    cost, n_tokens, n_frames, mats = ragged_batch(rng, sizes, 23, 60, "ties")
    one = jax.tree.map(np.asarray, dtw_batch(cost, n_tokens, n_frames, accumulator=accumulator, workers=1))
    # 3: uneven pieces (4, 4, 3); 11: even, one matrix a piece; 40 is cut to the batch (11). Each piece shape is a
    # compile, so 2 and 5 (more uneven splits of the same code) were dropped.
    for workers in (3, 11, 40):
        got = dtw_batch(cost, n_tokens, n_frames, accumulator=accumulator, workers=workers)
        for name, g, w in zip(one._fields, got, one, strict=True):
            np.testing.assert_array_equal(np.asarray(g), w, err_msg=f"{name}, {workers} workers")
    if accumulator == "float64":
        assert_matches_whisper(one, mats)


def test_dtw_batch_under_jit():
    """Inside the caller's jit the batch is not split (no threads on tracers), and the kernels compile as part of the
    caller's computation (without their own compiler options): the same results."""
    rng = np.random.default_rng(19)
    cost, n_tokens, n_frames, _ = ragged_batch(rng, [(5, 9), (7, 3), (2, 12)], 7, 12, "uniform")
    got = jax.jit(lambda c, n, m: dtw_batch(c, n, m, workers=3))(cost, n_tokens, n_frames)
    want = dtw_batch(cost, n_tokens, n_frames, workers=1)
    for name, g, w in zip(want._fields, got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)
    a, b = rng.standard_normal((3, 6, 4), dtype=np.float32), rng.standard_normal((3, 5, 4), dtype=np.float32)
    lengths = np.array([6, 2, 4], np.int32), np.array([5, 5, 1], np.int32)
    np.testing.assert_allclose(  # the products may round differently inside another jit
        np.asarray(jax.jit(dtw_distance_pairs)(a, b, *lengths)), np.asarray(dtw_distance_pairs(a, b, *lengths)), 1e-6
    )


def test_result_shapes_and_input_checks():
    cost = np.zeros((2, 3, 4), np.float32)
    result = dtw_batch(cost, np.array([3, 1]), np.array([4, 2]))
    assert result.token_idx.shape == result.frame_idx.shape == (2, 7)
    assert result.token_idx.dtype == jnp.int32 and result.cost.dtype == jnp.float32
    # All-zero costs: every interior tie goes left, so the path runs along row 0 and the last row: N + M - 1 cells.
    assert result.length.tolist() == [6, 2]
    with pytest.raises(ShapeError, match="cost must be"):
        dtw_batch(cost[0], np.array([3]), np.array([4]))
    with pytest.raises(ShapeError, match="n_frames must be i32"):
        dtw_batch(cost, np.array([3, 1]), np.array([4]))
    with pytest.raises(ShapeError, match="n_tokens must lie in 1..3"):
        dtw_batch(cost, np.array([4, 1]), np.array([4, 2]))
    with pytest.raises(ShapeError, match="n_frames must lie in 1..4"):
        dtw_batch(cost, np.array([3, 1]), np.array([0, 2]))
    huge = np.broadcast_to(np.float32(0), (2**16, 2**8, 2**7))  # 2**31 cells, no memory
    with pytest.raises(ShapeError, match="pass the batch in parts"):
        dtw_batch(huge, np.ones(2**16, np.int32), np.ones(2**16, np.int32))


def test_dtw_distance_vs_reference():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 30, 8), dtype=np.float32)
    b = rng.standard_normal((6, 25, 8), dtype=np.float32)
    len_a = np.array([30, 1, 12, 30, 7, 19], np.int32)
    len_b = np.array([25, 25, 1, 3, 24, 11], np.int32)
    for x, n in ((a, len_a), (b, len_b)):
        for i, k in enumerate(n):
            x[i, k:] = np.nan  # poisoned padding frames
    got = np.asarray(dtw_distance_pairs(a, b, len_a, len_b))
    want = [reference_dtw_distance(a[i, : len_a[i]], b[i, : len_b[i]]) for i in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all((got >= 0) & (got <= 2))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(dtw_distance))(a, b, len_a, len_b)), got)
    with pytest.raises(ShapeError, match="len_b must lie in 1..25"):
        dtw_distance_pairs(a, b, len_a, len_b + 1)


def test_dtw_distance_properties():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((40, 16), dtype=np.float32)
    dist = jax.jit(dtw_distance)
    assert float(dist(a, a, 40, 40)) == pytest.approx(0.0, abs=1e-6)  # same sequence: the diagonal, distance 0
    slow = np.repeat(a, 2, axis=0)  # the same sequence at half speed still aligns at distance 0
    assert float(dist(a, slow, 40, 80)) == pytest.approx(0.0, abs=1e-6)
    assert float(dist(a[:1], -a[:1], 1, 1)) == pytest.approx(2.0, abs=1e-6)  # opposite frames
    assert float(dist(a, 3.0 * a, 40, 40)) == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free


@pytest.mark.parametrize("tile_cells", [10**9, 700])  # one tile; many tiles, the last column of tiles padded
def test_dtw_similarity_matrix_vs_reference(monkeypatch, tile_cells):
    import kernels.dtw as kd

    monkeypatch.setattr(kd, "TILE_CELLS", tile_cells)
    monkeypatch.setattr(kd, "cpu_workers", lambda: 3)  # tiles run from the thread pool on CPU
    rng = np.random.default_rng(7)
    A = rng.standard_normal((5, 20, 8), dtype=np.float32)
    B = rng.standard_normal((3, 17, 8), dtype=np.float32)
    len_A = np.array([20, 1, 9, 14, 3], np.int32)
    len_B = np.array([2, 17, 11], np.int32)
    for x, n in ((A, len_A), (B, len_B)):
        for i, k in enumerate(n):
            x[i, k:] = 1e6  # poisoned padding frames
    got = np.asarray(dtw_similarity_matrix(A, len_A, B, len_B))
    np.testing.assert_allclose(got, reference_dtw_similarity_matrix(A, len_A, B, len_B), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.diag(np.asarray(dtw_similarity_matrix(A, len_A, A, len_A))), 1.0, atol=1e-6)
    assert dtw_similarity_matrix(A[:0], len_A[:0], B, len_B).shape == (0, 3)
