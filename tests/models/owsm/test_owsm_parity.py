"""OWSM v3.1, v4 and POWSM against ESPnet's own PyTorch modules and search, on real FLEURS clips and random models
ESPnet builds.

The frontend, encoder and logits tests run on v3.1 (``conv2d``, 80 mels), v4 (``conv2d8``, 128 mels) and POWSM (a 20 s
window, phone recognition ``<pr>``): ``any_owsm``; the searches (greedy and beam) on v3.1 and POWSM
(``decoding_owsm``): v4's decoder, token list and prompts are v3.1's, so its searches ran v3.1's programs on
another encoder's output (until 2026-11-27, the same tokens as ESPnet's every time), and its encoder and the logits
the searches read are checked by the tests before them; the head ablation and its gradient, which read only the blocks
both share, run on v3.1 (``owsm``).

The model (``owsm_reference``): real base widths, 2 encoder and 2 decoder blocks, a 10 s window, saved in ESPnet's
published layout and loaded by both sides from those files (ours: ``load_owsm``; ESPnet's: ``Speech2Text``).

Bounds, in float32: every compared array is checked as ``max|ours - espnet| <= 1e-5 * max|espnet|`` per layer (or
per array). Both sides compute the same float32 operations in different orders (XLA's and MKL's GEMM and convolution
blockings, our float64 STFT against torch's float32 one), so they differ by float32 rounding accumulated over a few
reductions of width <= 3072: a few 1e-7 of the peak, well inside 1e-5. A misread weight or a wrong norm, activation or
position is O(1e-2) of the peak or more. Greedy tokens must be equal, token for token.

The head mask (``head_mask``, an ablation of one head) is checked against ESPnet's encoder with a pre-hook on each
block's ``attn.linear_out`` scaling that head's slice, within the same bound, and gradient importance against torch
autograd through the same hooks within 1e-4 of the largest gradient.

The frontend's bound is 5e-5 of the peak (measured: 1.1e-5): torch's float32 STFT carries an error of float32 epsilon
times the frame's strongest bin, and the log turns it, on the weakest mel bins (1e-6 of the strongest), into an
absolute error near 1e-5 of the features' peak; ours is float64. The encoder tests feed both sides the same features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from tests.models.owsm import owsm_reference as ref

REL = 1e-5
FRONTEND_REL = 5e-5  # see the module docstring: the log of the weakest mel bins
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def built(request, tmp_path_factory, fleurs_dir):
    """variant -> the model, ESPnet's Speech2Text on it, our features and states of the clips; each built once (v3.1:
    the session's, ``owsm_v31_dir``)."""
    from engine.models.owsm.loaded import load_owsm

    cache = {}

    def build(variant):
        if variant not in cache:
            if variant == "v3.1":
                root = request.getfixturevalue("owsm_v31_dir")
            else:
                root = ref.write_model(tmp_path_factory.mktemp(f"owsm-{variant}"), fleurs_dir, variant=variant)
            clips = ref.real_clips(fleurs_dir)
            ours = load_owsm(root)
            features, valid = ours.features(clips)
            s2t, encoded = ref.speech2text(root, MAX_TOKENS), {}
            ref.share_encoder_outputs(s2t.s2t_model, encoded)  # the searches encode each clip once
            cache[variant] = dict(root=root, clips=clips, s2t=s2t, ours=ours, features=features, valid=valid,
                                  states=ours.encode(features), variant=variant, encoded=encoded)  # fmt: skip
        return cache[variant]

    return build


@pytest.fixture(scope="module", params=list(ref.VARIANTS))
def any_owsm(request, built):
    return built(request.param)


@pytest.fixture(scope="module", params=["v3.1", "powsm"])
def decoding_owsm(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def owsm(built):
    return built("v3.1")


def _close(ours, theirs, what, rel=REL):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    peak = np.abs(theirs).max()
    err = np.abs(ours - theirs).max()
    assert err <= rel * peak, f"{what}: max error {err:.3g} > {rel} x peak {peak:.3g}"


def _espnet_window(s2t, clip):
    """The clip padded to the window as Speech2Text.__call__ pads it, and its full length."""
    n = int(s2t.preprocessor_conf["fs"] * s2t.preprocessor_conf["speech_length"])
    speech = torch.nn.functional.pad(torch.from_numpy(clip[:n]), (0, max(0, n - len(clip))))[None]
    return speech, torch.tensor([n])


def test_frontend_equals_espnet(any_owsm):
    owsm = any_owsm
    model = owsm["s2t"].s2t_model
    for i, clip in enumerate(owsm["clips"]):
        speech, lengths = _espnet_window(owsm["s2t"], clip)
        with torch.no_grad():
            feats, _ = model._extract_feats(speech, lengths)
            feats, _ = model.normalize(feats, lengths)
        _close(owsm["features"][i], feats[0].numpy(), f"clip {i} features", rel=FRONTEND_REL)
    seconds = ref.VARIANTS[owsm["variant"]]["seconds"]
    assert owsm["features"].shape[1] == 1 + seconds * ref.SAMPLE_RATE // 160  # centred 10 ms frames of the window


def test_every_encoder_layer_equals_espnet(any_owsm):
    owsm = any_owsm
    s2t, ours = owsm["s2t"], owsm["ours"]
    enc = s2t.s2t_model.encoder
    states = np.asarray(owsm["states"])
    n_layer = ours.config.n_layer
    assert states.shape == (n_layer + 2, len(owsm["clips"]), ours.config.n_frames, 768)
    variant = ref.VARIANTS[owsm["variant"]]
    convs = {"conv2d": 2, "conv2d8": 3}[variant["input_layer"]]
    assert ours.config.n_frames == subsampled(1 + variant["seconds"] * 100, convs)  # 40 ms (conv2d), 80 ms (conv2d8)
    assert ours.config.frontend.speech_seconds == variant["seconds"]
    assert owsm["features"].shape[-1] == ref.VARIANTS[owsm["variant"]]["n_mels"]
    for i in range(len(owsm["clips"])):
        with torch.no_grad():
            theirs = espnet_layers(enc, owsm["features"][i : i + 1])
        assert len(theirs) == n_layer + 2
        for layer, t in enumerate(theirs):
            _close(states[layer, i], t[0].numpy(), f"clip {i} layer {layer}")
    clip_frames = [len(c) // 160 + 1 for c in owsm["clips"]]
    expect = [min(ours.config.n_frames, subsampled(f, convs)) for f in clip_frames]
    assert owsm["valid"].tolist() == expect


def subsampled(n: int, convs: int) -> int:
    """Frames after ``convs`` valid 3-tap stride-2 convolutions, as torch's Conv2d counts them."""
    for _ in range(convs):
        n = (n - 3) // 2 + 1
    return n


def test_decoder_logits_and_ctc_equal_espnet(any_owsm):
    owsm = any_owsm
    s2t, ours = owsm["s2t"], owsm["ours"]
    model = s2t.s2t_model
    memory = np.asarray(owsm["states"][-1])
    rng = np.random.default_rng(0)
    from engine.models.owsm.decoder import prompt

    tokens = np.array(
        [prompt(ours.config, lang, "asr") + list(rng.integers(13, ours.config.n_vocab - 3, 6)) for _, lang in ref.CLIPS]
    )
    ours_logits = ours.decoder.logits(tokens, memory)
    with torch.no_grad():
        theirs, _ = model.decoder(
            torch.from_numpy(memory),
            torch.full((len(tokens),), memory.shape[1]),
            torch.from_numpy(tokens),
            torch.full((len(tokens),), tokens.shape[1]),
        )
        ctc = model.ctc.ctc_lo(torch.from_numpy(memory))
    _close(ours_logits, theirs.numpy(), "decoder logits")
    _close(ours.ctc_logits(owsm["states"], ours.config.n_layer + 1), ctc.numpy(), "CTC logits")


def test_greedy_tokens_equal_espnet_search(decoding_owsm):
    owsm = decoding_owsm
    s2t, ours = owsm["s2t"], owsm["ours"]
    memory = owsm["states"][-1]
    for i, (clip, (_, lang)) in enumerate(zip(owsm["clips"], ref.CLIPS, strict=True)):
        # <asr> and <st_eng>; POWSM's <pr> (its <asr> is v3.1's prompt on the same decoder code)
        for task in ("<pr>",) if owsm["variant"] == "powsm" else ("<asr>", "<st_eng>"):
            hyp = s2t(clip, lang_sym=lang, task_sym=task)[0][4]
            theirs = hyp.yseq.tolist()[4:]  # after <sos> <lang> <task> <notimestamps>
            eos = ours.config.token_id("<eos>")
            # ESPnet appends <eos> after MAX_TOKENS tokens when none came; an <eos> it chose ends the list too.
            theirs = theirs[:-1] if theirs[-1] == eos else theirs
            tokens, n = ours.greedy(memory[i : i + 1], lang, task, max_tokens=MAX_TOKENS)
            assert np.asarray(tokens)[0, : int(n[0])].tolist() == theirs, (i, task)


BEAM = 3


def _espnet_tokens(hyp, eos: int) -> list[int]:
    """A Speech2Text hypothesis' tokens after ``<sos> <lang> <task> <notimestamps>``, up to its first ``<eos>``."""
    tokens = hyp.yseq.tolist()[4:]
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def test_beam_search_equals_espnet_beam_search(decoding_owsm):
    """ESPnet's BatchBeamSearch at beam 3: the same best hypothesis, token for token, and its score within 1e-5.

    v3.1's random decoder ends some hypotheses early and runs others to the length limit (asserted, so that both ways
    out of the search stay covered). ASR only: each ESPnet call costs about 2 s of CPU, and tests/jobs/test_owsm.py
    checks the beam's ASR and ST tokens through the decode job."""
    owsm = decoding_owsm
    s2t, ours = ref.speech2text(owsm["root"], MAX_TOKENS, beam_size=BEAM), owsm["ours"]
    ref.share_encoder_outputs(s2t.s2t_model, owsm["encoded"])  # the greedy test's encoder outputs, same weights
    memory, eos = owsm["states"][-1], ours.config.token_id("<eos>")
    languages = [lang for _, lang in ref.CLIPS]
    lengths = []
    for task in ("<pr>",) if owsm["variant"] == "powsm" else ("<asr>",):  # POWSM: phone recognition
        tokens, n, score = ours.beam(memory, languages, task, beam=BEAM, max_tokens=MAX_TOKENS)
        for i, clip in enumerate(owsm["clips"]):
            hyp = s2t(clip, lang_sym=languages[i], task_sym=task)[0][4]
            theirs = _espnet_tokens(hyp, eos)
            assert np.asarray(tokens)[i, : int(n[i])].tolist() == theirs, (i, task)
            _close(score[i], hyp.score.numpy(), f"clip {i} {task} beam score")
            lengths.append(len(theirs))
    if owsm["variant"] == "v3.1":
        assert min(lengths) < MAX_TOKENS and max(lengths) == MAX_TOKENS, lengths


def test_language_probs_equal_espnet_speech2language(owsm):
    """ESPnet's Speech2Language: the softmax over the language tokens after ``<sos>``, every language's probability
    within 1e-5, and so the same detected language."""
    s2l, ours = ref.speech2language(owsm["root"]), owsm["ours"]
    ref.share_encoder_outputs(s2l.s2t_model, owsm["encoded"])
    probs = np.asarray(ours.language_probs(owsm["states"][-1]))
    assert probs.shape == (len(owsm["clips"]), len(ref.LANGUAGES))
    detected = ours.detect_language(owsm["states"][-1])
    for i, clip in enumerate(owsm["clips"]):
        theirs = dict(s2l(clip))
        _close(probs[i], np.array([theirs[lang] for lang in ref.LANGUAGES]), f"clip {i} language probabilities")
        assert detected[i] == max(theirs, key=theirs.get), (i, detected[i], theirs)


def espnet_layers(enc, features, mask: torch.Tensor | None = None) -> list:
    """ESPnet's encoder on ``features`` f32[1, frame, mel]: layers 0 (``embed``'s output, by a forward hook: the stem
    is most of the encoder's cost, so it runs once) to L+1; ``mask`` f[L, H]: each head's output scaled by a
    pre-hook on its block's ``attn.linear_out``."""
    layer0 = []
    handles = [enc.embed.register_forward_hook(lambda module, args, out: layer0.append(out[0]))]
    if mask is not None:
        dh = enc.encoders[0].attn.d_k
        assert mask.shape[1] == enc.encoders[0].attn.h
        handles += [
            block.attn.linear_out.register_forward_pre_hook(
                lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),)
            )
            for i, block in enumerate(enc.encoders)
        ]
    feats = torch.from_numpy(np.ascontiguousarray(features))
    try:
        (out, hidden), _, _ = enc(feats, torch.tensor([feats.shape[1]]), return_all_hs=True)
    finally:
        for h in handles:
            h.remove()
    assert len(layer0) == 1
    return [layer0[0], *hidden, out]


def test_one_head_ablated_equals_espnet_with_hooks(owsm):
    """The head mask against ESPnet's encoder with a pre-hook on each block's ``attn.linear_out`` multiplying one
    head's slice of ``MultiHeadedAttention``'s output (the first clip's features on both sides)."""
    enc, ours, features = owsm["s2t"].s2t_model.encoder, owsm["ours"], np.asarray(owsm["features"][:1])
    n_layer, n_head = ours.config.n_layer, ours.config.n_head
    mask = np.ones((n_layer, n_head), np.float32)
    mask[1, 5] = 0.0
    with torch.no_grad():
        want = [t[0].numpy() for t in espnet_layers(enc, features, torch.from_numpy(mask))]
    got = np.asarray(ours.encoder(jnp.asarray(features), head_mask=mask))[:, 0]
    plain = np.asarray(ours.encoder(jnp.asarray(features)))[:, 0]
    for layer, w in enumerate(want):
        peak = np.abs(w).max()
        assert np.abs(got[layer] - w).max() <= REL * peak, f"layer {layer}"
    np.testing.assert_array_equal(got[:2], plain[:2])
    assert np.abs(got[2] - plain[2]).max() > 1e-3 * np.abs(plain[2]).max()


def test_head_gradient_importance_equals_torch_autograd(owsm):
    """d(loss)/d(head mask) at the all-ones mask (Michel et al. 2019) against torch autograd through the same hooks."""
    enc, ours, features = owsm["s2t"].s2t_model.encoder, owsm["ours"], np.asarray(owsm["features"][:1])
    shape = (ours.config.n_layer, ours.config.n_head)

    graphdef, state = nnx.split(ours.encoder)

    def loss(mask, state, x):  # weights and features as arguments: closed over, XLA would fold them as constants
        return jnp.mean(nnx.merge(graphdef, state)(x, head_mask=mask)[-1] ** 2)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.ones(shape, jnp.float32), state, jnp.asarray(features)))
    mask = torch.ones(shape, requires_grad=True)
    (espnet_layers(enc, features, mask)[-1] ** 2).mean().backward()
    want = mask.grad.numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), (got, want)
