"""OWSM-CTC v4 against ESPnet 202611's own modules and best path, on real FLEURS clips and a random model ESPnet builds
(``owsm_ctc_reference``: v4's widths, every kind of block, 4 blocks deep).

Bounds, in float32, as tests/models/owsm/test_owsm_parity.py states them: every layer within ``1e-5 * max|espnet|``
(the same float32 operations in other orders; the interior heads' softmax and conditioning add one more width-vocab
and one vocab-width product per head, inside the bound), CTC posteriors within 1e-5 absolute (probabilities in
0..1), greedy tokens equal. Both sides are fed the same features (ours; the frontend is test_owsm_parity's).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.owsm import owsm_ctc_reference as cref
from tests.models.owsm import owsm_reference as ref

REL = 1e-5


@pytest.fixture(scope="module")
def ctc(tmp_path_factory, fleurs_dir):
    from engine.models.owsm.loaded import load_owsm

    root = cref.write_model(tmp_path_factory.mktemp("owsm-ctc"), fleurs_dir)
    ours = load_owsm(root)
    clips = ref.real_clips(fleurs_dir)
    features, valid = ours.features(clips)
    return dict(root=root, s2t=cref.speech2text(root), ours=ours, clips=clips, features=features, valid=valid)


def _close(ours, theirs, what, rel=REL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    err, peak = np.abs(ours - theirs).max(), np.abs(theirs).max()
    assert err <= rel * peak, f"{what}: max error {err:.3g} > {rel} x peak {peak:.3g}"


def _espnet(s2t, features: np.ndarray, lang: str, task: str):
    """ESPnet's encoder on ``features`` f32[1, frame, mel] with prefix ``lang task`` and prompt ``<na>``: every layer
    (hooks on ``embed`` and each block: the block's output, before its conditioning), the interior outputs and the
    final output, as ``ESPnetS2TCTCModel.encode`` computes them after its frontend."""
    model = s2t.s2t_model
    enc = model.encoder
    layers = []
    hooks = [enc.embed.register_forward_hook(lambda m, a, out: layers.append(out[0]))]
    hooks += [b.register_forward_hook(lambda m, a, out: layers.append(out[0])) for b in enc.encoders]
    tid = s2t.converter.token2id
    prefix = torch.tensor([[tid[lang], tid[task]]])
    prompt = torch.tensor([[tid["<na>"]]])
    feats = torch.from_numpy(np.ascontiguousarray(features))
    try:
        with torch.no_grad():
            memory, _, _ = model.prompt_encoder(model.pos_enc(model.embed(prompt)), torch.tensor([1]))
            memory, valid = model.prompt_proj(memory), torch.ones(1, 1, 1, dtype=torch.bool)
            prefix = model.embed_proj(model.embed(prefix))
            (out, interior), _, _ = enc(feats, torch.tensor([feats.shape[1]]), ctc=model.ctc, prefix_embeds=prefix,
                                        memory=memory, memory_mask=valid)  # fmt: skip
    finally:
        for h in hooks:
            h.remove()
    return [x[0].numpy() for x in (*layers, out)], [(i, h[0]) for i, h in interior]


# (clip, language, task): a told language with the task the interior heads condition (ASR), and no language with a
# task they do not (ST). Each on its own clip, one window each: both clips ran both prefixes until 2026-11-27, the same
# programs on other features (every layer within the bound every time).
PREFIXES = [(0, "<eng>", "<asr>"), (1, "<nolang>", "<st_deu>")]


@pytest.mark.parametrize("clip,lang,task", PREFIXES)
def test_every_layer_and_the_interior_ctc_posteriors_equal_espnet(ctc, clip, lang, task):
    ours, s2t = ctc["ours"], ctc["s2t"]
    c = ours.config
    assert c.subsampling == 8 and c.n_mels == cref.N_MELS and c.ctc.interctc_layers == cref.INTERIOR
    assert c.ctc.cross_attention == (1, 3) and c.ctc.asr_only == tuple(cref.ASR_ONLY)
    features = ctc["features"][clip : clip + 1]
    states = np.asarray(ours.ctc_forward(features, lang, task))  # one window: the best-path test's program
    assert states.shape == (c.n_layer + 2, 1, 2 + c.n_frames, c.width)
    theirs, interior = _espnet(s2t, features, lang, task)
    assert len(theirs) == c.n_layer + 2
    for layer, t in enumerate(theirs):
        _close(states[layer, 0], t, f"clip {clip} layer {layer}")
    assert [layer for layer, _ in interior] == list(cref.INTERIOR)
    for layer, h in interior:  # the model's own interior heads, at their layers, through no after_norm
        mine = np.asarray(torch.softmax(torch.from_numpy(np.asarray(ours.ctc_logits(states[:, 0], layer, False))), -1))
        with torch.no_grad():
            want = s2t.s2t_model.ctc.softmax(h[None])[0].numpy()
        assert np.abs(mine - want).max() <= REL, (clip, layer)


def test_the_store_encoding_is_the_nolang_asr_prefix_without_its_positions(ctc):
    ours = ctc["ours"]
    stored = np.asarray(ours.encode(ctc["features"][:1]))
    full = np.asarray(ours.ctc_forward(ctc["features"][:1], "<nolang>", "<asr>"))
    np.testing.assert_array_equal(stored, full[:, :, 2:])


# task -> the clips decoded with it: ASR on the first and last, ST on the middle one. Every clip ran both tasks until
# 2026-11-27: the same programs on other prefixes (the same tokens as ESPnet's every time); a window costs both sides
# the 1024-channel conv2d8 stem.
BEST_PATHS = {"<asr>": (0, 2), "<st_eng>": (1,)}


@pytest.mark.parametrize("task", list(BEST_PATHS))
def test_greedy_tokens_equal_espnet_best_path(ctc, task):
    ours, s2t = ctc["ours"], ctc["s2t"]
    n = ref.SECONDS * ref.SAMPLE_RATE
    for i in BEST_PATHS[task]:
        clip, lang = ctc["clips"][i], ref.CLIPS[i][1]
        window = np.pad(clip[:n], (0, max(0, n - len(clip))))  # best_path encodes what it is given: the window
        theirs = s2t.best_path(window, lang_sym=lang, task_sym=task)[0][2]
        states = ours.ctc_forward(ctc["features"][i : i + 1], lang, task)
        mine = ours.best_path(ours.ctc_logits(states, ours.config.n_layer + 1))[0]
        assert mine == list(theirs), (i, task)
