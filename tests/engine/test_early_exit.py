"""``engine.pipelines.stages.early_exit``: "has a decoder" asked once, of the registry, for every job that decodes a
layer store (decode, heads, sae's early exit)."""

import dataclasses
import types

import pytest

from engine.models.family import FAMILIES
from engine.pipelines.sae.exit import load_decoder
from engine.pipelines.stages.early_exit import has_decoder


def info(family: str, model_type: str | None, name: str = "m"):
    """The fields of a ``StoreInfo`` the question reads: the family, and the model type in the store's dims."""
    config = {"model_type": model_type} if model_type else {}
    dims = types.SimpleNamespace(to_dict=lambda: {"config": config})
    return types.SimpleNamespace(family=family, model_name=name, dims=dims, checkpoint_sha256="0" * 64)


def test_has_decoder_asks_the_store_s_model_not_its_family():
    assert has_decoder(info("whisper", None))
    assert has_decoder(info("fastconformer", "canary"))
    # Parakeet shares the family that holds Canary's decoder loader, yet has no decoder itself
    assert FAMILIES["fastconformer"].decoder is not None
    assert not has_decoder(info("fastconformer", "parakeet"))


def test_sae_early_exit_of_a_parakeet_store_is_not_scored_rather_than_loaded_as_canary(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("Canary's loader was called for a Parakeet store")

    monkeypatch.setitem(FAMILIES, "fastconformer", dataclasses.replace(FAMILIES["fastconformer"], decoder=refuse))
    decoder, note = load_decoder("some/parakeet", info("fastconformer", "parakeet", "parakeet-tdt"))
    assert decoder is None and "not scored" in note and "parakeet-tdt" in note
