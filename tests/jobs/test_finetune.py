"""The finetune job end to end on a tiny random model and a synthetic store: outputs, export round trip, resume after
SIGKILL, fallback past a damaged checkpoint, the export check before training, the closing line, refusals."""

import csv
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.figures import png_title
from engine.models.interface import SILENCE_FILL
from engine.pipelines.finetune.config import FinetuneConfig
from engine.pipelines.finetune.data import FinetuneError
from engine.pipelines.finetune.run import METRIC_FIELDS, run_finetune
from engine.pipelines.stages import checkpoints as C
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow
from tests.conftest import TINY_DIMS
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
N = 10
TEXTS = {"en": [f"the dog number {i} barks" for i in range(N)], "de": [f"der hund nummer {i} bellt" for i in range(N)]}


def make_store(root: pathlib.Path, sha256: str, layers=(3,), langs=("en", "de")) -> str:
    """A planted store, as the model whose weights' ``sha256`` it names would have written it."""
    url = f"file://{root}"
    info = StoreInfo("tiny-random", sha256, TINY_DIMS, layers, "float32")
    store = LayerStore.create_or_open(url, info, creation={"dataset": "planted-pairs"})
    rng = np.random.default_rng(0)
    for lang in langs:
        frames = rng.integers(20, 80, size=N)
        rows = [UtteranceRow(id=f"s{i}", lang=lang, path=f"/{lang}/{i}.wav", transcription=TEXTS[lang][i],
                             duration_s=0.5, n_frames=int(n), n_windows=1) for i, n in enumerate(frames)]  # fmt: skip
        arrays = store.language(lang, rows)
        for u, n in enumerate(frames):
            arrays.write_utterance(u, rng.standard_normal((len(layers), int(n), 64)).astype(np.float32))
        arrays.flush()
    return str(root)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_whisper):
    return make_store(tmp_path_factory.mktemp("ftstore") / "store", tiny_whisper.checkpoint.sha256)


def config(store, out, model, **kw):
    base = dict(store=store, out=str(out), model=str(model), source_langs=("en",), target_lang="de", steps=6,
                batch_size=4, learning_rate=1e-3, checkpoint_every=2, log_every=2, eval_langs=("en",), max_eval=2,
                held_out=0.2)  # fmt: skip
    return configure(FinetuneConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def run_out(store, tiny_model_dir, tiny_whisper, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "out"
    summary = run_finetune(config(store, out, tiny_model_dir), model=tiny_whisper)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs(run_out):
    out, summary = run_out
    rows = read_csv(out / "metrics.csv")
    assert tuple(rows[0]) == METRIC_FIELDS
    train = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train] == [2, 4, 6] and all(r["metric"] == "loss" for r in train)
    evals = {(int(r["step"]), r["task"], r["target_lang"], r["metric"]) for r in rows if r["split"] == "held_out"}
    assert {(s, t, y, m) for s in (0, 6) for t, y in (("transcribe", "de"), ("translate", "en"))
            for m in ("bleu", "chrf")} == evals  # fmt: skip
    split = read_csv(out / "split.csv")
    assert sorted(r["split"] for r in split) == ["held_out"] * 2 + ["train"] * 8
    assert summary.n_train == 8 and summary.n_held_out == 2
    assert "dataset planted-pairs" in png_title((out / "loss.png").read_bytes())
    bleu = png_title((out / "bleu.png").read_bytes())
    assert "; dataset planted-pairs; n = 2 held-out utterances per language" in bleu, bleu
    # the padding approximation is named where a reader of the run looks
    assert json.loads((out / "config.json").read_text())["padding"] == SILENCE_FILL == "silence_fill_approximate"
    assert f"padding: {SILENCE_FILL}" in summary.report()


def test_export_round_trip(run_out):
    import torch
    import transformers

    from engine.models.whisper.loaded import load_whisper

    out, _ = run_out
    gen = json.loads((out / "model" / "generation_config.json").read_text())
    assert gen["alignment_heads"]
    ours = load_whisper(out / "model")
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(out / "model").eval()
    xa = np.random.default_rng(5).standard_normal((1, 1500, 64)).astype(np.float32)
    tokens = np.array([ours.tokenizer.sot_sequence("de", "transcribe") + (400, 500)], np.int32)
    dec = ours.model.decoder
    logits = np.asarray(dec(tokens, dec.cross_kv(xa))[0])
    with torch.no_grad():
        ref = hf(encoder_outputs=(torch.from_numpy(xa),), decoder_input_ids=torch.from_numpy(tokens).long()).logits
    np.testing.assert_allclose(logits, ref.numpy(), atol=1e-4)
    mel = np.random.default_rng(6).standard_normal((1, 80, 3000)).astype(np.float32)
    with torch.no_grad():
        enc = hf.model.encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours.encode(mel, (3,)))[0], enc, atol=1e-4)


def test_resume_after_sigkill_is_bitwise(store, tiny_model_dir, tiny_whisper, run_out, tmp_path):
    """A job process killed after its checkpoint at step 2; the rerun (the job's library call with the same settings,
    in this process, whose training step ``run_out`` compiled) resumes and exports the uninterrupted run's model."""
    from safetensors.numpy import load_file

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "jobs.finetune", "--store", store, "--out", str(out), "--model", str(tiny_model_dir),
            "--source_langs", "en", "--target_lang", "de", "--steps", "6", "--batch_size", "4", "--learning_rate",
            "1e-3", "--checkpoint_every", "2", "--log_every", "2", "--eval_langs", "en", "--max_eval", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + patient(240)
    while not (out / "checkpoints" / "2").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = run_finetune(config(store, out, tiny_model_dir), model=tiny_whisper)
    assert 0 < again.resumed_from < 6 and f"(resumed from {again.resumed_from})" in again.report(), again.report()
    assert "model" in wrote_paths(again.wrote(out), out)
    a = load_file(str(run_out[0] / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_refusals(store, tiny_model_dir, tiny_whisper, run_out, tmp_path):
    with pytest.raises(FinetuneError, match="learning_rate"):
        run_finetune(config(store, run_out[0], tiny_model_dir, learning_rate=2e-3), model=tiny_whisper)
    other = tmp_path / "t.tsv"
    other.write_text("x1\tein satz\nx2\tnoch einer\n")
    with pytest.raises(FinetuneError, match="no recording of 'en'"):
        run_finetune(config(store, tmp_path / "a", tiny_model_dir, targets=str(other)), model=tiny_whisper)
    with pytest.raises(FinetuneError, match="no language 'fr'"):
        run_finetune(config(store, tmp_path / "b", tiny_model_dir, target_lang="fr"), model=tiny_whisper)
    empty = tmp_path / "e.tsv"
    empty.write_text("id\ttext\ns1\t \n")
    with pytest.raises(FinetuneError, match="no texts"):
        run_finetune(config(store, tmp_path / "c", tiny_model_dir, targets=str(empty)), model=tiny_whisper)
    low = make_store(tmp_path / "low", tiny_whisper.checkpoint.sha256, layers=(0, 2))
    with pytest.raises(FinetuneError, match="L\\+1"):
        run_finetune(config(low, tmp_path / "d", tiny_model_dir), model=tiny_whisper)
    # Too few ids is known from the store's tables: refused before the settings are recorded, so that the corrected
    # rerun into the same folder is not refused as another run's (issue 82 F10)
    one = tmp_path / "one.tsv"
    one.write_text("s1\tein satz\n")
    with pytest.raises(FinetuneError, match="need at least 2 ids"):
        run_finetune(config(store, tmp_path / "f", tiny_model_dir, targets=str(one)), model=tiny_whisper)
    assert not (tmp_path / "f" / "config.json").exists()


def test_a_model_that_did_not_write_the_store_is_refused(tiny_model_dir, tiny_whisper, tmp_path):
    """Weights of the same shape but not the store's (a probe's seed-1 random model) trained and exported silently:
    the decoder learnt from states its own encoder does not make. Refused, before anything is written."""
    alien = make_store(tmp_path / "alien", "1" * 64)
    with pytest.raises(FinetuneError, match=r"written by model 'tiny-random' \(sha256 111111111111\).*store's model"):
        run_finetune(config(alien, tmp_path / "out", tiny_model_dir), model=tiny_whisper)
    assert not (tmp_path / "out").exists()


def test_a_resume_names_the_store_and_model_by_place_and_decode_names_the_fine_tune(
    store, tiny_model_dir, tiny_whisper, run_out, tmp_path, monkeypatch
):
    """A task requeued in another working folder gives the same store and model relative paths: resumed (it was
    refused as "other hyperparameters"). The exported model is named as a fine-tune of the store's by decode."""
    from engine.pipelines.decode.config import DecodeConfig, DecodeError
    from engine.pipelines.decode.run import run_decode
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify

    out = finished_copy(run_out, tmp_path)
    monkeypatch.chdir(pathlib.Path(store).parent)
    model = os.path.relpath(tiny_model_dir)
    again = run_finetune(config(pathlib.Path(store).name, out, model), model=tiny_whisper)
    assert again.resumed_from == 6, again.report()
    assert json.loads((out / "config.json").read_text())["layer_store_identity"]["created"]
    decode = configure(DecodeConfig, store=store, model=str(out / "model"), out=str(tmp_path / "dec"))
    with pytest.raises(DecodeError, match="a model the finetune job trained from the store's.*babelgrid encode"):
        run_decode(decode)
    report = run_verify(configure(VerifyConfig, location=str(out)))
    assert report.exit_code == 0 and "babelgrid_finetuned_from" not in report.report(), report.report()


def wrote_paths(stdout: str, out: pathlib.Path) -> set[str]:
    """The names of the closing ``wrote OUT/a, b/, c`` line, each checked to exist under ``out``."""
    (line,) = [x for x in stdout.splitlines() if x.startswith("wrote ")]
    first, *rest = line.removeprefix(f"wrote {out}/").split(", ")
    names = [first, *rest]
    missing = [n for n in names if not (out / n).exists()]
    assert not missing, f"{line!r} names {missing}, which do not exist"
    return {n.rstrip("/") for n in names}


def damage(path: pathlib.Path, n: int = 64) -> None:
    """XOR ``n`` bytes in the middle of ``path`` (issue 25, reproduction 4)."""
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data) // 2 + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def largest_file(folder: pathlib.Path) -> pathlib.Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def finished_copy(run_out, tmp_path) -> pathlib.Path:
    """The finished run's folder without its model: a rerun resumes from its checkpoints."""
    out = tmp_path / "copy"
    shutil.copytree(run_out[0], out)
    shutil.rmtree(out / "model")
    return out


def test_damaged_checkpoint_falls_back_to_the_previous_bitwise(store, tiny_model_dir, tiny_whisper, run_out, tmp_path,
                                                               caplog):  # fmt: skip
    from safetensors.numpy import load_file

    out = finished_copy(run_out, tmp_path)
    data = largest_file(out / "checkpoints" / "6" / C.STATE)
    damage(data)
    with caplog.at_level(logging.WARNING, logger=C.__name__):
        summary = run_finetune(config(store, out, tiny_model_dir), model=tiny_whisper)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == C.__name__]
    assert str(out / "checkpoints" / "6") in warning and data.name in warning and "Resuming from step 4" in warning
    assert summary.resumed_from == 4 and summary.steps_done == 2
    assert (out / "checkpoints" / "6.damaged").is_dir() and C.verify(out / "checkpoints" / "6") is None
    a = load_file(str(run_out[0] / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert (out / "metrics.csv").read_bytes() == (run_out[0] / "metrics.csv").read_bytes()


def test_damaged_checkpoint_without_an_earlier_one_stops(store, tiny_model_dir, tiny_whisper, run_out, tmp_path):
    out = finished_copy(run_out, tmp_path)
    shutil.rmtree(out / "checkpoints" / "4")
    damage(largest_file(out / "checkpoints" / "6" / C.STATE))
    with pytest.raises(C.CorruptCheckpointError, match="rm -r") as e:
        run_finetune(config(store, out, tiny_model_dir), model=tiny_whisper)
    assert str(out / "checkpoints" / "6") in str(e.value) and not (out / "model").exists()


def test_noexport_writes_and_lists_no_model(store, tiny_model_dir, tiny_whisper, tmp_path):
    # run_out's steps, whose schedule (total steps) is a constant of the compiled step: no second compile
    out = tmp_path / "noexport"
    summary = run_finetune(config(store, out, tiny_model_dir, checkpoint_every=6, export=False), model=tiny_whisper)
    names = wrote_paths(summary.wrote(out), out)
    assert "model" not in names and not (out / "model").exists()
    assert {"metrics.csv", "checkpoints", "loss.png", "bleu.png"} <= names


def test_export_is_checked_before_training(store, tiny_model_dir, tiny_whisper, tmp_path, monkeypatch):
    def refused(out, match, model=tiny_whisper):
        with pytest.raises(FinetuneError, match=match) as e:
            run_finetune(config(store, out, tiny_model_dir), model=model)
        assert "--noexport" in str(e.value)
        assert not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()  # nothing trained

    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "model").write_text("not a folder")
    refused(tmp_path / "file", "is a file")
    ckpt = dataclasses.replace(tiny_whisper.checkpoint, tokenizer_file=tmp_path / "gone" / "tokenizer.json")
    refused(tmp_path / "tok", "tokenizer file", dataclasses.replace(tiny_whisper, checkpoint=ckpt))
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)  # as on an install without safetensors
    refused(tmp_path / "nosafetensors", "pip install safetensors")
