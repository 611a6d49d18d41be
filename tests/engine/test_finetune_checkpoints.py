"""The finetune job's checkpoints on a small state: the manifest, verification, fallback past a damaged checkpoint,
the named error when none is good, checkpoints written before manifests, leftovers of a killed save (issue 25)."""

import json
import logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from engine.errors import CheckpointError
from engine.pipelines.stages import checkpoints as C


def state(step: int) -> dict:
    """A state shaped like the job's: step, params, optimiser moments (values differ per step)."""
    rng = np.random.default_rng(step)
    params = {"blocks.0.mlp_in.kernel": jnp.asarray(rng.standard_normal((16, 32)), jnp.float32),
              "ln.scale": jnp.asarray(rng.standard_normal(16), jnp.float32)}  # fmt: skip
    return {"step": jnp.int32(step), "params": params, "opt_state": ({k: v * 0.5 for k, v in params.items()},)}


def same(a, b) -> bool:
    import jax

    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))  # fmt: skip


def largest(folder):
    return max((p for p in (folder / C.STATE).rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def xor_bytes(path, n=64):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        C.save(root, step, state(step))
    return root


def test_save_keeps_two_with_manifests_and_restores_the_newest(root):
    assert C.steps(root) == [6, 4] and sorted(p.name for p in root.iterdir()) == ["4", "6"]
    for step in (4, 6):
        files = json.loads((root / str(step) / C.MANIFEST).read_text())["files"]
        on_disk = {p.relative_to(root / str(step)).as_posix() for p in (root / str(step) / C.STATE).rglob("*")
                   if p.is_file()}  # fmt: skip
        assert set(files) == on_disk and all(len(f["sha256"]) == 64 for f in files.values())
        assert C.verify(root / str(step)) is None
    step, got = C.restore(root, state(0))
    assert step == 6 and same(got, state(6))


def damage_largest(folder):
    xor_bytes(largest(folder))
    return largest(folder).relative_to(folder).as_posix()


def delete_largest(folder):
    path = largest(folder)
    path.unlink()
    return path.relative_to(folder).as_posix()


def truncate_largest(folder):
    path = largest(folder)
    path.write_bytes(path.read_bytes()[:-10])
    return path.relative_to(folder).as_posix()


def delete_manifest(folder):
    (folder / C.MANIFEST).unlink()
    return C.MANIFEST


@pytest.mark.parametrize("damage", [damage_largest, delete_largest, truncate_largest, delete_manifest])
def test_damaged_newest_falls_back_to_the_previous_one(root, damage, caplog):
    named = damage(root / "6")
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        step, got = C.restore(root, state(0))
    assert step == 4 and same(got, state(4))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"'{root / '6'}' is damaged" in warning and named in warning and "Resuming from step 4" in warning
    assert C.steps(root) == [4] and (root / "6.damaged").is_dir()
    # the run then rewrites step 6: a good checkpoint again
    C.save(root, 6, state(6))
    assert C.verify(root / "6") is None and C.restore(root, state(0))[0] == 6


def test_no_good_checkpoint_is_a_named_error(root):
    damage_largest(root / "6")
    delete_manifest(root / "4")
    with pytest.raises(CheckpointError) as e:  # a BabelgridError: the command line names it without a traceback
        C.restore(root, state(0))
    assert isinstance(e.value, C.CorruptCheckpointError)
    message = str(e.value)
    assert str(root / "6") in message and str(root / "4") in message and "rm -r" in message
    assert "sha256" in message and C.MANIFEST in message
    assert C.steps(root) == [6, 4]  # nothing moved: the user decides


def test_only_checkpoint_damaged_is_a_named_error(tmp_path):
    root = tmp_path / "checkpoints"
    C.save(root, 2, state(2))
    damage_largest(root / "2")
    with pytest.raises(C.CorruptCheckpointError, match="from step 0"):
        C.restore(root, state(0))


def test_no_checkpoint_restores_nothing(tmp_path):
    assert C.restore(tmp_path / "checkpoints", state(0)) == (0, None)


def test_checkpoint_from_before_manifests_restores_with_one_warning(tmp_path, caplog):
    import orbax.checkpoint as ocp

    root = tmp_path / "checkpoints"
    # exactly how the job saved before manifests existed
    manager = ocp.CheckpointManager(root.resolve(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    for step in (2, 4):
        manager.save(step, args=ocp.args.StandardSave(state(step)))
        manager.wait_until_finished()
    manager.close()
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        step, got = C.restore(root, state(0))
    assert step == 4 and same(got, state(4))
    warnings = [r.getMessage() for r in caplog.records if r.name == C.__name__]
    assert len(warnings) == 1 and "cannot be verified" in warnings[0] and str(root / "4") in warnings[0]
    # newer checkpoints carry manifests; the old ones age out
    C.save(root, 6, state(6))
    C.save(root, 8, state(8))
    assert C.steps(root) == [8, 6] and C.verify(root / "6") is None


def test_a_killed_save_leaves_nothing_marked_complete(root):
    # a kill after orbax finished but before the rename: the folder is not a checkpoint, and the next start removes it
    shutil.copytree(root / "6", root / "8.partial")
    (root / "8.partial" / C.MANIFEST).unlink()
    step, _ = C.restore(root, state(0))
    assert step == 6 and not (root / "8.partial").exists()
