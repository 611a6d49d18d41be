"""engine.data.sources: FLEURS (original layout and Parquet), manifests, folders, get_source; from the real clips."""

import csv
import io
import json
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from engine.data import sources as S
from engine.data.audio import AudioDecodeError, AudioNotFoundError, load_audio
from engine.data.fleurs import FLEURS_SPLITS, FleursSource
from engine.data.utterance import DatasetError, Source, Utterance
from engine.errors import AudioError, LanguageError

# Three pairs of sample clips are the same FLEURS sentence read in two languages (see the sample's README); the other
# clips get made-up ids. FLEURS ids are ints.
SHARED_IDS = {("fr", 5): 1501, ("pt", 2): 1501, ("fr", 0): 1502, ("pt", 7): 1502, ("de", 9): 1503, ("es", 1): 1503}
FLEURS_CODES = {"en": "en_us", "de": "de_de", "fr": "fr_fr", "es": "es_419", "pt": "pt_br"}


def _clip(fleurs_dir, lang, n) -> pathlib.Path:
    return fleurs_dir / f"fleurs-{lang}-{n:03d}.ogg"


def _sentence_id(lang, n) -> int:
    return SHARED_IDS.get((lang, n), 1000 + 10 * list(FLEURS_CODES).index(lang) + n)


def _rows(fleurs_dir, lang, clips=(0, 1, 2)):
    """FLEURS-like rows for the given clip numbers; clip 1 is also a second reading of clip 0's sentence."""
    rows = []
    for n in clips:
        clip = _clip(fleurs_dir, lang, n)
        sentence = _sentence_id(lang, 0 if n == 1 else n)
        rows.append(
            dict(
                id=sentence,
                file_name=f"{10_000_000 + 100 * _sentence_id(lang, n) + n}.wav",
                clip=clip,
                transcription=clip.with_suffix(".txt").read_text().strip(),
                num_samples=soundfile.info(clip).frames,
                gender=n % 3,
            )
        )
    return rows


# --- FLEURS, original layout ----------------------------------------------------------------------------------------


@pytest.fixture
def fleurs_original(tmp_path, fleurs_dir):
    """<root>/<lang>/{test,dev}.tsv + audio/<split>/*.wav, as the original archives extract."""
    root = tmp_path / "fleurs"
    for short in ("fr", "pt"):
        lang_dir = root / FLEURS_CODES[short]
        for split, clips in (("test", (0, 1, 2, 5, 7)), ("dev", (3,))):
            (lang_dir / "audio" / split).mkdir(parents=True)
            lines = []
            for r in _rows(fleurs_dir, short, clips):
                samples, rate = soundfile.read(r["clip"], dtype="int16")
                soundfile.write(lang_dir / "audio" / split / r["file_name"], samples, rate, subtype="PCM_16")
                gender = ("MALE", "FEMALE", "OTHER")[r["gender"]]
                chars = "|".join(r["transcription"].replace(" ", "|"))
                lines.append(
                    f"{r['id']}\t{r['file_name']}\t{r['transcription'].capitalize()}.\t{r['transcription']}\t"
                    f"{chars}\t{r['num_samples']}\t{gender}"
                )
            (lang_dir / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_fleurs_original_layout(fleurs_original, fleurs_dir):
    src = S.get_source(f"fleurs:{fleurs_original}")
    assert isinstance(src, FleursSource) and isinstance(src, Source)
    assert src.name == f"fleurs:{fleurs_original.resolve()}"
    assert src.languages() == ["fr_fr", "pt_br"]
    assert src.splits() == ["validation", "test"]
    fr = src.utterances("fr_fr", "test")
    assert [(u.id, u.recording) for u in fr] == [("1502", 0), ("1502", 1), ("1022", 0), ("1501", 0), ("1027", 0)]
    first = fr[0]
    assert first.lang == "fr_fr" and first.whisper_lang == "fr"
    assert first.transcription == _clip(fleurs_dir, "fr", 0).with_suffix(".txt").read_text().strip()
    assert first.raw_transcription.endswith(".") and first.gender == "male" and fr[1].gender == "female"
    assert first.path.endswith(".wav") and pathlib.Path(first.path).is_file()
    np.testing.assert_allclose(first.load(), load_audio(_clip(fleurs_dir, "fr", 0)), atol=1 / 32768)
    assert first.duration_s == pytest.approx(first.load().size / 16000)
    # Translations share the sentence id across languages.
    pt = {u.id for u in src.utterances("pt_br", "test")}
    assert {"1501", "1502"} <= pt and {u.id for u in fr} & pt == {"1501", "1502"}
    # "dev" is the archives' name of the validation split; both spellings work.
    assert [u.id for u in src.utterances("fr_fr", "validation")] == [u.id for u in src.utterances("fr_fr", "dev")]


def test_fleurs_original_errors(fleurs_original, tmp_path):
    src = FleursSource(fleurs_original)
    with pytest.raises(LanguageError, match=r"no language 'de_de'; available: fr_fr, pt_br"):
        src.utterances("de_de", "test")
    with pytest.raises(DatasetError, match=r"no split 'tests'; use one of train, validation, test"):
        src.utterances("fr_fr", "tests")
    with pytest.raises(DatasetError, match=r"no train.tsv"):
        src.utterances("fr_fr", "train")
    # Audio still in its archive: say how to extract it.
    audio = fleurs_original / "pt_br" / "audio"
    (audio / "test").rename(audio / "moved")
    (audio / "test.tar.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no audio/test/ folder; extract it first: tar -xzf"):
        src.utterances("pt_br", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"is not a FLEURS copy: found neither"):
        FleursSource(tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"does not exist"):
        FleursSource(tmp_path / "nope")


def test_fleurs_tsv_short_line(tmp_path):
    lang_dir = tmp_path / "en_us"
    (lang_dir / "audio" / "test").mkdir(parents=True)
    (lang_dir / "test.tsv").write_text("1\ta.wav\tHello\thello\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"test.tsv:1 has 4 tab-separated fields, expected at least 6"):
        FleursSource(tmp_path).utterances("en_us", "test")


def test_fleurs_corrupt_clip_is_named(fleurs_original):
    """A broken clip fails only its own load, with an AudioError naming the file; validate() returns it."""
    src = FleursSource(fleurs_original)
    utts = src.utterances("fr_fr", "test")
    broken = pathlib.Path(utts[2].path)
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.raises(AudioError, match=broken.name):
        utts[2].load()
    assert isinstance(utts[2].validate(), AudioError) and utts[0].validate() is None
    broken.unlink()
    assert isinstance(utts[2].validate(), AudioNotFoundError)


# --- FLEURS, Parquet ------------------------------------------------------------------------------------------------


def _fleurs_table(fleurs_dir, short, clips, corrupt=()) -> pa.Table:
    """A table with the columns and types of the Hub's FLEURS Parquet export, audio bytes inline."""
    rows = _rows(fleurs_dir, short, clips)
    audio = []
    for r in rows:
        data = r["clip"].read_bytes()
        audio.append({"bytes": data[: len(data) // 2] if r["id"] in corrupt else data, "path": r["file_name"]})
    return pa.table(
        {
            "id": pa.array([r["id"] for r in rows], pa.int32()),
            "num_samples": pa.array([r["num_samples"] for r in rows], pa.int32()),
            "path": [f"/fleurs/{FLEURS_CODES[short]}/test/{r['file_name']}" for r in rows],
            "audio": pa.array(audio, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "transcription": [r["transcription"] for r in rows],
            "raw_transcription": [r["transcription"].capitalize() + "." for r in rows],
            "gender": pa.array([r["gender"] for r in rows], pa.int64()),
            "lang_id": pa.array([19] * len(rows), pa.int64()),
            "language": ["Some language"] * len(rows),
            "lang_group_id": pa.array([0] * len(rows), pa.int64()),
        }
    )


@pytest.fixture
def fleurs_parquet(tmp_path, fleurs_dir):
    """<root>/<lang>/<split>/NNNN.parquet, the layout of the Hub's refs/convert/parquet branch; two files for en."""
    root = tmp_path / "fleurs-parquet"
    for short, files in (("en", [(0, 1, 2), (3,)]), ("de", [(9, 4)])):
        folder = root / FLEURS_CODES[short] / "test"
        folder.mkdir(parents=True)
        for k, clips in enumerate(files):
            pq.write_table(_fleurs_table(fleurs_dir, short, clips, corrupt={1014}), folder / f"{k:04d}.parquet")
    return root


def test_fleurs_parquet(fleurs_parquet, fleurs_dir, tmp_path):
    pytest.importorskip("datasets", reason="FLEURS Parquet is read through the datasets package")
    src = S.get_source(f"fleurs:{fleurs_parquet}", cache_dir=tmp_path / "hf-cache")
    assert src.languages() == ["de_de", "en_us"] and src.splits() == ["test"]
    en = src.utterances("en_us", "test")
    # Files in name order, rows in file order; clip 1 is a second recording of clip 0's sentence.
    assert [(u.id, u.recording) for u in en] == [("1000", 0), ("1000", 1), ("1002", 0), ("1003", 0)]
    assert [u.path for u in en][:2] == ["10100000.wav", "10100101.wav"]
    assert [u.gender for u in en] == ["male", "female", "other", "male"]
    assert isinstance(en[0].audio, memoryview) and "audio" not in repr(en[0])  # zero-copy view, not in repr
    for n, u in zip((0, 1, 2, 3), en, strict=True):
        np.testing.assert_array_equal(u.load(), load_audio(_clip(fleurs_dir, "en", n)))
        assert u.transcription == _clip(fleurs_dir, "en", n).with_suffix(".txt").read_text().strip()
        assert u.duration_s == pytest.approx(u.load().size / 16000)
    assert en[0].whisper_lang == "en" and en[0].raw_transcription.endswith(".")
    # The same files listed twice give the same utterances in the same order.
    assert src.utterances("en_us", "test") == en
    de = src.utterances("de_de", "test")
    assert [u.id for u in de] == ["1503", "1014"]
    # The half-written clip is listed; loading it names the file.
    with pytest.raises(AudioDecodeError, match=r"'10101404\.wav'"):
        de[1].load()
    assert de[0].probe().frames == soundfile.info(_clip(fleurs_dir, "de", 9)).frames
    with pytest.raises(DatasetError, match=r"no en_us/validation Parquet files"):
        src.utterances("en_us", "validation")


def test_fleurs_parquet_single_file_and_hf_features(fleurs_dir, tmp_path):
    """One Parquet file at <lang>/<split>/ works alone; an Audio feature in the schema metadata is not decoded."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "id": datasets.Value("int32"),
            "num_samples": datasets.Value("int32"),
            "path": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=16000),
            "transcription": datasets.Value("string"),
            "raw_transcription": datasets.Value("string"),
            "gender": datasets.ClassLabel(names=["male", "female", "other"]),
            "lang_id": datasets.Value("int64"),
            "language": datasets.Value("string"),
            "lang_group_id": datasets.Value("int64"),
        }
    )
    file = tmp_path / "pt_br" / "test" / "0000.parquet"
    file.parent.mkdir(parents=True)
    pq.write_table(_fleurs_table(fleurs_dir, "pt", (2, 7)).cast(features.arrow_schema), file)
    src = FleursSource(file, cache_dir=tmp_path / "hf-cache")
    assert src.languages() == ["pt_br"] and src.splits() == ["test"]
    utts = src.utterances("pt_br")
    assert [u.id for u in utts] == ["1501", "1502"]
    np.testing.assert_array_equal(utts[1].load(), load_audio(_clip(fleurs_dir, "pt", 7)))


def test_fleurs_parquet_bad_layout(tmp_path, fleurs_dir):
    file = tmp_path / "loose" / "fleurs.parquet"
    file.parent.mkdir()
    pq.write_table(_fleurs_table(fleurs_dir, "en", (0,)), file)
    with pytest.raises(DatasetError, match=r"cannot tell the FLEURS language and split .* <root>/<lang>/<split>/"):
        FleursSource(file)
    pytest.importorskip("datasets", reason="FLEURS Parquet is read through the datasets package")
    bad = tmp_path / "en_us" / "test" / "0000.parquet"
    bad.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), bad)
    with pytest.raises(DatasetError, match=r"has columns \['id', 'text'\]; expected FLEURS's id"):
        FleursSource(tmp_path).utterances("en_us", "test")


def test_fleurs_hub_unreachable(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    src = S.get_source("fleurs")
    assert src.name == "fleurs" and "cmn_hans_cn" in src.languages() and src.splits() == list(FLEURS_SPLITS)
    with pytest.raises(
        DatasetError,
        match=r"cannot load FLEURS de_de/validation from the Hugging Face Hub .*local copy.*'de_de/validation/\*'",
    ):
        src.utterances("de_de", "validation")
    assert calls[0][0] == ("parquet",)
    assert calls[0][1]["data_files"] == "hf://datasets/google/fleurs@refs/convert/parquet/de_de/validation/*.parquet"
    with pytest.raises(LanguageError, match=r"no language 'xx_yy'; available: af_za, am_et"):
        src.utterances("xx_yy", "test")


def test_whisper_lang_unmappable():
    u = Utterance(id="1", lang="zu_za", audio=b"", path="a.wav")
    assert u.whisper_lang is None and Utterance(id="1", lang="cmn_hans_cn", audio="x", path="x").whisper_lang == "zh"
    with pytest.raises(ValueError, match=r"non-empty str"):
        Utterance(id="", lang="en", audio="x", path="x")


# --- manifests ------------------------------------------------------------------------------------------------------


def _manifest_rows(fleurs_dir, tmp_path):
    """Relative, absolute and missing paths; a repeated (lang, id); two languages."""
    local = tmp_path / "clips"
    local.mkdir(exist_ok=True)
    (local / "a.ogg").write_bytes(_clip(fleurs_dir, "de", 9).read_bytes())
    return [
        {"id": "s1", "lang": "de", "path": "clips/a.ogg", "transcription": "hallo", "speaker": "spk1"},
        {"id": "s1", "lang": "es", "path": str(_clip(fleurs_dir, "es", 1)), "transcription": "hola", "gender": "f"},
        {"id": "s2", "lang": "de", "path": "clips/missing.wav", "transcription": ""},
        {"id": "s1", "lang": "de", "path": str(_clip(fleurs_dir, "de", 0)), "transcription": "nochmal"},
    ]


def _check_manifest(src, fleurs_dir, tmp_path):
    assert src.languages() == ["de", "es"] and src.splits() == []
    de = src.utterances("de")
    assert [(u.id, u.recording) for u in de] == [("s1", 0), ("s2", 0), ("s1", 1)]
    assert de[0].path == str((tmp_path / "clips" / "a.ogg").resolve()) and de[0].speaker == "spk1"
    assert de[1].transcription is None and de[0].whisper_lang == "de"
    np.testing.assert_array_equal(de[0].load(), load_audio(_clip(fleurs_dir, "de", 9)))
    with pytest.raises(AudioNotFoundError, match=r"missing\.wav"):  # listed, fails only when loaded
        de[1].load()
    es = src.utterances("es", "test")  # no split column: split is ignored
    assert es[0].gender == "f" and es[0].speaker is None
    with pytest.raises(LanguageError, match=r"no language 'fr'; available: de, es"):
        src.utterances("fr")


def test_manifest_jsonl(tmp_path, fleurs_dir):
    path = tmp_path / "list.jsonl"
    rows = _manifest_rows(fleurs_dir, tmp_path)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    src = S.get_source(f"manifest:{path}")
    assert src.name == f"manifest:{path.resolve()}"
    _check_manifest(src, fleurs_dir, tmp_path)


def test_manifest_csv(tmp_path, fleurs_dir):
    path = tmp_path / "list.csv"
    rows = _manifest_rows(fleurs_dir, tmp_path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "lang", "path", "transcription", "speaker", "gender", "extra"])
        writer.writeheader()
        writer.writerows(rows)
    _check_manifest(S.ManifestSource(path), fleurs_dir, tmp_path)


def test_manifest_splits(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"id": 1, "lang": "en", "path": "a.wav", "split": "train", "duration_s": 1.5},
        {"id": 2, "lang": "en", "path": "b.wav", "split": "test"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    src = S.ManifestSource(path)
    assert src.splits() == ["test", "train"]
    train = src.utterances("en", "train")
    assert [u.id for u in train] == ["1"] and train[0].duration_s == 1.5
    with pytest.raises(DatasetError, match=r"no split 'dev'; it has \['test', 'train'\]"):
        src.utterances("en", "dev")


def test_manifest_errors(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,path,transcription\n1,a.wav,hi\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.csv' has no column 'lang' in its header"):
        S.ManifestSource(csv_path)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"id": 1, "lang": "en", "path": "a.wav"}\n{"id": 2, "path": "b.wav"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.jsonl:2 has no 'lang'"):
        S.ManifestSource(jsonl)
    jsonl.write_text('{"id": 1, "lang": "en", "path": "a.wav"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.jsonl:2 is not valid JSON"):
        S.ManifestSource(jsonl)
    (tmp_path / "m.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"unknown format '\.txt'; use \.jsonl, \.csv or \.tsv"):
        S.ManifestSource(tmp_path / "m.txt")
    with pytest.raises(DatasetError, match=r"does not exist"):
        S.ManifestSource(tmp_path / "nope.jsonl")


def test_text_that_is_not_utf8_is_named(tmp_path):
    """A Latin-1 manifest or transcript is one DatasetError naming the file, line and byte, not a traceback."""
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes("id,lang,path,transcription\n1,fr,a.wav,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"manifest '.*m\.csv' is not UTF-8 text: byte 0xe9 on line 2 .*iconv"):
        S.ManifestSource(csv_path)
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "s1.wav").write_bytes(b"RIFF")
    (tmp_path / "fr" / "s1.txt").write_bytes("\u00e9t\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"transcript '.*s1\.txt' is not UTF-8 text: byte 0xe9 on line 1 \(byte 0\)"):
        S.get_source(f"folder:{tmp_path}").utterances("fr")


# --- folders --------------------------------------------------------------------------------------------------------


def test_folder_with_language_subfolders(tmp_path, fleurs_dir):
    for lang, clips in (("fr", (5, 0)), ("pt", (2, 7, 3))):
        (tmp_path / lang).mkdir()
        for n in clips:
            name = f"sent-{_sentence_id(lang, n)}"
            (tmp_path / lang / f"{name}.ogg").write_bytes(_clip(fleurs_dir, lang, n).read_bytes())
            if n != 3:
                (tmp_path / lang / f"{name}.txt").write_text(f"text {n}\n", encoding="utf-8")
    (tmp_path / "pt" / ".hidden.wav").write_bytes(b"partial")
    (tmp_path / "pt" / "notes.md").write_text("not audio", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a hidden folder, even one holding audio, is not a language
    (tmp_path / ".ipynb_checkpoints" / "a.ogg").write_bytes(_clip(fleurs_dir, "fr", 5).read_bytes())
    src = S.get_source(f"folder:{tmp_path}")
    assert src.languages() == ["fr", "pt"] and src.splits() == []
    pt = src.utterances("pt", "test")
    assert [u.id for u in pt] == ["sent-1043", "sent-1501", "sent-1502"]
    assert pt[0].transcription is None and pt[1].transcription == "text 2" and pt[1].recording == 0
    assert {u.id for u in src.utterances("fr")} == {"sent-1501", "sent-1502"}
    np.testing.assert_array_equal(pt[2].load(), load_audio(_clip(fleurs_dir, "pt", 7)))
    with pytest.raises(DatasetError, match=r"has language subfolders \['fr', 'pt'\]; drop --lang fr"):
        S.FolderSource(tmp_path, lang="fr")


def test_folder_subfolders_without_audio_are_named(tmp_path, fleurs_dir, caplog):
    """A language folder holding no audio is not a language: named when asked for, and in a warning."""
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "s1.ogg").write_bytes(_clip(fleurs_dir, "de", 0).read_bytes())
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "s1.txt").write_text("only a transcript", encoding="utf-8")
    with caplog.at_level("WARNING"):
        src = S.get_source(f"folder:{tmp_path}")
    assert src.languages() == ["de"] and "subfolders ['fr'] hold no audio files" in caplog.text
    with pytest.raises(DatasetError, match=r"has a subfolder fr/ but no audio in it .*leave fr out of --langs"):
        src.utterances("fr")
    (tmp_path / "de" / "s1.ogg").unlink()
    with pytest.raises(DatasetError, match=r"has no audio, in it or in a subfolder \(its subfolders \['de', 'fr'\]"):
        S.get_source(f"folder:{tmp_path}")


def test_folder_flat(tmp_path, fleurs_dir):
    samples = soundfile.read(_clip(fleurs_dir, "en", 4), dtype="float32")[0]
    soundfile.write(tmp_path / "b.flac", samples, 16000)
    soundfile.write(tmp_path / "a.wav", samples, 16000, subtype="PCM_16")
    soundfile.write(tmp_path / "a.flac", samples, 16000)  # same stem twice: two recordings of one id
    with pytest.raises(DatasetError, match=r"no <lang>/ subfolders; give its language \(--lang en"):
        S.get_source(f"folder:{tmp_path}")
    with pytest.raises(
        DatasetError, match=r"only to folder and hf datasets \(a flat folder dataset, or an hf: .*not 'demo'"
    ):
        S.get_source("demo", lang="en")
    src = S.get_source(f"folder:{tmp_path}", lang="en_us")
    utts = src.utterances("en_us")
    assert [(u.id, u.recording, pathlib.Path(u.path).name) for u in utts] == [
        ("a", 0, "a.flac"),
        ("a", 1, "a.wav"),
        ("b", 0, "b.flac"),
    ]
    assert utts[0].whisper_lang == "en"
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "x.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    with pytest.raises(DatasetError, match=r"mixes audio files with language subfolders"):
        S.FolderSource(tmp_path)


# --- get_source -----------------------------------------------------------------------------------------------------


def test_get_source_errors(tmp_path):
    for spec in ("", "librispeech", "fleur:/x", "huggingface:google/fleurs"):
        forms = r"accepted forms: demo; words-demo .*; fleurs; fleurs:/path"
        with pytest.raises(DatasetError, match=r"unknown dataset spec .*" + forms):
            S.get_source(spec)
    for spec in ("manifest", "folder:", "manifest:"):
        with pytest.raises(DatasetError, match=r"names no path; write (manifest|folder):/path"):
            S.get_source(spec)
    with pytest.raises(DatasetError, match=r"does not exist"):
        S.get_source(f"folder:{tmp_path / 'nope'}", lang="en")
    with pytest.raises(TypeError):
        S.get_source("fleurs", bogus=1)


def test_get_source_demo(tmp_path):
    from engine.data.synth.sentences import DemoSource

    src = S.get_source("demo", cache_dir=tmp_path)
    assert isinstance(src, DemoSource) and isinstance(src, Source) and src.name == "demo"
    assert str(S.get_source(f"demo:{tmp_path}").dir).startswith(str(tmp_path))


def test_bytes_audio_named_in_errors():
    u = Utterance(id="7", lang="en_us", audio=b"RIFF not really", path="12345.wav")
    with pytest.raises(AudioDecodeError, match=r"cannot decode audio '12345\.wav'"):
        u.load()
    with pytest.raises(AudioDecodeError, match=r"cannot decode audio '12345\.wav'"):
        u.probe()
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(1600, np.float32), 16000, format="WAV")
    silent = Utterance(id="7", lang="en_us", audio=buf.getvalue(), path="quiet.wav")
    assert "quiet.wav" in str(silent.validate())
    assert silent.validate(allow_silent=True) is None
