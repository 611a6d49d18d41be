"""Value zeroing (``engine.models.common.value_zeroing``) against the reference code run on the same weights.

The reference is hmohebbi/ContextMixingASR's ``scoring/valueZeroing.py`` (encoder part) with its ``utils.py``
``get_encoder_word_boundaries``, ported below line for line onto transformers' PyTorch ``WhisperEncoderLayer`` and
``Wav2Vec2EncoderLayer(StableLayerNorm)``. The script itself cannot be imported (it parses arguments and loads its
data set at import), and its ``modeling/customized_modeling_*.py`` copies of transformers 4's layers do not import
under transformers 5; their only change to the attention is ``value_states[:, s:e+1] = 0`` after the value
projection, which a forward hook on ``v_proj`` zeroing the rows ``s..e`` of its output does here (every head's value
vectors of those frames, bias included).

Random weights from small configs (perturbed as the family parity tests perturb them), float32 on both sides. The
compared quantity is the row-normalised mixing matrix of every block. Tolerance: 2e-5 absolute on entries in
[0, 1] (a row sums to 1). Each distance is ``1 - cos`` of two nearly parallel float32 vectors, whose absolute error
is a few float32 ulps of 1 (1e-7 .. 1e-6) whatever the distance's size; divided by a row's sum of mean distances
(0.05 .. 1 here) an entry moves by about 1e-6. The per-frame distances are compared too, at 2e-6 absolute.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import transformers
from sklearn.metrics.pairwise import cosine_distances

from engine.errors import ShapeError
from engine.models.common.value_zeroing import mixing_matrix, word_spans
from engine.models.family import load_encoder
from tests.models.wav2vec2 import w2v_reference as w2v_ref

ATOL_DISTANCE = 2e-6


# -- the reference, ported (hmohebbi/ContextMixingASR) ---------------------------------------------------------------


def get_encoder_word_boundaries(start, end, total_enc_frame, total_audio_time):  # utils.py, verbatim
    start = total_enc_frame * start / total_audio_time
    end = total_enc_frame * end / total_audio_time
    start = np.ceil(start).astype("int")
    end = np.ceil(end).astype("int")
    return start, end


@contextlib.contextmanager
def value_zeroing(v_proj: torch.nn.Module, index: tuple[int, int]):
    """customized_modeling_*.py's ``value_states[:, index[0]:index[1]+1] = 0`` (value_zeroing_head="all")."""

    def hook(module, args, output):
        output = output.clone()
        output[:, index[0] : index[1] + 1] = 0
        return output

    handle = v_proj.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def reference_encoder_value_zeroing(layers, v_projs, final_norm, hidden_states, intervals, total_audio_time,
                                    dim_aggregator="mean"):  # fmt: skip
    """scoring/valueZeroing.py's "compute scores: encoder" loop (METRIC = 'cosine'): ``hidden_states`` the model's
    ``output_hidden_states`` stacked ``[L + 1, 1, frame, embed]``; returns ``(vz_enc_matrix, distances)``, the latter
    ``[L, word, frame]`` (what the loop computes before aggregating, kept for the test)."""
    original_enc_hidden_states = hidden_states
    encoder_aligned_length = len(intervals)
    total_enc_dimensions = original_enc_hidden_states.shape[2]
    num_enc_layers = len(layers)
    vz_enc_matrix = np.zeros(shape=(num_enc_layers, encoder_aligned_length, encoder_aligned_length))
    all_distances = np.zeros((num_enc_layers, encoder_aligned_length, total_enc_dimensions))
    for l, encoder_layer in enumerate(layers):  # noqa: E741 (the reference's name)
        for t in range(encoder_aligned_length):
            start_j, end_j = get_encoder_word_boundaries(intervals[t]["start"], intervals[t]["end"],
                                                         total_enc_dimensions, total_audio_time)  # fmt: skip
            with torch.no_grad(), value_zeroing(v_projs[l], (start_j, end_j)):
                layer_outputs = encoder_layer(hidden_states=original_enc_hidden_states[l], attention_mask=None)
            # transformers 5's layers return the tensor; 4's (the reference's) a tuple
            alternative_hidden_states = layer_outputs[0] if isinstance(layer_outputs, tuple) else layer_outputs
            if l == num_enc_layers - 1:  # last layer is followed by a layer normalization
                with torch.no_grad():
                    alternative_hidden_states = final_norm(alternative_hidden_states)
            x = alternative_hidden_states.squeeze(0).detach().cpu().numpy()
            y = original_enc_hidden_states[l + 1].squeeze(0).detach().cpu().numpy()
            distances = cosine_distances(x, y).diagonal()
            all_distances[l, t] = distances
            for i in range(encoder_aligned_length):
                start_i, end_i = get_encoder_word_boundaries(intervals[i]["start"], intervals[i]["end"],
                                                             total_enc_dimensions, total_audio_time)  # fmt: skip
                vz_enc_matrix[l, i, t] = (distances[start_i : end_i + 1].max() if dim_aggregator == "max"
                                          else distances[start_i : end_i + 1].mean())  # fmt: skip
    vz_enc_matrix = vz_enc_matrix / np.sum(vz_enc_matrix, axis=-1, keepdims=True)
    return vz_enc_matrix, all_distances


# -- ours ------------------------------------------------------------------------------------------------------------


def ours(encoder, hidden: torch.Tensor, frames: int, intervals, frame_rate: float, aggregate: str = "mean"):
    """(mixing ``[L, word, word]``, distances ``[L, word, frame]``, spans) through the family's
    ``Encoder.value_zeroing``, each block run from the reference's own input (``hidden[l - 1]``, transformers'
    ``hidden_states``: the family parity tests check that our layers equal them), so that the blocks alone are
    compared and no pass of our encoder is compiled."""
    vz = encoder.value_zeroing
    states = hidden[:, 0].numpy()
    spans = word_spans([w["start"] for w in intervals], [w["end"] for w in intervals], frame_rate, frames)
    distances = [vz.distances(layer, states[layer - 1], frames, spans, chunk=3) for layer in range(1, vz.blocks + 1)]
    return np.stack([mixing_matrix(d, spans, aggregate) for d in distances]), np.stack(distances), spans


def check(theirs, mine, intervals, n_frame, total, aggregate="mean"):
    ref_mix, ref_dist = theirs
    mix, dist, spans = mine
    want = [get_encoder_word_boundaries(w["start"], w["end"], n_frame, total) for w in intervals]
    np.testing.assert_array_equal(spans, np.minimum(np.asarray(want), n_frame - 1))
    assert ref_dist.max() > 1e-3  # the zeroing changes the outputs: the comparison is not of zeros
    assert np.abs(dist - ref_dist).max() < ATOL_DISTANCE
    # each aggregated entry moves by at most ATOL_DISTANCE, a row's sum by n times that: normalised, an entry of row
    # i moves by at most (n + 1) ATOL_DISTANCE / S_i, S_i the row's sum before normalising
    reduce = np.max if aggregate == "max" else np.mean
    raw = np.stack([reduce(ref_dist[:, :, s : e + 1], axis=-1) for s, e in spans], axis=1)  # [L, word i, word t]
    bound = (len(spans) + 1) * ATOL_DISTANCE / raw.sum(-1, keepdims=True)
    assert (np.abs(mix - ref_mix) <= bound).all()
    np.testing.assert_allclose(mix.sum(-1), 1.0, atol=1e-12)


# -- Whisper ---------------------------------------------------------------------------------------------------------

N_MELS, N_CTX, WIDTH, HEADS, LAYERS = 80, 50, 64, 4, 2  # 2 blocks: an inner one and the last (final norm)
# seconds at 50 frames/s in a window of N_CTX frames (1 s; the reference's 1500 frames / 30 s is the same rate);
# off the 20 ms grid, so that ceil() is not decided by rounding; words leave the window's end unvoiced (its padding)
WHISPER_WORDS = [(0.013, 0.101), (0.101, 0.257), (0.262, 0.5), (0.55, 0.71), (0.73, 0.93)]


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.WhisperConfig(vocab_size=51865, num_mel_bins=N_MELS, encoder_layers=LAYERS, decoder_layers=1,
                                     d_model=WIDTH, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                                     encoder_ffn_dim=4 * WIDTH, decoder_ffn_dim=4 * WIDTH, max_source_positions=N_CTX,
                                     max_target_positions=40, attn_implementation="eager")  # fmt: skip
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("whisper-vz")
    hf.save_pretrained(folder)
    mel = np.random.default_rng(2).standard_normal((1, N_MELS, 2 * N_CTX)).astype(np.float32)
    return hf, load_encoder(folder), mel


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_whisper_mixing_equals_the_reference(whisper, aggregate):
    hf, encoder, mel = whisper
    intervals = [{"start": s, "end": e} for s, e in WHISPER_WORDS]
    enc = hf.model.encoder
    with torch.no_grad():
        hidden = torch.stack(enc(torch.from_numpy(mel), output_hidden_states=True).hidden_states)
    theirs = reference_encoder_value_zeroing(list(enc.layers), [la.self_attn.v_proj for la in enc.layers],
                                             enc.layer_norm, hidden, intervals, N_CTX / 50, aggregate)  # fmt: skip
    check(theirs, ours(encoder, hidden, N_CTX, intervals, 50.0, aggregate), intervals, N_CTX, N_CTX / 50, aggregate)


# -- wav2vec2 --------------------------------------------------------------------------------------------------------

W2V_SMALL = dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2, conv_dim=(32,) * 7,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)  # fmt: skip
# pre-LN is the reference's own models' layout (XLS-R 53 fine-tuned on French); post-LN is wav2vec2-base's
# (post-LN: one layer, both inner and last, as a post-LN model has no final norm: a second adds no other path)
W2V_LAYOUTS = {"pre-LN": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
               "post-LN": dict(num_hidden_layers=1)}  # fmt: skip
SAMPLES = 8000  # 0.5 s: 24 frames
W2V_WORDS = [(0.013, 0.11), (0.11, 0.203), (0.241, 0.33), (0.36, 0.49)]


@pytest.fixture(scope="module", params=sorted(W2V_LAYOUTS))
def wav2vec2(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"w2v-vz-{request.param}")
    config = transformers.Wav2Vec2Config(**{**W2V_SMALL, **W2V_LAYOUTS[request.param]}, attn_implementation="eager")
    theirs = w2v_ref.build(transformers.Wav2Vec2Model, config, folder, seed=4)
    with torch.no_grad():  # attention outputs as large as the rest, so that zeroing a word moves the outputs
        for layer in theirs.encoder.layers:
            layer.attention.v_proj.weight.mul_(4.0)
            layer.attention.out_proj.weight.mul_(4.0)
    theirs.save_pretrained(folder)
    wave = np.random.default_rng(6).standard_normal(SAMPLES).astype(np.float32) * 0.1
    return request.param, theirs, load_encoder(folder), wave


def test_wav2vec2_mixing_equals_the_reference(wav2vec2):
    """The reference takes the frame rate as frames / seconds of the clip (``total_enc_dimensions /
    total_audio_time``): so does ``word_spans`` here. After the last layer the reference applies
    ``wav2vec2.encoder.layer_norm``, the final norm of pre-LN models, and compares with ``last_hidden_state``.
    Post-LN models have no final norm (their ``encoder.layer_norm`` normalises the first layer's input, and their
    ``last_hidden_state`` is the last layer's raw output): the reference's script would normalise the zeroed output
    alone there, comparing a normed vector with a raw one; ours compares like with like, and the port is given no
    final norm for them (docs/value_zeroing.md)."""
    layout, model, encoder, wave = wav2vec2
    inputs, valid = encoder.windows(wave, "window")
    with torch.no_grad():
        out = model(torch.from_numpy(inputs[0])[None], output_hidden_states=True)
    # the reference ran on transformers 4, whose last hidden_states entry of a pre-LN model is the final norm's output
    # (last_hidden_state); transformers 5 records the last layer's raw output there
    hidden = torch.stack([*out.hidden_states[:-1], out.last_hidden_state])
    n_frame = hidden.shape[2]
    assert n_frame == int(valid[0])
    intervals = [{"start": s, "end": e} for s, e in W2V_WORDS]
    layers = list(model.encoder.layers)
    final = model.encoder.layer_norm if layout == "pre-LN" else torch.nn.Identity()
    theirs = reference_encoder_value_zeroing(layers, [la.attention.v_proj for la in layers], final, hidden, intervals,
                                             SAMPLES / 16000)  # fmt: skip
    mine = ours(encoder, hidden, int(valid[0]), intervals, n_frame / (SAMPLES / 16000))
    check(theirs, mine, intervals, n_frame, SAMPLES / 16000)
    if layout == "pre-LN":  # as the job runs it: the window collated to a whole second, the keys past it masked
        vz = encoder.value_zeroing
        padded = encoder.collate(inputs, 1)[0].shape[1] // 320 - 1  # frames of the padded row (25 ms, 20 ms hop)
        assert padded > n_frame
        states = np.zeros((hidden.shape[0], padded, hidden.shape[-1]), np.float32)
        states[:, :n_frame] = hidden[:, 0].numpy()
        states[:, n_frame:] = 3.0  # what the padding holds must not matter
        spans = mine[2]
        dist = np.stack([vz.distances(la, states[la - 1], n_frame, spans, chunk=3) for la in range(1, vz.blocks + 1)])
        assert np.abs(dist - theirs[1]).max() < ATOL_DISTANCE


def test_spans_and_rows():
    spans = word_spans([0.0, 0.013, 0.5], [0.013, 0.5, 0.99], 50.0, 40)
    np.testing.assert_array_equal(spans, [[0, 1], [1, 25], [25, 39]])  # inclusive; shared edges; the end cut
    with pytest.raises(ShapeError, match="no frame"):
        word_spans([0.9], [0.95], 50.0, 40)
    d = np.array([[0.2, 0.2, 0.0, 0.0], [0.0, 0.1, 0.3, 0.3], [0.0, 0.0, 0.0, 0.0]])  # row t: word t zeroed
    got = mixing_matrix(d, np.array([[0, 1], [2, 3], [3, 3]]))  # mean over word i's frames, then rows sum to 1
    np.testing.assert_allclose(got, [[0.8, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert not mixing_matrix(np.zeros((2, 4)), np.array([[0, 1], [2, 3]])).any()  # no change: zeros, not NaN
