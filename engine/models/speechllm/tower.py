"""What every speech-LLM tower (Qwen2-Audio, Voxtral, AF3, Qwen3, USM, Voxtral Realtime) writes the same way: its
loaded model (``LoadedTower``: the Flax model's split, ``encode`` and ``outputs``) and its encoder adapter
(``TowerEncoder``: the ``--tower_output`` check, the stored dimensions, the head-masked and sharded encoders).

A tower's model takes ``(features, valid)`` and is called ``model(features, valid, layers, out_dtype)`` and
``model.outputs(features, valid)``; each tower module gives its features, frames, ``cost`` and its words.
``OwnFeaturesEncoder`` adds the windows of the towers featurized by their own extractor (USM, Voxtral Realtime): a
list of ``(log-mel, valid mel frames)``, one a window, padded to a batch by the loaded model's ``collate``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import AudioError, CheckpointError
from engine.models.common import logmel
from engine.models.common.heads import HeadMasked
from engine.models.common.parallel import ShardedEncoder
from engine.models.common.trainable import SplitModule
from engine.models.interface import FamilyDims, LoadedEncoder, window_frames
from engine.models.speechllm.calls import check_output, masked


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "out_dtype"))
def _encode(graphdef, state, features, valid, layers, out_dtype):
    return nnx.merge(graphdef, state)(features, valid, layers, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _outputs(graphdef, state, features, valid):
    return nnx.merge(graphdef, state).outputs(features, valid)


def pad_windows(inputs: Sequence, batch_size: int, frames: int, time_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[(mel f32[...], valid), ...]``, each window's mel with its frames on ``time_axis`` -> ``(mel
    f32[batch_size, ...] with ``frames`` on that axis, valid i32[batch_size])``: zeros past each window's frames, and
    padding rows of zeros with 0 valid frames."""
    shape = list(inputs[0][0].shape)
    shape[time_axis] = frames
    mel = np.zeros((batch_size, *shape), np.float32)
    valid = np.zeros(batch_size, np.int32)
    for i, (m, v) in enumerate(inputs):
        mel[(i, *[slice(None)] * time_axis, slice(m.shape[time_axis]))], valid[i] = m, v
    return mel, valid


class LoadedTower(SplitModule):
    """``config`` (``checkpoint.config``), ``n_layers_out`` (the model's), ``encode`` and ``outputs`` of a frozen
    dataclass with ``model`` and ``checkpoint`` fields."""

    model: Any
    checkpoint: Any  # name, config, sha256, path (weights dropped: the model holds them)

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def n_layers_out(self) -> int:
        return self.model.n_layers_out

    def encode(self, features, valid, layers: Sequence[int] | None = None, out_dtype=None):
        """``f[len(layers), batch, frame, width]`` (default every stored layer); the tower's module says its frames."""
        graphdef, state = self._split
        layers = None if layers is None else tuple(int(i) for i in layers)
        return _encode(graphdef, state, jnp.asarray(features), jnp.asarray(valid, jnp.int32), layers, out_dtype)

    def outputs(self, features, valid) -> dict:
        """The model's ``outputs`` as NumPy arrays: every block, the tower's final output, the projector's."""
        graphdef, state = self._split
        out = _outputs(graphdef, state, jnp.asarray(features), jnp.asarray(valid, jnp.int32))
        return {k: np.asarray(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class TowerEncoder(LoadedEncoder):
    """A ``LoadedTower`` as an ``engine.models.interface.Encoder``: the members every tower shares. A subclass sets
    ``SIGNATURES`` (its ``calls.signatures``) and ``ALONE`` (the refusal of ``--tower_output projector`` for a tower
    saved alone, with ``{name!r}`` for the model's name)."""

    SIGNATURES: ClassVar[dict]
    ALONE: ClassVar[str]
    loaded: Any
    output: str = "layers"  # OUTPUTS: every block, or the tower's final output, or the projector's
    family: str = "speechllm"
    ffn_counts = None  # the neurons job's feed-forward counts: not offered yet
    ffn_scaled_sums = None
    attention_stats = None  # the heads job's attention statistics: not offered yet (Whisper and wav2vec2 do)
    value_zeroing = None  # blocks re-run with value vectors zeroed: not offered yet (the mixing job refuses it)

    def __post_init__(self):
        check_output(self.output, self.loaded.config.has_projector, self.ALONE.format(name=self.name))

    @property
    def store_dims(self) -> FamilyDims:
        config = {**self.loaded.config.to_dict(), "output": self.output}
        return FamilyDims.from_dict({"n_layers_out": self.n_layers_out, "embed": self.embed, "config": config})

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out if self.output == "layers" else 1

    def _kept(self, samples: np.ndarray, kept: np.ndarray, of: str) -> np.ndarray:
        """``kept``, this output's valid frames per window, refused when ``samples`` give none (``of``: of what)."""
        if not kept.sum():
            raise AudioError(f"{len(samples)} samples give no frame of {of}")
        return kept

    def _check_window(self, samples: int) -> None:
        """``cost``'s argument: a window's samples, at most ``window_samples``."""
        if not 0 <= samples <= self.window_samples:
            raise ValueError(f"a window holds 0..{self.window_samples} samples, got {samples}")

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(features, valid)`` batches; a head's
        output is scaled before its block's output projection."""
        if self.output != "layers":
            raise CheckpointError(f"head masks score the tower's layers; this encoder outputs {self.output!r}")
        c = self.loaded.config
        return HeadMasked(self.loaded.model, masked, c.layers, c.heads, tuple(layers))

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        signature = self.SIGNATURES[self.output]
        return ShardedEncoder(self.loaded.model, signature, mesh, layers=tuple(layers), out_dtype=out_dtype)

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """None: the family has no decoder here (a speech LLM's text decoder is out of scope)."""
        del langs
        return []


@dataclasses.dataclass(frozen=True, eq=False)
class OwnFeaturesEncoder(TowerEncoder):
    """A tower featurized by its own extractor, window by window: its loaded model has ``features(samples,
    long_audio)`` (``[(log-mel, valid mel frames), ...]``), ``valid_mel(samples)``, ``frames(valid_mel, output)`` and
    ``collate``. ``NO_FRAME`` names what a clip too short gives no frame of, with ``{output}``."""

    NO_FRAME: ClassVar[str]

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]:
        """``f32[samples]`` -> ((log-mel, valid mel frames) per window, this output's valid frames per window)."""
        inputs = self.loaded.features(samples, long_audio)
        kept = self.loaded.frames(np.asarray([v for _, v in inputs]), self.output)
        return inputs, self._kept(samples, kept, self.NO_FRAME.format(output=self.output))

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        def frames(s: int) -> int:
            return int(self.loaded.frames(self.loaded.valid_mel(s), self.output))

        return window_frames(samples, long_audio, frames, self.min_samples, self.window_samples)

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, ...], valid i32[batch_size])``, each window's log-mel zero-padded to
        the batch's 3000 mel frames; padding rows: zeros, 0 valid."""
        return self.loaded.collate(inputs, batch_size)


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperWindowsEncoder(TowerEncoder):
    """A tower reading Whisper's 30 s log-mel windows (``engine.models.common.logmel``): its loaded model has
    ``features(samples, long_audio)`` (``(mel f32[window, n_mels, 3000], valid mel frames i32[window])``); the
    subclass gives ``_frames`` (this output's valid frames of a window's) and ``NO_FRAME``, what a clip too short
    gives no frame of, with ``{output}`` and ``{rate}`` (``frame_rate``)."""

    NO_FRAME: ClassVar[str]

    def _frames(self, valid: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list, np.ndarray]:
        """``f32[samples]`` -> ((log-mel, the window's valid frames) per window, this output's valid frames per
        window)."""
        mel, frames = self.loaded.features(samples, long_audio)
        kept = self._kept(samples, self._frames(frames), self.NO_FRAME.format(output=self.output, rate=self.frame_rate))
        return [(m, int(f)) for m, f in zip(mel, frames, strict=True)], kept

    def collate(self, inputs: Sequence, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Windows -> ``(mel f32[batch_size, n_mels, 3000], frames i32[batch_size])``; padding rows: silence, 0
        frames."""
        return logmel.collate_windows(inputs, batch_size)
