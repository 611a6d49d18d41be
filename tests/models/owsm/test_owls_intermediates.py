"""Training checkpoints as models (``engine.models.owsm.intermediates``): planted DeepSpeed files.

A small random OWLS folder (``random-model --kind owls``: 2 transformer blocks x 64) stands for the final model
``owls_1B_180K``; beside it, ``owls_1B_180K_intermediates/<step>/mp_rank_00_model_states.pt`` files are written with
``torch.save`` in the layout DeepSpeed's ``save_checkpoint`` gives under ESPnet 202409's ``DeepSpeedTrainer``: the
``module`` state dict (its weights perturbed per step, step 2's in bfloat16) beside DeepSpeed's bookkeeping
(``torch.Size`` shapes, a set, the scheduler's state, the config dict) and the reporter's state, whose statistics are
NumPy scalars and a ``timedelta`` as ESPnet before 202611 kept them (what ``torch.load(weights_only=True)`` alone
refuses). A hostile file, whose pickle would call ``os.system`` as it loads, is refused before anything is unpickled.
"""

from __future__ import annotations

import collections
import datetime
import os
import pathlib

import ml_dtypes
import numpy as np
import pytest
import torch

from engine.errors import CheckpointError
from engine.models.common.deepspeed import MODEL_STATES
from engine.models.common.io import file_sha256
from engine.models.common.weights import read_safetensors
from engine.models.owsm.checkpoints import load_checkpoint
from engine.models.random_folder import write_random_folder

FINAL, SERIES = "owls_1B_180K", "owls_1B_180K_intermediates"


def _module(final: pathlib.Path, step: int) -> collections.OrderedDict:
    """The final model's tensors, each scaled by a step's own factor: ``torch`` tensors as DeepSpeed saves them."""
    weights = next(final.rglob("*.safetensors"))
    return collections.OrderedDict(
        (k, torch.from_numpy(np.array(v, np.float32) * (1 + 0.1 * step))) for k, v in read_safetensors(weights).items()
    )


def _deepspeed_file(path: pathlib.Path, module, step: int, **extra) -> pathlib.Path:
    """``save_checkpoint``'s dict for ``module`` (DeepSpeed's keys) with ESPnet's reporter state as ``client_state``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = {"loss": np.float64(2.5), "acc": np.float32(0.4), "train_time": datetime.timedelta(seconds=31.5)}
    state = dict(
        module=module, buffer_names=[], optimizer=None,
        param_shapes=[collections.OrderedDict((k, v.shape) for k, v in module.items())], frozen_param_shapes=None,
        shared_params={}, frozen_param_fragments=None, lr_scheduler={"last_batch_iteration": 1000 * step},
        data_sampler=None, random_ltd=None, sparse_tensor_module_names=set(), skipped_steps=0,
        global_steps=1000 * step, global_samples=64000 * step, dp_world_size=64, mp_world_size=1,
        ds_config={"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}, ds_version="0.14.4",
        reporter={"stats": {step: {"train": stats}}, "epoch": step},
    )  # fmt: skip
    torch.save(state | extra, path)
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> pathlib.Path:
    """``<root>/owls_1B_180K`` (the final model) and ``<root>/owls_1B_180K_intermediates/{1,2}``."""
    root = tmp_path_factory.mktemp("owls-series")
    write_random_folder("owls", root / FINAL)
    _deepspeed_file(root / SERIES / "1" / MODEL_STATES, _module(root / FINAL, 1), 1)
    bf16 = collections.OrderedDict((k, v.bfloat16()) for k, v in _module(root / FINAL, 2).items())
    _deepspeed_file(root / SERIES / "2" / MODEL_STATES, bf16, 2)
    return root


def test_a_step_loads_its_module_with_the_final_model_s_config(series):
    final = load_checkpoint(series / FINAL)
    for step, spelling in ((1, f"{series / SERIES}@step=1"), (2, series / SERIES / "2")):
        ckpt = load_checkpoint(spelling)
        assert (ckpt.name, ckpt.step) == (f"{SERIES}@step={step}", step)
        assert ckpt.sha256 == file_sha256([series / SERIES / str(step) / MODEL_STATES])
        assert ckpt.config == final.config and ckpt.path == (series / FINAL).resolve()
        module = _module(series / FINAL, step)
        assert set(ckpt.state_dict) == set(module)
        want_dtype = np.dtype(np.float32) if step == 1 else np.dtype(ml_dtypes.bfloat16)
        for name, tensor in module.items():
            got = ckpt.state_dict[name]
            assert got.dtype == want_dtype, name
            want = tensor.numpy() if step == 1 else tensor.bfloat16().float().numpy()
            np.testing.assert_array_equal(np.asarray(got, np.float32), want, err_msg=name)


def test_a_pickle_that_would_run_code_is_refused_unread(series, tmp_path):
    marker = tmp_path / "ran"

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = _deepspeed_file(tmp_path / SERIES / "3" / MODEL_STATES, _module(series / FINAL, 3), 3, payload=Hostile())
    (tmp_path / FINAL).symlink_to(series / FINAL)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / SERIES / "3")
    message = str(error.value)
    assert str(path) in message and "system" in message and "\n" not in message, message
    assert not marker.exists()


@pytest.mark.parametrize(
    "spelling, says",
    [
        ("{series}/" + SERIES + "@step=7", "has no step 7 (7/mp_rank_00_model_states.pt); its steps: 1, 2"),
        ("{series}/nowhere@step=7", "'{series}/nowhere' is neither a folder nor a Hugging Face repo id"),
        (
            "{series}/" + SERIES,
            "holds training steps (1, 2), not one model: name one, e.g. '{series}/" + SERIES + "@step=2'",
        ),
    ],
)
def test_a_missing_or_unnamed_step_names_the_steps_there(series, spelling, says):
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(spelling.format(series=series))
    assert says.format(series=series) in str(error.value), str(error.value)


def test_without_the_final_model_the_error_says_where_it_was_looked_for(series, tmp_path):
    (tmp_path / SERIES / "1").mkdir(parents=True)
    (tmp_path / SERIES / "1" / MODEL_STATES).symlink_to(series / SERIES / "1" / MODEL_STATES)
    with pytest.raises(CheckpointError, match=f"the final model's folder '{tmp_path / FINAL}' is not there"):
        load_checkpoint(f"{tmp_path / SERIES}@step=1")


def test_a_file_without_module_is_refused(series, tmp_path):
    path = tmp_path / SERIES / "5" / MODEL_STATES
    path.parent.mkdir(parents=True)
    torch.save({"weights": {}, "global_steps": 5}, path)
    (tmp_path / FINAL).symlink_to(series / FINAL)
    with pytest.raises(CheckpointError, match="has no 'module' state dict \\(global_steps, weights\\)"):
        load_checkpoint(f"{tmp_path / SERIES}@step=5")


def test_a_hub_step_fetches_its_file_alone_and_the_final_model_without_weights(series, monkeypatch):
    import huggingface_hub

    from engine.models import family as fam

    asked = []

    def hf_hub_download(repo_id, filename, revision=None):
        asked.append((repo_id, filename, revision))
        return str(series / SERIES / filename)

    def snapshot_download(repo_id, revision=None, ignore_patterns=None):
        asked.append((repo_id, tuple(ignore_patterns or ()), revision))
        return str(series / FINAL)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    source = f"espnet/{SERIES}@step=2"
    assert fam.detect_family(source).name == "owsm"
    ckpt = load_checkpoint(source)
    assert (ckpt.name, ckpt.step) == (source, 2)
    assert sorted(asked) == [(f"espnet/{FINAL}", ("*.pth", "*.safetensors"), None),
                             (f"espnet/{SERIES}", f"2/{MODEL_STATES}", None)]  # fmt: skip


def test_the_store_records_the_step_and_a_resume_from_another_step_is_refused(series, fleurs_dir, tmp_path):
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.runtime.options import configure
    from engine.stores.reader import open_store
    from engine.stores.utterances import StoreMismatchError

    clips = tmp_path / "clips" / "fr"
    clips.mkdir(parents=True)
    for ext in (".ogg", ".txt"):
        (clips / f"a{ext}").symlink_to(fleurs_dir / f"fleurs-fr-005{ext}")
    store, step1 = str(tmp_path / "store"), f"{series / SERIES}@step=1"

    def encode(model):
        return run_encode(configure(EncodeConfig, out=store, model=model, dataset=f"folder:{tmp_path / 'clips'}",
                                    layers=(1, 3), progress=False))  # fmt: skip

    encode(step1)
    info = open_store(store).info
    assert info.model_name == f"{SERIES}@step=1" and info.dims.to_dict()["config"]["training_step"] == 1
    assert info.dims.to_dict()["config"]["encoder"] == "transformer"
    with pytest.raises(StoreMismatchError) as error:
        encode(f"{series / SERIES}@step=2")
    assert "model_name" in str(error.value) and "training_step" in str(error.value), str(error.value)
