"""OWSM's FLOP model (``engine/models/owsm/cost.py``) against ESPnet's own encoder, and ``encode --plan`` on an OWSM.

The random OWSM of ``owsm_reference`` (real base widths, 2 blocks, a 10 s window): torch's ``FlopCounterMode``
counts ESPnet's encoder forward on the normalised features of one full window, and ``cost`` equals it exactly (both
count the matmuls and convolutions only). The plan job on real clips (two languages, one clip of 10.2 s spanning two
windows) prints five windows, each costing the full window.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.models.owsm.encoder import load
from tests.jobs.conftest import _run_job
from tests.models.owsm import owsm_reference as ref

torch = pytest.importorskip("torch")
flop_counter = pytest.importorskip("torch.utils.flop_counter")

WINDOW = ref.SECONDS * ref.SAMPLE_RATE
# Two languages x two ids; fr "b" (fleurs-fr-000, 10.2 s) spans two 10 s windows: five windows in all.
CLIPS = {"fr": ("fleurs-fr-005", "fleurs-fr-000"), "pt": ("fleurs-pt-002", "fleurs-pt-007")}


@pytest.fixture(scope="module")
def model(owsm_v31_dir):
    return owsm_v31_dir  # the session's (conftest.py)


def espnet_window_flops(s2t) -> int:
    """FLOPs torch counts for ESPnet's encoder on one full window (its frontend and normalisation not counted)."""
    speech = torch.from_numpy(np.random.default_rng(0).standard_normal(WINDOW).astype(np.float32) * 0.1)[None]
    with torch.no_grad():
        feats, flen = s2t.normalize(*s2t._extract_feats(speech, torch.tensor([WINDOW])))
        with flop_counter.FlopCounterMode(display=False) as counter:
            s2t.encoder(feats, flen)
    return counter.get_total_flops()


def test_cost_equals_espnet_flops_on_a_full_window(model):
    encoder = load(model)
    cost, s2t = encoder.cost(WINDOW), ref.speech2text(model, 1).s2t_model
    assert cost.flops == espnet_window_flops(s2t)
    assert cost.frames == encoder.loaded.config.n_frames and cost.n_layers == 2
    assert encoder.cost(1600) == cost  # padded to the full window: a short window costs the same
    assert cost.params == sum(p.numel() for p in s2t.encoder.parameters())
    with pytest.raises(ValueError, match="a window holds"):
        encoder.cost(WINDOW + 1)


def test_encode_plan_counts_full_windows(model, fleurs_dir, tmp_path):
    clips = tmp_path / "clips"
    for lang, stems in CLIPS.items():
        (clips / lang).mkdir(parents=True)
        for uid, stem in zip("ab", stems, strict=True):
            (clips / lang / f"{uid}.ogg").symlink_to(fleurs_dir / f"{stem}.ogg")
    out = tmp_path / "never"
    proc = _run_job("encode", "--model", str(model), "--dataset", f"folder:{clips}", "--out", str(out), "--plan")
    assert not out.exists()
    text = proc.stdout
    assert "(owsm, L=2, d=768," in text and "utterances: 4" in text, text
    assert "windows: 5 of at most 10 s, each padded to the model's full 10 s window" in text, text
    flops = load(model).cost(WINDOW).flops
    assert f"encoder FLOPs: {round(5 * flops):,} (" in text and f"one padded 10 s window: {round(flops):,})" in text, (
        text
    )
