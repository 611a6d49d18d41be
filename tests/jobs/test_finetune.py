"""The finetune job end to end on a tiny random model and a synthetic store: outputs, export round trip, resume after
SIGKILL, refusals."""

import csv
import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.figures import png_title
from engine.pipelines.finetune.config import PADDING, FinetuneConfig
from engine.pipelines.finetune.data import FinetuneError
from engine.pipelines.finetune.run import METRIC_FIELDS, run_finetune
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.schema import StoreInfo, UtteranceRow
from tests.conftest import TINY_DIMS

REPO = pathlib.Path(__file__).resolve().parents[2]
N = 10
TEXTS = {"en": [f"the dog number {i} barks" for i in range(N)], "de": [f"der hund nummer {i} bellt" for i in range(N)]}


def make_store(root: pathlib.Path, layers=(3,), langs=("en", "de")) -> str:
    url = f"file://{root}"
    info = StoreInfo("tiny-random", "0" * 64, TINY_DIMS, layers, "float32")
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
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("ftstore") / "store")


def config(store, out, model, **kw):
    base = dict(store=store, out=str(out), model=str(model), source_langs=("en",), target_lang="de", steps=6,
                batch_size=4, learning_rate=1e-3, checkpoint_every=2, log_every=2, eval_langs=("en",), max_eval=2,
                held_out=0.2)  # fmt: skip
    return configure(FinetuneConfig, **{**base, **kw})


@pytest.fixture(scope="module")
def run_out(store, tiny_model_dir, tiny_whisper, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "out"
    summary = run_finetune(config(store, out, tiny_model_dir), whisper=tiny_whisper)
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
    assert json.loads((out / "config.json").read_text())["padding"] == PADDING == "silence_fill_approximate"
    assert f"padding: {PADDING}" in summary.report()


def test_export_round_trip(run_out):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
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


def test_resume_after_sigkill_is_bitwise(store, tiny_model_dir, run_out, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "jobs.finetune", "--store", store, "--out", str(out), "--model", str(tiny_model_dir),
            "--source_langs", "en", "--target_lang", "de", "--steps", "6", "--batch_size", "4", "--learning_rate",
            "1e-3", "--checkpoint_every", "2", "--log_every", "2", "--eval_langs", "en", "--max_eval", "2"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "2").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed = int(again.stdout.split("resumed from ")[1].split(")")[0])
    assert 0 < resumed < 6, again.stdout
    a = load_file(str(run_out[0] / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_refusals(store, tiny_model_dir, tiny_whisper, run_out, tmp_path):
    with pytest.raises(FinetuneError, match="learning_rate"):
        run_finetune(config(store, run_out[0], tiny_model_dir, learning_rate=2e-3), whisper=tiny_whisper)
    other = tmp_path / "t.tsv"
    other.write_text("x1\tein satz\nx2\tnoch einer\n")
    with pytest.raises(FinetuneError, match="no recording of 'en'"):
        run_finetune(config(store, tmp_path / "a", tiny_model_dir, targets=str(other)), whisper=tiny_whisper)
    with pytest.raises(FinetuneError, match="no language 'fr'"):
        run_finetune(config(store, tmp_path / "b", tiny_model_dir, target_lang="fr"), whisper=tiny_whisper)
    empty = tmp_path / "e.tsv"
    empty.write_text("id\ttext\ns1\t \n")
    with pytest.raises(FinetuneError, match="no texts"):
        run_finetune(config(store, tmp_path / "c", tiny_model_dir, targets=str(empty)), whisper=tiny_whisper)
    low = make_store(tmp_path / "low", layers=(0, 2))
    with pytest.raises(FinetuneError, match="L\\+1"):
        run_finetune(config(low, tmp_path / "d", tiny_model_dir), whisper=tiny_whisper)
