"""The finetune job on OWSM and Canary stores, as on Whisper's (tests/jobs/test_finetune.py): a random model of each,
three FLEURS clips per language (en, de; ids shared) encoded by ``jobs.encode``, two steps en -> de with EWC, the
evaluation before and after, checkpoints, the export read back by the family's loader, and a rerun that resumes
from the last checkpoint. The step's arithmetic is checked against ESPnet and transformers in
tests/models/owsm/test_owsm_train.py and tests/models/fastconformer/test_canary_train.py."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from engine.models.family import FAMILIES
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.finetune.config import FinetuneConfig
from engine.pipelines.finetune.run import run_finetune
from engine.runtime.options import configure

LANGS = ("en", "de")
IDS = ("u0", "u1", "u2")
STEPS = 2


def _clips(fleurs_dir, root):
    for lang in LANGS:
        (root / lang).mkdir(parents=True)
        for i, uid in enumerate(IDS):
            for ext in (".ogg", ".txt"):
                (root / lang / f"{uid}{ext}").symlink_to(fleurs_dir / f"fleurs-{lang}-00{i}{ext}")
    return root


def _owsm(fleurs_dir, root):
    from tests.models.owsm import owsm_reference as ref

    return ref.write_model(root / "model", fleurs_dir, narrow=True), {"long_audio": "truncate"}  # its window is 10 s


def _canary(fleurs_dir, root):
    from tests.jobs.test_decode_canary import DECODER, ENCODER, PIECES
    from tests.models.fastconformer import canary_folder as cf

    folder = root / "model"
    folder.mkdir()
    cf.write_tokenizer(folder, fleurs_dir, PIECES)
    cf.canary(ENCODER, DECODER, PIECES).save_pretrained(folder)
    return folder, {}


MODELS = {"owsm": _owsm, "fastconformer": _canary}


@pytest.fixture(scope="module", params=sorted(MODELS))
def encoded(request, fleurs_dir, tmp_path_factory):
    """(family, model folder, store): the clips encoded by the encode job's library call, in this process (the job's
    flags on these families' folders: test_owsm.py, test_fastconformer_jobs.py)."""
    family = request.param
    root = tmp_path_factory.mktemp(f"finetune-{family}")
    model, settings = MODELS[family](fleurs_dir, root)
    clips, store = _clips(fleurs_dir, root / "clips"), root / "store"
    run_encode(configure(EncodeConfig, model=str(model), dataset=f"folder:{clips}", out=str(store), progress=False,
                         **settings))  # fmt: skip
    return family, model, store


def _config(store, out, model):
    return configure(FinetuneConfig, store=str(store), out=str(out), model=str(model), source_langs=("en",),
                     target_lang="de", steps=STEPS, batch_size=2, learning_rate=1e-3, checkpoint_every=1, log_every=1,
                     eval_langs=("en",), max_eval=1, held_out=0.34, ewc_lambda=1.0, ewc_examples=1,
                     progress=False)  # fmt: skip


def _rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_trains_evaluates_exports_and_resumes(encoded, tmp_path):
    family, model, store = encoded
    trainer_of = FAMILIES[family].trainer
    assert trainer_of is not None
    out = tmp_path / "out"
    summary = run_finetune(_config(store, out, model))
    assert summary.steps_done == STEPS and summary.n_train == 2 and summary.n_held_out == 1, summary.report()
    rows = _rows(out)
    losses = [float(r["value"]) for r in rows if r["metric"] == "loss"]
    assert [int(r["step"]) for r in rows if r["metric"] == "loss"] == [1, 2] and all(map(math.isfinite, losses))
    assert all(float(r["value"]) >= 0 for r in rows if r["metric"] == "ewc_penalty")
    evals = {(int(r["step"]), r["task"], r["target_lang"], r["metric"]) for r in rows if r["split"] == "held_out"}
    assert evals == {(s, t, y, m) for s in (0, STEPS) for t, y in (("transcribe", "de"), ("translate", "en"))
                     for m in ("bleu", "chrf")}  # fmt: skip
    trainer = trainer_of(str(model))
    assert json.loads((out / "config.json").read_text())["padding"] == trainer.padding
    assert f"padding: {trainer.padding}" in summary.report()

    # the export is the tuned model, read back by the family's own loader
    tuned = trainer_of(str(out / "model"))
    _, before = trainer.split()
    _, after = tuned.split()
    assert set(before) == set(after)
    assert any(not np.array_equal(np.asarray(before[k]), np.asarray(after[k])) for k in before)
    assert tuned.store_dims == trainer.store_dims

    again = run_finetune(_config(store, out, model))
    assert again.resumed_from == STEPS and again.steps_done == 0
    assert _rows(out) == rows
