"""A loaded FastConformer (Parakeet, Canary encoder): the Flax model and its checkpoint, in one object.

The entry point a notebook uses::

    from engine.models.fastconformer.loaded import load_fastconformer
    m = load_fastconformer("/path/to/parakeet-ctc-0.6b")   # or a Canary folder, or a hub id
    features, valid = m.features(waveforms)     # f32[batch, feature_frame, n_mels], i32[batch]: 10 ms frames
    states = m.encode(features, valid)          # f32[L+1, batch, frame, width], layers 0..L, 80 ms frames
    states, frames = m.encode_batch(waveforms)  # both steps; frames: the valid encoder frames of each row
    logits = m.ctc_logits(states[k])            # Parakeet-CTC: the CTC head on layer k (the logit lens)
    lens = m.ctc_lens()                         # the same, with the text of the best ids (tokenizer.json)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError, ShapeError
from engine.models.common.loaded_config import LoadedConfig
from engine.models.common.parallel import ShardedEncoder
from engine.models.common.trainable import SplitModule
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.checkpoints import Checkpoint, load_checkpoint
from engine.models.fastconformer.model import FastConformer
from engine.models.fastconformer.parallel import SIGNATURE
from engine.models.fastconformer.tokenizer import Tokenizer
from engine.models.interface import CTCLens


@functools.partial(jax.jit, static_argnames=("graphdef", "out_dtype"))
def _encode(graphdef, state, features, valid, out_dtype):
    return nnx.merge(graphdef, state)(features, valid, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ctc_logits(graphdef, state, x):
    return nnx.merge(graphdef, state).ctc_logits(x)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedFastConformer(LoadedConfig, SplitModule):
    model: FastConformer
    checkpoint: Checkpoint  # name, config, sha256, path (weights dropped: the model holds them)

    @property
    def has_ctc_head(self) -> bool:
        return self.model.ctc_head is not None

    def features(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz waveforms -> ``(f32[batch, feature_frame, n_mels], valid i32[batch])``: each one's log-mel
        (``features.log_mel``), zero-padded to the longest."""
        if len(waveforms) == 0:
            raise ShapeError("features needs at least one waveform, got none")
        each = [feats.log_mel(w, self.config.n_mels) for w in waveforms]
        out = np.zeros((len(each), max(len(f) for f, _ in each), self.config.n_mels), np.float32)
        for i, (f, _) in enumerate(each):
            out[i, : len(f)] = f
        return out, np.array([n for _, n in each], np.int32)

    def frames(self, valid) -> np.ndarray:
        """Valid encoder frames of rows with ``valid`` feature frames."""
        return np.asarray(self.config.sub_length(np.asarray(valid, np.int64)), np.int32)

    def encode(self, features, valid, out_dtype=None) -> jax.Array:
        """``features f32[batch, feature_frame, n_mels]``, ``valid i32[batch]`` -> ``f[L+1, batch, frame, width]``
        on the default device (jitted once per shape)."""
        graphdef, state = self._split
        return _encode(graphdef, state, jnp.asarray(features), jnp.asarray(valid, jnp.int32), out_dtype)

    def encode_batch(self, waveforms: Sequence[np.ndarray], out_dtype=None) -> tuple[jax.Array, np.ndarray]:
        """16 kHz waveforms -> ``(states f[L+1, batch, frame, width], valid encoder frames i32[batch])``."""
        features, valid = self.features(waveforms)
        return self.encode(features, valid, out_dtype), self.frames(valid)

    def sharded(self, mesh=None, out_dtype=None) -> ShardedEncoder:
        """``encode`` over every device of a 1-D ``DATA`` mesh (default: all devices)."""
        return ShardedEncoder(self.model, SIGNATURE, mesh, out_dtype=out_dtype)

    def ctc_logits(self, states_at_layer) -> jax.Array:
        """CTC logits ``f32[..., frame, vocab]`` of one layer's states ``f[..., frame, width]`` (Parakeet-CTC only):
        at layer L, ``ParakeetForCTC``'s logits; at layer k, the logit lens."""
        if not self.has_ctc_head:
            raise ShapeError(
                f"model {self.checkpoint.name!r} ({self.config.model_type}) has no CTC head; only parakeet_ctc "
                "(ParakeetForCTC) checkpoints have one"
            )
        graphdef, state = self._split
        return _ctc_logits(graphdef, state, jnp.asarray(states_at_layer))

    def tokenizer(self) -> Tokenizer:
        """The checkpoint's ``tokenizer.json`` (``engine.models.fastconformer.tokenizer``), read on each call."""
        return Tokenizer.from_folder(self.checkpoint.path, self.checkpoint.name)

    def ctc_lens(self) -> CTCLens:
        """The CTC head as decode's per-layer logit lens (``engine.models.interface.CTCLens``): the head on a layer's
        states as they are (the encoder has no final norm: layer L is what ``ParakeetForCTC``'s head reads), and the
        text of the best ids as ``ParakeetProcessor.batch_decode`` gives it."""
        if not self.has_ctc_head:
            self.ctc_logits(None)  # the error naming the checkpoint
        tokenizer, blank = self.tokenizer(), self.config.blank_id
        tokenizer.check_blank(blank, self.checkpoint.name)
        return CTCLens(
            name=self.checkpoint.name, sha256=self.checkpoint.sha256, adapter=None, ln_post=False, blank_id=blank,
            logits=self.ctc_logits, text=lambda ids: tokenizer.ctc_text(ids, blank),
        )  # fmt: skip


def load_fastconformer(
    source: str | os.PathLike, *, adapter: str | None = None, dtype=jnp.float32
) -> LoadedFastConformer:
    """Load a checkpoint (``checkpoints.load_checkpoint``: a folder or a hub id) as a Flax encoder of ``dtype``.
    ``adapter`` is the registry's head loaders' argument: FastConformer checkpoints have no language adapters."""
    if adapter is not None:
        raise CheckpointError(
            f"model {str(source)!r}: FastConformer checkpoints have no language adapter ({adapter!r})"
        )
    ckpt = load_checkpoint(source)
    model = FastConformer(ckpt.config, ckpt.state_dict, dtype)
    return LoadedFastConformer(model, dataclasses.replace(ckpt, state_dict={}))
