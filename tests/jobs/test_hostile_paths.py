"""Where a job writes (issue 82, F5, F6): never into what it reads, whatever the spelling of the paths."""

from __future__ import annotations

import pytest

from engine.data.sources import dataset_locations
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.runtime.options import ConfigError, configure


@pytest.mark.parametrize("out", ["{d}", "{d}/store", "{d}/de/store"])
def test_encode_refuses_an_output_inside_or_equal_to_its_dataset(tmp_path, out):
    """F6: encode accepted --out equal to or inside its folder: dataset, mixing store files into the audio folders."""
    clips = tmp_path / "clips"
    (clips / "de").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"never nest"):
        configure(EncodeConfig, out=out.format(d=clips), dataset=f"folder:{clips}")


def test_encode_refuses_a_dataset_inside_its_output(tmp_path):
    """F6: the dataset folder kept inside the store it is encoded into (verify then took its transcripts for the
    store's files)."""
    with pytest.raises(ConfigError, match=r"holds dataset"):
        configure(EncodeConfig, out=str(tmp_path), dataset=f"mass:{tmp_path / 'mass'}")
    configure(EncodeConfig, out=str(tmp_path / "store"), dataset=f"folder:{tmp_path / 'clips'}")  # apart: fine


def test_the_folders_a_dataset_spec_reads():
    assert dataset_locations("demo") == () and dataset_locations("fleurs") == ()
    assert dataset_locations("hf:google/fleurs:de_de") == ()  # a hub id: nothing local
    assert dataset_locations("folder:/data/clips") == ("/data/clips",)
    assert dataset_locations("covost2:/data/covost:de_en") == ("/data/covost",)
    assert dataset_locations("manifest:/data/list.jsonl") == ()  # its files lie anywhere


def test_a_backslash_in_a_local_path_is_refused(tmp_path):
    """F5: 'DIR\\store\\sim': TensorStore splits on the backslash and the nesting check did not, so the output landed
    inside the store it read."""
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(ConfigError, match=r"holds a backslash: write local paths with '/'"):
        configure(SimilarityConfig, store=str(store), out=f"{tmp_path}\\store\\sim")
    configure(SimilarityConfig, store=str(store), out="s3://bucket/a\\b")  # an object key may hold one
