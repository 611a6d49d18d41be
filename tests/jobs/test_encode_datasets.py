"""The encode job on the dataset forms of issue 33, built at test time from the real clips: an hf: save_to_disk folder
through the job's column flags, MaSS and CoVoST 2 layouts; transcripts and ids read back from the store; the plan's
dry listing; a resume against a changed dataset refused; the finetune job one step en -> zh from CoVoST 2."""

from __future__ import annotations

import csv
import dataclasses
import pathlib

import datasets
import pytest

from engine.data.revision import source_revision
from engine.data.sources import get_source
from engine.models.whisper.encoder import WhisperEncoder
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.plan import plan_encode_run
from engine.pipelines.encode.run import run_encode
from engine.pipelines.finetune.config import FinetuneConfig
from engine.pipelines.finetune.data import FinetuneError
from engine.pipelines.finetune.run import run_finetune
from engine.runtime.options import ConfigError, configure
from engine.stores.reader import open_store
from engine.stores.utterances import StoreMismatchError
from tests.engine.test_sources_corpora import write_covost, write_mass

LANGS = ("de", "en")


def texts(fleurs_dir, lang):
    return [(fleurs_dir / f"fleurs-{lang}-{n:03d}.txt").read_text().strip() for n in (0, 1)]


@pytest.fixture(scope="module")
def saved(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    """A save_to_disk folder: 2 real clips x 2 languages, an Audio column, sentence ids s0, s1 in column ``sid``."""
    rows = [(lang, n) for lang in LANGS for n in (0, 1)]
    ds = datasets.Dataset.from_dict(
        {
            "speech": [str(fleurs_dir / f"fleurs-{lang}-{n:03d}.ogg") for lang, n in rows],
            "words": [t for lang in LANGS for t in texts(fleurs_dir, lang)],
            "locale": [lang for lang, _ in rows],
            "sid": [f"s{n}" for _, n in rows],
        }
    ).cast_column("speech", datasets.Audio(decode=False))
    root = tmp_path_factory.mktemp("hf") / "saved"
    ds.save_to_disk(str(root))
    return root


HF_FLAGS = ("--audio_column", "speech", "--text_column", "words", "--id_column", "sid", "--lang_column", "locale")


def encode(tmp_path, tiny_model_dir, tiny_whisper, dataset, **kw):
    out = str(tmp_path / "store")
    config = configure(EncodeConfig, out=out, model=str(tiny_model_dir), dataset=dataset, progress=False, **kw)
    return out, run_encode(config, encoder=WhisperEncoder(tiny_whisper))


def test_encode_hf_save_to_disk_through_the_flags(saved, fleurs_dir, tiny_model_dir, tmp_path, run_job):
    out = tmp_path / "store"
    args = ("--out", str(out), "--model", str(tiny_model_dir), "--dataset", f"hf:{saved}", *HF_FLAGS)
    proc = run_job("encode", *args, "--batch_size", "2")
    assert "encoded 4 utterances" in proc.stdout and "shared ids per language pair: de-en 2" in proc.stdout
    store = open_store(str(out))
    assert store.languages() == list(LANGS)
    for lang in LANGS:
        table = store.utterances_table(lang)
        assert table.column("id").to_pylist() == ["s0", "s1"]
        assert table.column("transcription").to_pylist() == texts(fleurs_dir, lang)
        assert table.column("path").to_pylist() == [f"fleurs-{lang}-00{n}.ogg" for n in (0, 1)]
        assert store.done(lang).all()
    created = store.manifest["created"]
    source = get_source(
        f"hf:{saved}", audio_column="speech", text_column="words", id_column="sid", lang_column="locale"
    )
    assert created["dataset"] == f"hf:{saved}" and created["dataset_revision"] == source_revision(source)


def test_encode_plan_lists_the_dataset(saved, tiny_model_dir, tmp_path):
    config = configure(EncodeConfig, out=str(tmp_path / "never"), model=str(tiny_model_dir), dataset=f"hf:{saved}",
                       audio_column="speech", text_column="words", id_column="sid", lang_column="locale")  # fmt: skip
    text = plan_encode_run(config, None).render()
    assert f"dataset: hf:{saved} split (none: all of it)" in text, text
    assert "revision: files-sha256:" in text and "columns: audio=speech, text=words, id=sid, lang=locale" in text
    assert "de: 2 utterances, 2 transcribed; ids s0, s1" in text and "utterances: 4\n" in text
    assert not (tmp_path / "never").exists()


def test_encode_plan_names_unreadable_clips_and_refuses_what_the_run_refuses(fleurs_dir, tiny_model_dir, tmp_path):
    """The plan's counts leave out the clips whose headers cannot be read, as the run skips them: named, not silently
    gone; a language code that cannot name a store folder is refused by the plan as by the run."""
    from engine.errors import StoreError

    for lang in ("de", "en"):
        (tmp_path / "in" / lang).mkdir(parents=True)
        (tmp_path / "in" / lang / "s0.ogg").write_bytes((fleurs_dir / f"fleurs-{lang}-000.ogg").read_bytes())
    (tmp_path / "in" / "en" / "s1.wav").write_bytes(b"not audio")
    config = configure(EncodeConfig, out=str(tmp_path / "never"), model=str(tiny_model_dir),
                       dataset=f"folder:{tmp_path / 'in'}")  # fmt: skip
    text = plan_encode_run(config, None).render()
    assert "en: 2 utterances" in text and "utterances: 2\n" in text, text  # 3 listed, 2 counted
    assert "unreadable: 1 clips left out of the counts, as the run skips them: en/s1 (AudioDecodeError)" in text, text
    (tmp_path / "in" / "de").rename(tmp_path / "in" / "d e")
    with pytest.raises(StoreError, match=r"language codes \['d e'\] cannot name store folders"):
        plan_encode_run(config, None)
    assert not (tmp_path / "never").exists()


def test_encode_mass_and_refuse_a_resume_on_changed_verses(fleurs_dir, tiny_model_dir, tiny_whisper, tmp_path):
    root = write_mass(tmp_path / "mass", fleurs_dir)
    out, summary = encode(tmp_path, tiny_model_dir, tiny_whisper, f"mass:{root}")
    assert summary.done == 7 and summary.shared_ids == {("en", "es"): 2, ("en", "fr"): 2, ("es", "fr"): 2}
    store = open_store(out)
    table = store.utterances_table("es")
    assert table.column("id").to_pylist() == ["01_Matthew_verse_0", "01_Matthew_verse_1"]
    assert table.column("transcription").to_pylist() == ["es verse 0", "es verse 1"]
    assert store.utterances_table("fr").column("id").to_pylist()[-1] == "01_Matthew_verse_2"
    _, again = encode(tmp_path, tiny_model_dir, tiny_whisper, f"mass:{root}")  # unchanged: resumes, all done
    assert again.done == 0 and again.already_done == 7
    (root / "english" / "txt" / "B01___01_Matthew_____ENGESVN1DA_verse_1.txt").write_text("another verse\n")
    with pytest.raises(StoreMismatchError, match=r"another revision of its dataset: dataset_revision \(stored"):
        encode(tmp_path, tiny_model_dir, tiny_whisper, f"mass:{root}")


def test_finetune_one_step_en_zh_from_covost(fleurs_dir, tiny_model_dir, tiny_whisper, tmp_path):
    root = write_covost(tmp_path / "covost", fleurs_dir)
    out, summary = encode(tmp_path, tiny_model_dir, tiny_whisper, f"covost2:{root}:en_zh-CN", split="train")
    table = open_store(out).utterances_table("en")
    assert table.column("id").to_pylist() == ["common_voice_en_1000", "common_voice_en_1001"]
    assert table.column("transcription").to_pylist() == texts(fleurs_dir, "en")
    ft = tmp_path / "ft"
    config = configure(FinetuneConfig, store=out, out=str(ft), model=str(tiny_model_dir), source_langs=("en",),
                       target_lang="zh", target_dataset=f"covost2:{root}", steps=1, batch_size=1, held_out=0.5,
                       max_eval=1, export=False, progress=False)  # fmt: skip
    result = run_finetune(config, model=tiny_whisper)
    assert result.steps_done == 1 and result.n_train == 1 and result.n_held_out == 1
    with open(ft / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["step"], r["target_lang"]) for r in rows if r["metric"] == "loss"} == {("1", "zh")}
    assert {r["target_lang"] for r in rows if r["task"] == "transcribe" and r["metric"] == "bleu"} == {"zh"}
    with open(ft / "split.csv", newline="") as f:
        assert {r["id"] for r in csv.DictReader(f)} == {"common_voice_en_1000", "common_voice_en_1001"}
    with pytest.raises(ConfigError, match=r"targets and target_dataset both give target texts: pass one"):
        dataclasses.replace(config, targets=str(tmp_path / "targets.tsv"))
    wrong = dataclasses.replace(config, target_lang="de", run=dataclasses.replace(config.run, out=str(tmp_path / "x")))
    with pytest.raises(FinetuneError, match=r"translates into 'zh-CN' \(language 'zh'\), not --target_lang 'de'"):
        run_finetune(wrong, model=tiny_whisper)
