"""engine.data.hf: Hugging Face datasets by column mapping, built at test time from the real clips with ``datasets``
itself (``Dataset.from_dict`` with an ``Audio`` column, ``save_to_disk``, ``to_parquet``); the Hub branch with
``datasets``' resolution replaced by local files under a commit-named folder."""

import pathlib

import datasets
import numpy as np
import pyarrow as pa
import pytest

from engine.data import hf as H
from engine.data import parquet_audio
from engine.data import sources as S
from engine.data.audio import load_audio
from engine.data.parquet_audio import ParquetAudio
from engine.data.revision import source_revision
from engine.data.tables import audio_kind
from engine.data.utterance import DatasetError

LANGS = ("de", "en", "fr")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def clip(fleurs_dir, lang, n) -> pathlib.Path:
    return fleurs_dir / f"fleurs-{lang}-{n:03d}.ogg"


def text(fleurs_dir, lang, n) -> str:
    return clip(fleurs_dir, lang, n).with_suffix(".txt").read_text().strip()


@pytest.fixture(scope="module")
def dataset(fleurs_dir) -> datasets.Dataset:
    """2 clips x 3 languages; sentence ids s0, s1 shared across languages (made up: the clips are not translations)."""
    rows = [(lang, n) for lang in LANGS for n in (0, 1)]
    return datasets.Dataset.from_dict(
        {
            "audio": [str(clip(fleurs_dir, lang, n)) for lang, n in rows],
            "sentence": [text(fleurs_dir, lang, n) for lang, n in rows],
            "locale": [lang for lang, _ in rows],
            "sentence_id": [f"s{n}" for _, n in rows],
        }
    ).cast_column("audio", datasets.Audio(decode=False))


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("hf")
    dataset.save_to_disk(str(root / "saved"))  # embeds the clips' bytes
    datasets.DatasetDict({"test": dataset, "train": dataset.select([0, 2, 4])}).save_to_disk(str(root / "dict"))
    embedded = datasets.load_from_disk(str(root / "saved"))
    # The Hub's Parquet export layout: <config>/<split>/NNNN.parquet, bytes embedded
    for lang in LANGS:
        embedded.filter(lambda r, lang=lang: r["locale"] == lang).to_parquet(
            str(root / f"export/{lang}/test/0.parquet")
        )
    dataset.to_parquet(str(root / "paths/data/test-00000-of-00001.parquet"))  # no bytes: the rows keep their paths
    return root


def check_listing(src, fleurs_dir, split="test"):
    assert src.languages() == list(LANGS)
    for lang in LANGS:
        utts = src.utterances(lang, split)
        assert [u.id for u in utts] == ["s0", "s1"]
        assert [u.transcription for u in utts] == [text(fleurs_dir, lang, n) for n in (0, 1)]
        assert [u.path for u in utts] == [clip(fleurs_dir, lang, n).name for n in (0, 1)]
        np.testing.assert_array_equal(utts[1].load(), load_audio(clip(fleurs_dir, lang, 1)))


def test_save_to_disk_by_column_mapping(saved, fleurs_dir):
    src = S.get_source(f"hf:{saved / 'saved'}", lang_column="locale", id_column="sentence_id")
    assert src.name == f"hf:{saved / 'saved'}" and src.splits() == []
    check_listing(src, fleurs_dir, split=None)
    assert isinstance(src.utterances("de")[0].audio, memoryview)  # zero-copy view of the memory-mapped Arrow file
    assert src.column_mapping() == {"audio": "audio", "text": "sentence", "id": "sentence_id", "lang": "locale"}

    dd = S.get_source(f"hf:{saved / 'dict'}", lang_column="locale", id_column="sentence_id")
    assert dd.splits() == ["test", "train"]
    check_listing(dd, fleurs_dir)
    assert [u.id for u in dd.utterances("en", "train")] == ["s0"]
    with pytest.raises(DatasetError, match=r"has no split 'validation'; it has \['test', 'train'\]: pass --split"):
        dd.utterances("en", "validation")


def test_parquet_export_layout_one_language_per_config(saved, fleurs_dir):
    src = S.get_source(f"hf:{saved / 'export'}:de,en,fr", id_column="sentence_id")
    assert src.splits() == ["test"]
    check_listing(src, fleurs_dir)
    audio = src.utterances("fr", "test")[0].audio
    assert isinstance(audio, ParquetAudio)  # listing read no audio: each clip is read when loaded
    one = S.get_source(f"hf:{saved / 'export/en/test/0.parquet'}", lang="en", id_column="sentence_id")
    assert one.languages() == ["en"] and one.splits() == []
    assert [u.id for u in one.utterances("en")] == ["s0", "s1"]


def test_parquet_without_bytes_reads_the_paths(saved, fleurs_dir):
    src = S.get_source(f"hf:{saved / 'paths'}", lang_column="locale", id_column="sentence_id")
    check_listing(src, fleurs_dir)


def test_column_defaults_and_named_errors(saved, fleurs_dir):
    # no id column: row numbers (which pair nothing across languages); the text column found by its usual name
    src = S.get_source(f"hf:{saved / 'saved'}", lang_column="locale")
    assert [u.id for u in src.utterances("fr")] == ["4", "5"]
    assert src.utterances("fr")[0].transcription == text(fleurs_dir, "fr", 0)
    columns = r"its columns: audio, sentence, locale, sentence_id"
    for flag, kw in (("--audio_column", dict(audio_column="speech")), ("--text_column", dict(text_column="words")),
                     ("--id_column", dict(id_column="uid"))):  # fmt: skip
        with pytest.raises(DatasetError, match=rf"has no column '\w+' \({flag}\); {columns}"):
            S.get_source(f"hf:{saved / 'saved'}", lang_column="locale", **kw).utterances("en")
    with pytest.raises(DatasetError, match=rf"has no column 'language' \(--lang_column\); {columns}"):
        S.get_source(f"hf:{saved / 'saved'}", lang_column="language").languages()
    with pytest.raises(DatasetError, match=r"names no language: .*--lang_column; columns: \['audio', 'sentence'"):
        S.get_source(f"hf:{saved / 'saved'}")
    with pytest.raises(DatasetError, match=r"column 'sentence' holds strings that name no audio file here"):
        S.get_source(f"hf:{saved / 'export'}:de", audio_column="sentence").utterances("de", "test")
    with pytest.raises(DatasetError, match=r"column 'n' has Arrow type int64, which holds no audio"):
        audio_kind(pa.int64(), "n", "hf:x")
    with pytest.raises(DatasetError, match=r"--lang en names the one language of a dataset"):
        S.get_source(f"hf:{saved / 'saved'}", lang="en", lang_column="locale")
    with pytest.raises(DatasetError, match=r"no // after hf:"):
        S.get_source("hf://google/fleurs")
    with pytest.raises(DatasetError, match=r"--id_column s is given only to hf datasets, not 'demo'"):
        S.get_source("demo", id_column="s")


def test_revision_follows_the_data(saved, dataset, tmp_path):
    spec = dict(lang_column="locale", id_column="sentence_id")
    moved = tmp_path / "moved"
    dataset.save_to_disk(str(moved))
    first = source_revision(S.get_source(f"hf:{moved}", **spec))
    assert first.startswith("files-sha256:")
    assert source_revision(S.get_source(f"hf:{saved / 'saved'}", **spec)) == first  # same data, another folder
    changed = tmp_path / "changed"
    dataset.map(lambda r: {"sentence": r["sentence"].upper()}).save_to_disk(str(changed))
    assert source_revision(S.get_source(f"hf:{changed}", **spec)) != first


def test_hub_parquet_listed_without_audio(saved, fleurs_dir, tmp_path, monkeypatch):
    """A Hub dataset of Parquet files: datasets resolves its data files to URLs at one commit; the listing reads the
    columns but the audio, and each clip's row group is read when loaded. Here the URLs are local files under a
    folder named as the Hub's resolved URLs are (``...@<commit>/...``)."""
    repo = tmp_path / f"google--tiny@{COMMIT}"
    for lang in LANGS:
        (repo / lang).mkdir(parents=True)
        (repo / lang / "test.parquet").write_bytes((saved / f"export/{lang}/test/0.parquet").read_bytes())
    asked = []

    class Builder:
        def __init__(self, config):
            self.config = type("Config", (), {"data_files": {"test": [str(repo / config / "test.parquet")]}})()

    def fake_builder(path, name=None, **kwargs):
        asked.append((path, name))
        return Builder(name)

    monkeypatch.setattr(datasets, "load_dataset_builder", fake_builder)
    parquet_audio._GROUPS.clear()
    src = S.get_source("hf:google/tiny:de,en,fr", id_column="sentence_id")
    assert asked == [("google/tiny", "de"), ("google/tiny", "en"), ("google/tiny", "fr")]
    assert src.name == "hf:google/tiny:de,en,fr" and source_revision(src) == f"hub:{COMMIT}"
    utts = src.utterances("en", "test")
    assert [u.transcription for u in utts] == [text(fleurs_dir, "en", n) for n in (0, 1)]
    assert not parquet_audio._GROUPS  # no audio read to list
    np.testing.assert_array_equal(utts[0].load(), load_audio(clip(fleurs_dir, "en", 0)))
    assert len(parquet_audio._GROUPS) == 1


def test_hub_unreachable_names_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/set' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset_builder", offline)
    with pytest.raises(DatasetError, match=r"cannot resolve the dataset hf:org/set:en.*hf download org/set"):
        S.get_source("hf:org/set:en")


def test_parse_hf_spec(tmp_path):
    assert H.parse_hf_spec("google/fleurs:en_us,de_de") == ("google/fleurs", ("en_us", "de_de"))
    assert H.parse_hf_spec("google/fleurs") == ("google/fleurs", ())
    assert H.parse_hf_spec(str(tmp_path)) == (str(tmp_path), ())
    assert H.parse_hf_spec(f"{tmp_path}:cfg") == (str(tmp_path), ("cfg",))


def test_an_empty_saved_dataset_lists_no_utterance(dataset, tmp_path):
    """datasets cannot load a save_to_disk of no rows (an IndexError inside it): read as 0 rows, which encode then
    refuses by name (or runs on with --allow_empty), in a Dataset and in a DatasetDict's split."""
    empty = dataset.select([])
    empty.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"test": empty, "train": dataset}).save_to_disk(str(tmp_path / "dict"))
    assert S.get_source(f"hf:{tmp_path / 'one'}", lang="en").utterances("en") == []
    src = S.get_source(f"hf:{tmp_path / 'dict'}", lang_column="locale")
    assert src.utterances("en", "test") == [] and len(src.utterances("en", "train")) == 2
