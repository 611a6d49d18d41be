"""OWSM v3.1 behind the family interface (``engine.models.interface``): ESPnet's 30 s windows, every encoder layer.

Input: each window's normalised log-mel features (``features``), the window zero-padded to the model's full length
(30 s: 3001 feature frames, 749 encoder frames) exactly as ESPnet's S2T inference pads every clip, so the encoder
attends over the padded silence as it does in ESPnet. The store keeps each window's valid frames only (those that hold
speech, ``features.valid_frames``): 25 per second. Audio over the window is cut into consecutive windows encoded
apart (``long_audio="window"``) or kept to the first (``"truncate"``), as for every family.

Layers (``OWSM_LAYERS``): 0 = conv2d subsampling + positions, 1..L = E-Branchformer blocks, L+1 = ``after_norm``
(what the decoder and the CTC head read); OWLS's (``OWLS_LAYERS``) are the same with pre-norm transformer blocks.
Heads: the attention decoder (``decode`` with OWSM's language and task tokens) and the CTC head; no cross-attention
heads are chosen for alignment, so ``align`` refuses OWSM stores and points to Whisper's word times, which serve any
store of the same audio. A training checkpoint (``intermediates``) records its step in the store's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from engine.errors import AudioError, LanguageError
from engine.models.common.heads import HeadMasked, cut_layers
from engine.models.common.parallel import StoredLayers
from engine.models.interface import (
    OWLS_LAYERS,
    OWSM_CTC_LAYERS,
    OWSM_LAYERS,
    EncoderCost,
    FamilyDims,
    LoadedEncoder,
    split_windows,
    window_frames,
)
from engine.models.owsm import features as feats
from engine.models.owsm.config import SAMPLE_RATE
from engine.models.owsm.cost import encoder_cost
from engine.models.owsm.languages import owsm_language
from engine.models.owsm.loaded import LoadedOwsm, load_owsm

# store_dims: the config fields v3.1 stores were written without, at v3.1's values
_V31 = {"subsampling": 4, "ctc": None, "encoder": "e_branchformer"}


def _masked(encoder, features, *, layers, head_mask):
    return cut_layers(encoder(features, jnp.float32, head_mask), layers)


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmEncoder(LoadedEncoder):
    """A ``LoadedOwsm`` as an ``engine.models.interface.Encoder``; ``loaded`` is the model for decoder-side jobs."""

    loaded: LoadedOwsm
    family: str = "owsm"
    layer_meaning: str = OWSM_LAYERS
    pads_windows: bool = True  # every window costs the full window (``cost``); read by encode --plan
    ffn_counts = None  # the neurons job's feed-forward counts: not offered yet
    ffn_scaled_sums = None
    attention_stats = None  # the heads job's attention statistics: not offered yet (Whisper and wav2vec2 do)
    value_zeroing = None  # blocks re-run with value vectors zeroed: not offered yet (Whisper and wav2vec2 do)

    @property
    def store_dims(self) -> FamilyDims:
        c = self.loaded.config
        # The token list is the checkpoint's (its sha256 covers it); the store records its length. The fields added
        # with OWSM v4 and OWSM-CTC are left out at v3.1's values, so that v3.1 stores written before them resume.
        config = {
            k: v for k, v in dataclasses.asdict(c).items() if k != "token_list" and (k not in _V31 or v != _V31[k])
        }
        config |= {"n_vocab": c.n_vocab}
        step = self.loaded.checkpoint.step
        if step is not None:  # a training checkpoint (owsm.intermediates): a resume from another step is refused
            config |= {"training_step": step}
        return FamilyDims.from_dict({"n_layers_out": c.n_layers_out, "embed": c.width, "config": config})

    @property
    def window_samples(self) -> int:
        """Samples per window: 480000 (30 s) for every published OWSM."""
        return self.loaded.config.frontend.n_samples

    @property
    def min_samples(self) -> int:
        """The fewest samples that give one encoder frame (a shorter last window is dropped)."""
        hop = self.loaded.config.frontend.hop_length
        return next(n * hop for n in range(1, 64) if feats.valid_frames(n * hop, self.loaded.config) > 0)

    @property
    def features(self) -> dict:
        f = self.loaded.config.frontend
        return {
            "sample_rate": SAMPLE_RATE,
            "input": "ESPnet DefaultFrontend log-mel, global MVN (feats_stats.npz)",
            "n_mels": f.n_mels,
            "n_fft": f.n_fft,
            "win_length": f.win_length,
            "hop_length": f.hop_length,
            "window_samples": f.n_samples,
            "padding": "zeros to the full window, as ESPnet's S2T inference; the encoder attends over them",
        }

    def windows(self, samples: np.ndarray, long_audio: str) -> tuple[list[np.ndarray], np.ndarray]:
        """``f32[samples]`` -> (features ``f32[3001, n_mels]`` per window, valid frames ``i32[window]``)."""
        parts = split_windows(np.asarray(samples, np.float32), long_audio, self.min_samples, self.window_samples)
        if len(parts[0]) < self.min_samples:
            raise AudioError(f"{len(parts[0])} samples: OWSM needs at least {self.min_samples} for one encoder frame")
        config, stats = self.loaded.config, self.loaded.checkpoint.stats
        valid = np.array([feats.valid_frames(len(p), config) for p in parts], np.int32)
        return [feats.features(p, config.frontend, stats) for p in parts], valid

    def expected_frames(self, samples: int, long_audio: str) -> tuple[int, int]:
        config = self.loaded.config
        return window_frames(
            samples, long_audio, lambda n: feats.valid_frames(n, config), self.min_samples, self.window_samples
        )

    def collate(self, inputs: Sequence[np.ndarray], batch_size: int) -> tuple[np.ndarray]:
        """Windows -> ``features f32[batch_size, 3001, n_mels]``; padding rows are zeros (dropped by the caller)."""
        out = np.zeros((batch_size, *inputs[0].shape), np.float32)
        out[: len(inputs)] = np.stack(inputs)
        return (out,)

    def cost(self, samples: int) -> EncoderCost:
        """FLOPs and parameters of one window: the full window's (``engine.models.owsm.cost``) whatever ``samples``
        (at most ``window_samples``), since every window is padded to it before the encoder runs."""
        if not 0 <= samples <= self.window_samples:
            raise ValueError(f"a window holds 0..{self.window_samples} samples, got {samples}")
        return encoder_cost(self.loaded.config)

    def head_masked(self, layers: Sequence[int]) -> HeadMasked:
        """The encoder with a head mask (``engine.models.common.heads``): ``(features,)`` batches."""
        c = self.loaded.config
        return HeadMasked(self.loaded.encoder, _masked, c.n_layer, c.n_head, tuple(layers))

    def sharded(self, mesh, layers: Sequence[int], out_dtype):
        return StoredLayers(self.loaded.sharded(mesh, out_dtype), layers, self.n_layers_out)

    def languages_without_token(self, langs: Sequence[str]) -> list[str]:
        """The languages with no OWSM language token (``<eng>``) in this model, as decode looks them up."""
        known = self.loaded.config.languages()
        out = []
        for lang in langs:
            try:
                owsm_language(lang, known)
            except LanguageError:
                out.append(lang)
        return out


def load(source, *, adapter=None, dtype=None) -> OwsmEncoder:
    del adapter  # refused by engine.models.family.load_encoder
    loaded = load_owsm(source, dtype=jnp.float32 if dtype is None else dtype)
    if loaded.config.ctc is not None:  # OWSM-CTC: its own layer meaning; its decoder is its CTC heads (OwsmCtcDecoder)
        return OwsmEncoder(loaded, layer_meaning=OWSM_CTC_LAYERS)
    if loaded.config.encoder == "transformer":  # OWLS: blocks without a norm of their own
        return OwsmEncoder(loaded, layer_meaning=OWLS_LAYERS)
    return OwsmEncoder(loaded)


def store_depth(dims) -> Callable[[int], float]:
    """Each layer's place on compare's depth axis in an OWSM store (``dims``: its ``StoreDims``): its L blocks and
    ``after_norm`` (layer L + 1, the encoder's output) as Whisper's blocks and ``ln_post``, ``layer / (L + 1)``, so
    that ``after_norm`` sits at 1. The default took the L + 2 stored layers for L + 1 blocks and put it at
    (L + 1) / (L + 2): a ladder of OWLS sizes matched one model's ``after_norm`` to another's last block."""
    blocks = dims.n_layers_out - 2
    return lambda layer: layer / (blocks + 1)
