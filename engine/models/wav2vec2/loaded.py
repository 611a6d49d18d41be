"""A loaded wav2vec2-family model: Flax model, checkpoint record, feature options and CTC vocabulary in one object.

The entry point a notebook uses::

    from engine.models.wav2vec2.loaded import load_wav2vec2
    m = load_wav2vec2("path/to/folder")                   # or "facebook/mms-1b-all", adapter="fra"
    states, frames = m.encode_batch([audio_1, audio_2])   # f32[L+1, 2, frame, embed], i32[2] valid frames
    texts = m.transcribe([audio_1, audio_2])              # greedy CTC (models with a CTC head)
    texts = m.transcribe([audio_1], layer=6)              # the CTC head on layer 6 (logit lens)

The encoder runs data-parallel as every family's does: ``engine.models.common.parallel.ShardedEncoder`` with this
family's ``parallel.SIGNATURE``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError
from engine.models.common.loaded_config import LoadedConfig
from engine.models.common.trainable import SplitModule
from engine.models.interface import CTCLens
from engine.models.wav2vec2.checkpoints import Wav2Vec2Checkpoint, load_checkpoint
from engine.models.wav2vec2.ctc import VOCAB_FILE, CTCVocab
from engine.models.wav2vec2.features import batch_waveforms
from engine.models.wav2vec2.model import Wav2Vec2

log = logging.getLogger(__name__)

# Batches are padded to a multiple of this many samples (1 s), so that a run over utterances of every length compiles
# one program per (batch size, whole seconds) instead of one per length.
PAD_MULTIPLE = 16000


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "out_dtype"))
def _encode(graphdef, state, wave, lengths, layers, out_dtype):
    return nnx.merge(graphdef, state)(wave, lengths, layers, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef", "final_norm"))
def _ctc_logits(graphdef, state, x, final_norm):
    return nnx.merge(graphdef, state).ctc_logits(x, final_norm)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ffn_active(graphdef, state, wave, lengths):
    return nnx.merge(graphdef, state).ffn_active(wave, lengths)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _scaled_sums(graphdef, state, wave, lengths, scale):
    return nnx.merge(graphdef, state).scaled_sums(wave, lengths, scale)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedWav2Vec2(LoadedConfig, SplitModule):
    """The model and its checkpoint; ``n_layers_out`` (``LoadedConfig``) is ``hidden_states``' ``L + 1`` (see
    ``engine.models.wav2vec2.model``)."""

    model: Wav2Vec2
    checkpoint: Wav2Vec2Checkpoint  # dims, name, sha256, adapter, feature options (weights dropped)
    vocab: CTCVocab | None  # None without a CTC head or without vocab.json

    dims = LoadedConfig.config  # Wav2Vec2Dims: this family's name for its config

    @property
    def has_ctc_head(self) -> bool:
        return self.model.lm_head is not None

    def features(self, waveforms: Sequence[np.ndarray], pad_multiple: int = PAD_MULTIPLE):
        """16 kHz utterances ``f32[samples_i]`` -> ``(wave f32[batch, samples], lengths i32[batch])``
        (``engine.models.wav2vec2.features.batch_waveforms`` with the checkpoint's options)."""
        return batch_waveforms(
            waveforms, self.checkpoint.features, min_samples=self.dims.receptive_field, pad_multiple=pad_multiple
        )

    def encode(self, wave, lengths, layers: Sequence[int] | None = None, out_dtype=None):
        """``wave f32[batch, samples]``, ``lengths i32[batch]`` -> ``(states f[len(layers), batch, frame, embed],
        frames i32[batch])`` on the default device (default: every layer, ``0..L``)."""
        graphdef, state = self._split
        layers = None if layers is None else tuple(int(i) for i in layers)
        return _encode(graphdef, state, jnp.asarray(wave), jnp.asarray(lengths, jnp.int32), layers, out_dtype)

    def ffn_active(self, wave, lengths) -> np.ndarray:
        """i64[L, intermediate]: per layer, the valid frames of the batch at which each feed-forward unit is active
        (``engine.models.wav2vec2.model.Wav2Vec2.ffn_active``)."""
        graphdef, state = self._split
        return np.asarray(_ffn_active(graphdef, state, jnp.asarray(wave), jnp.asarray(lengths, jnp.int32)), np.int64)

    def scaled_sums(self, wave, lengths, scale) -> tuple[np.ndarray, np.ndarray]:
        """``(f32[L + 1, batch, embed], frames i64[batch])``: each layer's states summed over the valid frames, the
        feed-forward units scaled by ``scale: f32[L, intermediate]`` (``Wav2Vec2.scaled_sums``)."""
        graphdef, state = self._split
        wave, lengths = jnp.asarray(wave), jnp.asarray(lengths, jnp.int32)
        sums, frames = _scaled_sums(graphdef, state, wave, lengths, jnp.asarray(scale, jnp.float32))
        return np.asarray(sums), np.asarray(frames, np.int64)

    def encode_batch(self, waveforms: Sequence[np.ndarray], layers: Sequence[int] | None = None, out_dtype=None):
        """``features`` then ``encode``."""
        return self.encode(*self.features(waveforms), layers, out_dtype)

    def ctc_logits(self, states_at_layer, final_norm: bool = True):
        """CTC logits ``f32[..., frame, vocab]`` of one layer's states ``f[..., frame, embed]``
        (``Wav2Vec2.ctc_logits``: layer ``L`` with ``final_norm`` gives ``Wav2Vec2ForCTC``'s logits)."""
        if not self.has_ctc_head:
            raise CheckpointError(
                f"model {self.checkpoint.name!r} has no CTC head (lm_head); load a *ForCTC checkpoint"
            )
        graphdef, state = self._split
        return _ctc_logits(graphdef, state, jnp.asarray(states_at_layer), final_norm)

    def ctc_lens(self) -> CTCLens:
        """The CTC head as decode's per-layer logit lens (``engine.models.interface.CTCLens``): pre-LN models read
        each layer through the final layer norm (``ln_post``), post-LN models end every layer normed; texts as
        ``Wav2Vec2CTCTokenizer`` decodes the best ids (``engine.models.wav2vec2.ctc``)."""
        if not self.has_ctc_head or self.vocab is None:
            raise CheckpointError(
                f"model {self.checkpoint.name!r} has no {VOCAB_FILE} beside its weights (or no CTC head): ids cannot "
                "be read"
            )
        ln_post = bool(self.dims.do_stable_layer_norm)
        return CTCLens(
            name=self.checkpoint.name, sha256=self.checkpoint.sha256, adapter=self.checkpoint.adapter, ln_post=ln_post,
            blank_id=self.vocab.blank_id, logits=functools.partial(self.ctc_logits, final_norm=ln_post),
            text=self.vocab.decode,
        )  # fmt: skip

    def transcribe(self, waveforms: Sequence[np.ndarray], layer: int | None = None) -> list[str]:
        """Greedy CTC text of each utterance from layer ``layer`` (default the last, ``L``)."""
        if self.vocab is None:
            raise CheckpointError(
                f"model {self.checkpoint.name!r} has no {VOCAB_FILE} beside its weights (or no CTC head): cannot "
                "turn CTC ids into text"
            )
        layer = self.dims.num_hidden_layers if layer is None else int(layer)
        states, frames = self.encode_batch(waveforms, (layer,))
        return self.vocab.decode_logits(np.asarray(self.ctc_logits(states[0])), np.asarray(frames))


def load_wav2vec2(source, *, adapter: str | None = None, dtype=jnp.float32) -> LoadedWav2Vec2:
    """Load a checkpoint (``engine.models.wav2vec2.checkpoints.load_checkpoint``: folder or hub id, optional MMS
    ``adapter`` language) as a Flax model. ``dtype``: weight and compute dtype (norms and softmax in float32)."""
    ckpt = load_checkpoint(source, adapter=adapter)
    model = Wav2Vec2(ckpt.dims, ckpt.state_dict, dtype=dtype)
    vocab = None
    if ckpt.vocab_size is not None and (ckpt.path / VOCAB_FILE).is_file():
        vocab = CTCVocab.from_folder(ckpt.path, adapter)
        _check_blank(ckpt, vocab)
    # The model now owns device copies of the weights: keep the record, drop the host arrays.
    return LoadedWav2Vec2(model, dataclasses.replace(ckpt, state_dict={}), vocab)


def _check_blank(ckpt: Wav2Vec2Checkpoint, vocab: CTCVocab) -> None:
    """Warns when ``config.json``'s ``pad_token_id`` (``Wav2Vec2ForCTC``'s CTC-loss blank: the one the head was
    trained with) is not the tokenizer's pad token (the one greedy decoding drops, as ``Wav2Vec2CTCTokenizer`` does):
    a conversion that got the blank wrong, decoded here as transformers decodes it. Omnilingual ASR's blank is id 0,
    ``<s>`` (fairseq2's BOS), named by its conversions' ``tokenizer_config.json`` (``pad_token: "<s>"``)."""
    config_blank = ckpt.dims.pad_token_id
    if config_blank is None or vocab.blank_id == config_blank:
        return
    log.warning(
        "model %r: config.json's pad_token_id=%d (the CTC blank it was trained with, %r) is not the tokenizer's pad "
        "token %r (id %s), which greedy decoding drops as transformers' Wav2Vec2CTCTokenizer does; fix "
        "tokenizer_config.json's pad_token if the transcripts show the blank",
        ckpt.name, config_blank, vocab.tokens.get(config_blank), vocab.pad_token, vocab.blank_id,
    )  # fmt: skip
