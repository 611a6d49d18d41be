"""The analyst's convention (docs/analysis.md): what a store holds is an attribute, what takes an argument or does
work is a method. ``store.languages`` and ``sim.measures`` are attributes like ``store.info`` and ``sim.layers``; the
older call form ``store.languages()`` still runs, and returns a copy. The jobs' configs come from the package face."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.listing import Listing
from engine.stores.reader import open_store
from engine.stores.similarity import SimilarityStore, new_manifest, open_similarity
from tests.engine.test_store import INFO, fill


def test_listing_is_a_list_and_its_call_is_a_copy():
    names = Listing(["de", "en"])
    assert names == ["de", "en"] and isinstance(names, list)
    copy = names()
    assert copy == names and copy is not names and type(copy) is list
    copy.append("fr")
    assert names == ["de", "en"]


def test_store_languages_is_an_attribute_and_the_call_form_still_works(tmp_path):
    url = f"file://{tmp_path}/store"
    fill(url, lang="de")
    fill(url, lang="en")
    store = open_store(url)
    assert store.languages == ["de", "en"]
    old = store.languages()
    assert old == ["de", "en"] and old is not store.languages
    assert "de" in store.languages and len(store.languages) == 2


def test_similarity_measures_is_an_attribute_and_the_call_form_still_works(tmp_path):
    url = f"file://{tmp_path}/sim"
    manifest = new_manifest(layer_store="file:///x", model_name="m", checkpoint_sha256="0" * 64, layers=INFO.layers)
    writer = SimilarityStore.create_or_open(url, manifest)
    ids = {"row_ids": ["a"], "col_ids": ["a"], "row_recording": [0], "col_recording": [0]}
    array = writer.create_pair("seqsim", "de", "en", ids)
    writer.write_layer(array, "seqsim", "de", "en", INFO.layers[0], np.ones((1, 1)), {"rows": [0], "cols": [0]})
    sim = open_similarity(url)
    assert sim.measures == ["seqsim"] and sim.layers == INFO.layers
    assert sim.measures() == ["seqsim"] and type(sim.measures()) is list


def test_the_jobs_configs_come_from_the_package_face():
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.retrieval.config import RetrievalConfig

    assert engine.RetrievalConfig is RetrievalConfig and engine.DecodeConfig is DecodeConfig
    for job in ("encode", "similarity", "retrieval", "align", "decode", "interp", "challenge", "probe", "finetune"):
        config = f"{job.capitalize()}Config"
        assert config in dir(engine) and isinstance(getattr(engine, config), type), config
    config = engine.configure(engine.RetrievalConfig, similarity="/tmp/sim", progress=False)
    assert isinstance(config, RetrievalConfig)


def test_configure_takes_flag_names_and_flag_text_and_names_an_unknown_field():
    """Notebook users write what they type on the command line: --measure seqsim,mean --layers 4-7."""
    from engine.runtime.options import ConfigError

    config = engine.configure(engine.SimilarityConfig, store="s", out="o", measure="seqsim,mean", layers="4-7",
                              memory_budget="2GiB")  # fmt: skip
    assert config.measures == ("seqsim", "mean") and config.layers == (4, 5, 6, 7)
    assert config.run.memory_budget == 2 * 2**30
    same = engine.configure(engine.SimilarityConfig, store="s", out="o", measures=("seqsim", "mean"),
                            layers=(4, 5, 6, 7), memory_budget=2 * 2**30)  # fmt: skip
    assert same == config
    with pytest.raises(ConfigError, match=r"SimilarityConfig has no field 'layer' \(did you mean 'layers'\?\); its "):
        engine.configure(engine.SimilarityConfig, store="s", out="o", layer=7)


def test_a_store_of_the_other_kind_or_a_folder_above_one_is_named_in_the_refusal(tmp_path):
    """retrieval given the layer store, seqsim given the run's folder: the error says what is there instead."""
    import json

    from engine.errors import StoreError
    from engine.stores.similarity import SimilarityError

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({"format": "babelgrid-layer-store"}))
    (tmp_path / "similarity").mkdir()
    sim = {"format": "babelgrid-similarity", "layer_store": str(tmp_path / "store")}
    (tmp_path / "similarity" / "manifest.json").write_text(json.dumps(sim))
    with pytest.raises(SimilarityError, match=r"it is a layer store .*babelgrid seqsim --store .*store --out SIM"):
        open_similarity(str(tmp_path / "store"))
    with pytest.raises(StoreError, match=r"it is a similarity store \(seqsim's\); its layer store is .*store"):
        open_store(str(tmp_path / "similarity"))
    with pytest.raises(StoreError, match=r"has no manifest\.json.*below it: .*store \(a layer store"):
        open_store(str(tmp_path))
