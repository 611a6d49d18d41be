"""OWSM checkpoints in ESPnet's layout: a missing, an unknown or a misshapen tensor is named; a hub id offline fails
with the fix."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.errors import CheckpointError
from engine.models.owsm.checkpoints import load_checkpoint
from tests.models.owsm import owsm_reference as ref


@pytest.fixture(scope="module")
def model_dir(owsm_v31_dir):
    return owsm_v31_dir  # the session's (conftest.py); _edited copies it before changing a tensor


def _edited(model_dir, tmp_path, edit):
    root = tmp_path / "m"
    shutil.copytree(model_dir, root)
    pth = root / ref.EXP / "valid.acc.ave.pth"
    sd = torch.load(pth, weights_only=True)
    edit(sd)
    torch.save(sd, pth)
    return root


def test_loads_with_layout_and_tokens(model_dir):
    ckpt = load_checkpoint(model_dir)
    assert ckpt.config.n_layer == 2 and ckpt.config.n_dec_layer == 2 and ckpt.config.width == 768
    assert ckpt.config.languages() == ref.LANGUAGES and ckpt.config.tasks() == ref.TASKS
    assert ckpt.config.seconds_per_frame == 0.04 and ckpt.bpemodel is not None


def test_missing_unknown_and_misshapen_tensors_are_named(model_dir, tmp_path):
    name = "encoder.encoders.1.cgmlp.csgu.conv.weight"
    with pytest.raises(CheckpointError, match=f"lacks 1 tensors.*{name}"):
        load_checkpoint(_edited(model_dir, tmp_path / "a", lambda sd: sd.pop(name)))
    with pytest.raises(CheckpointError, match="does not: encoder.encoders.2.norm_mha.weight"):
        load_checkpoint(
            _edited(
                model_dir, tmp_path / "b", lambda sd: sd.update({"encoder.encoders.2.norm_mha.weight": torch.ones(768)})
            )
        )
    with pytest.raises(CheckpointError, match="'decoder.output_layer.bias' has shape"):
        load_checkpoint(
            _edited(model_dir, tmp_path / "c", lambda sd: sd.update({"decoder.output_layer.bias": torch.ones(3)}))
        )


def test_hub_id_offline_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="hf download espnet/owsm_v3.1_ebf_base"):
        load_checkpoint("espnet/owsm_v3.1_ebf_base")
