"""engine.data.covost and engine.data.mass: CoVoST 2 and MaSS in their published layouts, built at test time from the
real clips (Common Voice clips and Bible verses stood in for by FLEURS readings; the texts are made up)."""

import pathlib
import shutil

import numpy as np
import pytest
import soundfile

from engine.data import sources as S
from engine.data.audio import load_audio
from engine.data.covost import CovostSource
from engine.data.mass import MassSource, verse_id
from engine.data.revision import source_revision
from engine.data.utterance import DatasetError

ZH = ["狗在叫。", "天气很好。", "我们明天去。", "这是一本书。"]


def write_covost(root: pathlib.Path, fleurs_dir: pathlib.Path, *, split_files: bool = False) -> pathlib.Path:
    """CoVoST 2 en -> zh-CN: Common Voice's en/clips + en/validated.tsv (a cv-corpus release extracted in root), and
    covost_v2.en_zh-CN.tsv as released (or, with ``split_files``, get_covost_splits.py's per-split TSVs). Four en
    clips: two train, one dev, one test; a fifth row of the CoVoST TSV has no Common Voice clip and is left out."""
    cv = root / "cv-corpus-4-2019-12-10" / "en"
    (cv / "clips").mkdir(parents=True)
    names = [f"common_voice_en_{1000 + n}.ogg" for n in range(4)]
    sentences = []
    for n, name in enumerate(names):
        shutil.copy(fleurs_dir / f"fleurs-en-{n:03d}.ogg", cv / "clips" / name)
        sentences.append((fleurs_dir / f"fleurs-en-{n:03d}.txt").read_text().strip())
    splits = ["train", "train_covost", "dev", "test"]
    lines = ["client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent"]
    lines += [f"spk{n}\t{name}\t{sentences[n]}\t2\t0\t\t\t" for n, name in enumerate(names)]
    (cv / "validated.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if split_files:
        for split in ("train", "dev", "test"):
            rows = [n for n, s in enumerate(splits) if s.startswith(split)]
            body = [f"{names[n]}\t{sentences[n]}\t{ZH[n]}\tspk{n}" for n in rows]
            (root / f"covost_v2.en_zh-CN.{split}.tsv").write_text(
                "\n".join(["path\tsentence\ttranslation\tclient_id", *body]) + "\n", encoding="utf-8"
            )
    else:
        body = [f"{name}\t{ZH[n]}\t{splits[n]}" for n, name in enumerate(names)]
        body.append("common_voice_en_9999.mp3\t没有。\ttrain")  # not in validated.tsv
        (root / "covost_v2.en_zh-CN.tsv").write_text("\n".join(["path\ttranslation\tsplit", *body]) + "\n")
    return root


def write_mass(root: pathlib.Path, fleurs_dir: pathlib.Path) -> pathlib.Path:
    """MaSS verses Matthew 1:0-1 in English and French (the slicer's bible.is names, txt/ beside wav/) and Spanish
    (fetch_audio.py / fetch_data.py names), 2 s of a real clip each; French has an extra verse 2."""
    verses = {
        "english": ["B01___01_Matthew_____ENGESVN1DA_verse_{v}", "en"],
        "french": ["B01___01_Matthieu____FRNTLSN2DA_verse_{v}", "fr"],
        "spanish": ["01_Matthew_verse_{v}", "es"],
    }
    for language, (pattern, code) in verses.items():
        (root / language / "wav").mkdir(parents=True)
        (root / language / "txt").mkdir()
        for v in range(3 if code == "fr" else 2):
            samples, rate = soundfile.read(fleurs_dir / f"fleurs-{code}-{v:03d}.ogg", dtype="float32")
            stem = pattern.format(v=v)
            sliced = stem.startswith("B")
            soundfile.write(
                root / language / "wav" / f"{stem}{'_one_channel' if sliced else ''}.wav", samples[: 2 * rate], rate
            )
            text = f"{code} verse {v}"
            if sliced:
                (root / language / "txt" / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
            else:
                (root / language / "wav" / f"{stem}.{code}").write_text(text + "\n", encoding="utf-8")
    return root


# --- CoVoST 2 -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split_files", [False, True], ids=["released-tsv", "split-tsvs"])
def test_covost_layout(tmp_path, fleurs_dir, split_files):
    root = write_covost(tmp_path / "covost", fleurs_dir, split_files=split_files)
    src = S.get_source(f"covost2:{root}")
    assert isinstance(src, CovostSource) and src.name == f"covost2:{root}:en_zh-CN"
    assert src.languages() == ["en"] and src.splits() == ["train", "dev", "test"] and src.translation_lang == "zh-CN"
    train = src.utterances("en", "train")
    assert [u.id for u in train] == ["common_voice_en_1000", "common_voice_en_1001"]  # train_covost counts as train
    assert [u.translation for u in train] == ZH[:2]
    assert train[1].transcription == (fleurs_dir / "fleurs-en-001.txt").read_text().strip()
    assert train[1].speaker == "spk1"
    np.testing.assert_array_equal(train[1].load(), load_audio(fleurs_dir / "fleurs-en-001.ogg"))
    assert [u.id for u in src.utterances("en", "validation")] == ["common_voice_en_1002"]  # the Hub's name for dev
    assert [u.translation for u in src.utterances("en", "test")] == [ZH[3]]
    assert S.get_source(f"covost2:{root}:en_zh-CN").name == src.name
    target, texts = S.dataset_translations(f"covost2:{root}")
    assert target == "zh-CN" and texts == {f"common_voice_en_{1000 + n}": ZH[n] for n in range(4)}
    assert source_revision(src).startswith("files-sha256:")


def test_covost_errors(tmp_path, fleurs_dir):
    root = write_covost(tmp_path / "covost", fleurs_dir)
    with pytest.raises(DatasetError, match=r"has no covost_v2\.en_de\.tsv .*it has the pairs \['en_zh-CN'\]"):
        S.get_source(f"covost2:{root}:en_de")
    (root / "covost_v2.en_de.tsv").write_text("path\ttranslation\tsplit\n")
    with pytest.raises(
        DatasetError, match=r"holds the pairs \['en_de', 'en_zh-CN'\]: name one, covost2:.*:<src>_<tgt>"
    ):
        S.get_source(f"covost2:{root}")
    shutil.rmtree(root / "cv-corpus-4-2019-12-10")
    with pytest.raises(DatasetError, match=r"no Common Voice release of 'en' \(clips/ and validated\.tsv\).*ln -s"):
        S.get_source(f"covost2:{root}:en_zh-CN")
    with pytest.raises(DatasetError, match=r"no covost_v2\.<src>_<tgt>\.tsv: extract"):
        S.get_source(f"covost2:{tmp_path}")
    bad = write_covost(tmp_path / "bad", fleurs_dir)
    (bad / "covost_v2.en_zh-CN.tsv").write_text("path\ttarget\tsplit\nx.mp3\tx\ttrain\n")
    with pytest.raises(DatasetError, match=r"has no column 'translation'; its columns: path, target, split"):
        S.get_source(f"covost2:{bad}").utterances("en", "train")
    with pytest.raises(DatasetError, match=r"CoVoST 2 has no split 'eval'"):
        S.get_source(f"covost2:{bad}").utterances("en", "eval")
    with pytest.raises(DatasetError, match=r"holds no translations \(CoVoST 2 does"):
        S.dataset_translations(f"mass:{write_mass(tmp_path / 'mass', fleurs_dir)}")


# --- MaSS -----------------------------------------------------------------------------------------------------------


def test_mass_layout(tmp_path, fleurs_dir):
    root = write_mass(tmp_path / "mass", fleurs_dir)
    src = S.get_source(f"mass:{root}")
    assert isinstance(src, MassSource) and src.languages() == ["en", "es", "fr"] and src.splits() == []
    ids = ["01_Matthew_verse_0", "01_Matthew_verse_1"]
    for lang in ("en", "es"):
        utts = src.utterances(lang)
        assert [u.id for u in utts] == ids
        assert [u.transcription for u in utts] == [f"{lang} verse 0", f"{lang} verse 1"]
    fr = src.utterances("fr")
    assert [u.id for u in fr] == [*ids, "01_Matthew_verse_2"]
    assert pathlib.Path(fr[1].path).name == "B01___01_Matthieu____FRNTLSN2DA_verse_1_one_channel.wav"
    assert fr[1].load().shape == (32000,)
    before = source_revision(src)
    (root / "french" / "txt" / "B01___01_Matthieu____FRNTLSN2DA_verse_2.txt").write_text("changed\n")
    assert source_revision(S.get_source(f"mass:{root}")) != before


def test_mass_verse_ids_and_errors(tmp_path):
    # MaSS's own id equivalence (its fetch_data.py): book names in English, numbered books keep their number, the
    # book's B-number (not shared: the Russian Bible orders the epistles apart) dropped
    assert verse_id("B07___08_1CorinthiansENGESVN1DA_verse_3") == "08_1Corinthians_verse_3"
    assert verse_id("B07___08_1Corintios__SPNBDAN1DA_verse_3_one_channel") == "08_1Corinthians_verse_3"
    assert verse_id("B23___04_1San_Pedro_EUSEABN1DA_verse_12") == "04_1Peter_verse_12"
    assert verse_id("B06___04_James_______RUSS76N2DA_verse_1") == "04_James_verse_1"
    assert verse_id("B20___04_Santiago____SPNBDAN1DA_verse_1") == "04_James_verse_1"
    assert verse_id("01_Matthew_verse_1") == "01_Matthew_verse_1" and verse_id("notes") is None
    with pytest.raises(DatasetError, match=r"has no <language>/wav/ with verse clips"):
        S.get_source(f"mass:{tmp_path}")
    (tmp_path / "english" / "wav").mkdir(parents=True)
    soundfile.write(tmp_path / "english" / "wav" / "intro.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(DatasetError, match=r"MaSS en: 1 clips are not named as verses \(intro\.wav\)"):
        S.get_source(f"mass:{tmp_path}").utterances("en")
    with pytest.raises(DatasetError, match=r"names no path; write mass:/path"):
        S.get_source("mass:")
