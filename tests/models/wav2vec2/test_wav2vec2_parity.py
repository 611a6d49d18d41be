"""The wav2vec2 family against transformers' PyTorch models, every layer, on a ragged batch of real FLEURS clips.

Variants, each at real widths with the layer count cut to 2 (random weights, norms and the positional conv's
weight-norm magnitude perturbed so that a misplaced weight shows; ``w2v_reference``):

- ``Wav2Vec2Model`` base-like (768 wide, 12 heads, 3072 FFN, conv 512 x 7, group norm, post-LN) and large-like
  (1024, 16 heads, 4096, layer-norm feature encoder, pre-LN, final layer norm);
- ``HubertModel``, the same two;
- ``Wav2Vec2ForCTC`` with an MMS adapter loaded (``load_adapter`` on their side, ``adapter=`` on ours, the adapter's
  head resized): base-like (post-LN: the adapter file holds only the head, as transformers has no adapter layer
  there) and large-like (an attention adapter in every layer).

Ours runs the four clips as one padded batch (3.1, 1.7, 2.45 and 0.93 s, padded to 4 s); theirs runs each clip
alone, unpadded. So the check covers both ragged cases: the "layer" models, which transformers itself would batch with
an attention mask, and the group-norm models, which it must not batch with padding (ours normalises over the valid
frames only, see ``engine.models.wav2vec2.model``).

Tolerance: every layer within 1e-5 of that layer's largest magnitude (per utterance). Both sides compute in float32
(unit roundoff 6e-8) but sum in different orders: GEMMs of depth 512 to 4096, the conv feature encoder's seven layers
(depth up to 3 x 512), the positional conv (8192 taps), group and layer norm statistics over up to 50k samples, and
the query scale applied before or after the product. Measured here: ~1e-6 of the peak. A logic error (a weight
misplaced, a norm's eps or order wrong, a padded frame leaking into a valid one, the weight norm's magnitude ignored)
moves a layer by 1e-4 to 1 of its peak (the large configs' ``layer_norm_eps`` is 1e-3 so that even eps routing shows).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from engine.models.wav2vec2.config import dims_from_hf_config
from engine.models.wav2vec2.features import FeatureOptions, batch_waveforms
from engine.models.wav2vec2.loaded import PAD_MULTIPLE, load_wav2vec2
from tests.models.wav2vec2 import w2v_reference as ref
from tests.parity import rel_err

RTOL = 1e-5  # of each layer's largest magnitude, see the module docstring
# transformers 4 replaced hidden_states[-1] by the final layer norm's output for pre-LN models; transformers 5 records
# the last layer's raw output, as ours does (engine.models.wav2vec2.model). Under 4, the last entry is compared normed.
LAST_IS_NORMED = int(transformers.__version__.split(".")[0]) < 5
ADAPTER_LANG = "xyz"
VARIANTS = {
    # name: (transformers class, config class, widths, CTC vocab size in config.json -> in the adapter)
    "wav2vec2-base": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, ref.BASE, None),
    "wav2vec2-large": (transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, ref.LARGE, None),
    "hubert-base": (transformers.HubertModel, transformers.HubertConfig, ref.BASE, None),
    "hubert-large": (transformers.HubertModel, transformers.HubertConfig, ref.LARGE, None),
    "ctc-adapter-base": (transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config, ref.BASE, (32, 41)),
    "ctc-adapter-large": (transformers.Wav2Vec2ForCTC, transformers.Wav2Vec2Config, ref.LARGE, (40, 57)),
}


class Run:
    """Both sides of one variant on the real clips."""

    def __init__(self, name, folder, fleurs_dir):
        self.name = name
        cls, config_cls, widths, vocab = VARIANTS[name]
        self.vocab_sizes = vocab
        extra = {} if vocab is None else dict(vocab_size=vocab[0], adapter_attn_dim=16)
        seed = sorted(VARIANTS).index(name)
        self.theirs = ref.build(cls, config_cls(**widths, **extra), folder, seed)
        adapter = None
        if vocab is not None:
            ref.write_vocab(folder, vocab[1], ADAPTER_LANG)
            ref.write_adapter(self.theirs, folder, ADAPTER_LANG, vocab[1], seed + 100)
            self.theirs = cls.from_pretrained(folder).eval()  # load_adapter reads from the model's own folder
            self.theirs.load_adapter(ADAPTER_LANG)
            adapter = ADAPTER_LANG
        self.waves = ref.real_clips(fleurs_dir)
        self.ours = load_wav2vec2(folder, adapter=adapter)
        self.wave, self.lengths = self.ours.features(self.waves)
        states, frames = self.ours.encode(self.wave, self.lengths)
        self.states, self.frames = np.asarray(states), np.asarray(frames)
        self.reference, self.logits = ref.run_alone(self.theirs, self.waves)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def run(request, tmp_path_factory, fleurs_dir) -> Run:
    torch.set_num_threads(2)
    return Run(request.param, tmp_path_factory.mktemp(request.param), fleurs_dir)


def test_every_layer_equals_hidden_states(run):
    assert run.wave.shape[1] == 4 * PAD_MULTIPLE, "the batch should be padded past its longest clip"
    for i, theirs in enumerate(run.reference):
        n = int(run.frames[i])
        assert len(theirs) == run.ours.n_layers_out == run.states.shape[0]
        assert n == theirs[0].shape[0] == run.ours.dims.frames(run.lengths[i])
        ours = [run.states[layer, i, :n] for layer in range(len(theirs))]
        if LAST_IS_NORMED:
            ours[-1] = np.asarray(run.ours.model.final_norm(ours[-1]))
        errors = [rel_err(mine, t) for mine, t in zip(ours, theirs, strict=True)]
        assert max(errors) < RTOL, (i, errors)
        assert not run.states[:, i, n:].any(), "frames past an utterance's end must be zero"


@pytest.mark.parametrize("run", ["wav2vec2-base", "wav2vec2-large"], indirect=True)  # a group and a layer norm
def test_padding_content_does_not_matter(run):
    """Garbage in the padding (instead of zeros) changes no valid frame: the model never reads it."""
    poisoned = run.wave.copy()
    for i, n in enumerate(run.lengths):
        poisoned[i, n:] = np.random.default_rng(i).standard_normal(poisoned.shape[1] - n) * 100
    states, frames = run.ours.encode(poisoned, run.lengths)
    np.testing.assert_array_equal(np.asarray(frames), run.frames)
    np.testing.assert_allclose(np.asarray(states), run.states, rtol=0, atol=1e-6 * np.abs(run.states).max())


def test_ctc_logits_equal_transformers_with_adapter(run):
    if run.vocab_sizes is None:
        assert not run.ours.has_ctc_head and run.ours.vocab is None
        return
    theirs = run.logits
    assert run.ours.checkpoint.vocab_size == theirs[0].shape[-1] == run.vocab_sizes[1]
    last = run.ours.dims.num_hidden_layers
    logits = np.asarray(run.ours.ctc_logits(run.states[last]))
    for i, t in enumerate(theirs):
        n = int(run.frames[i])
        assert rel_err(logits[i, :n], t) < RTOL
        # The best ids agree wherever the top two logits are further apart than the rounding.
        top2 = np.sort(t, -1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4 * np.abs(t).max()
        np.testing.assert_array_equal(logits[i, :n].argmax(-1)[clear], t.argmax(-1)[clear])

    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(run.ours.checkpoint.path / "vocab.json"), target_lang=ADAPTER_LANG
    )
    ids = [logits[i, : int(n)].argmax(-1) for i, n in enumerate(run.frames)]
    assert run.ours.vocab.decode_logits(logits, run.frames) == [tokenizer.decode(x) for x in ids]
    assert run.ours.transcribe(run.waves) == tokenizer.batch_decode([x.tolist() for x in ids])


# -- feature extraction --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("do_normalize", [True, False])
def test_features_equal_wav2vec2_feature_extractor(fleurs_dir, do_normalize):
    waves = ref.real_clips(fleurs_dir)
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=True, padding_value=0.5)
    theirs = fe(waves, padding=True, sampling_rate=ref.SAMPLE_RATE, return_tensors="np")
    ours, lengths = batch_waveforms(waves, FeatureOptions(do_normalize=do_normalize, padding_value=0.5))
    np.testing.assert_array_equal(ours, theirs.input_values)  # the same float32 operations: equal to the bit
    np.testing.assert_array_equal(np.arange(ours.shape[1])[None] < lengths[:, None], theirs.attention_mask == 1)
    for w in waves:  # one utterance, unpadded
        alone = fe(w, sampling_rate=ref.SAMPLE_RATE, return_tensors="np").input_values
        np.testing.assert_array_equal(batch_waveforms([w], FeatureOptions(do_normalize=do_normalize))[0], alone)


def test_a_folder_without_its_preprocessor_config_takes_the_defaults_with_a_warning(tmp_path, caplog):
    """A probe's HuBERT that shipped do_normalize false and lost the file was fed normalised audio without a word."""
    (tmp_path / "preprocessor_config.json").write_text('{"do_normalize": false}')
    assert FeatureOptions.from_folder(tmp_path).do_normalize is False and not caplog.records
    (tmp_path / "preprocessor_config.json").unlink()
    assert FeatureOptions.from_folder(tmp_path) == FeatureOptions()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "has no preprocessor_config.json: using Wav2Vec2FeatureExtractor's defaults (do_normalize=True" in warning


def test_frames_follow_transformers_length_formula():
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=8, conv_dim=(8,) * 7)
    config = transformers.Wav2Vec2Config(**small, num_hidden_layers=1, num_conv_pos_embedding_groups=2)
    model = transformers.Wav2Vec2Model(config)
    dims = dims_from_hf_config(model.config.to_dict())
    samples = np.array([400, 401, 719, 720, 16000, 48123])
    theirs = model._get_feat_extract_output_lengths(torch.from_numpy(samples)).numpy()
    assert [dims.frames(n) for n in samples] == theirs.tolist()
    assert dims.frames(399) == 0 and dims.receptive_field == 400 and dims.seconds_per_frame == 0.02
