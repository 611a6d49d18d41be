"""What a family's loaded model (its ``Loaded*`` frozen dataclass: the Flax modules and the checkpoint they came from)
reads off its checkpoint's config the same way in every family whose config says it: w2v-BERT's, FastConformer's,
OWSM's and wav2vec2's (whose ``Wav2Vec2Dims`` is its config). (The speech LLMs' configs leave the stored layers to
their towers and the frame to their front ends, and Whisper keeps OpenAI's dimensions: they read their own.)"""

from __future__ import annotations

from typing import Any


class LoadedConfig:
    """``config`` (``checkpoint.config``), and the config's ``n_layers_out`` (stored layers) and
    ``seconds_per_frame`` (of an encoder frame), of a dataclass with a ``checkpoint`` field."""

    checkpoint: Any

    @property
    def config(self):
        return self.checkpoint.config

    @property
    def n_layers_out(self) -> int:
        return self.config.n_layers_out

    @property
    def seconds_per_frame(self) -> float:
        return self.config.seconds_per_frame
