"""A loaded Whisper: Flax model, tokenizer and the checkpoint's decoding config, in one object.

This is the entry point a notebook uses::

    from engine.models.whisper.loaded import load_whisper
    w = load_whisper()                           # the packaged whisper-base
    mel, valid = w.features(audio)               # f32[window, n_mels, 3000], valid encoder frames
    states = w.encode(mel)                       # f32[L+2, window, 1500, embed], every layer
    result = w.transcribe(mel)                   # greedy, language detected
    result = w.transcribe(mel, DecodingOptions(encoder_layer=4))   # early exit from layer 4
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError, LanguageError
from engine.models.common.trainable import SplitModule
from engine.models.whisper import decoding
from engine.models.whisper.checkpoints.load import DEFAULT_PACKAGES, Checkpoint, load_checkpoint
from engine.models.whisper.decoding import DecodingOptions, DecodingResult
from engine.models.whisper.features import features_for_audio
from engine.models.whisper.model import Whisper
from engine.models.whisper.tokenizer import WhisperTokenizer


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "out_dtype"))
def _encode(graphdef, state, mel, layers, out_dtype):
    return nnx.merge(graphdef, state).encoder(mel, layers, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ffn_active(graphdef, state, mel, frames):
    return nnx.merge(graphdef, state).encoder.ffn_active(mel, frames)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _scaled_sums(graphdef, state, mel, frames, scale):
    return nnx.merge(graphdef, state).encoder.scaled_sums(mel, frames, scale)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedWhisper(SplitModule):
    model: Whisper
    tokenizer: WhisperTokenizer
    checkpoint: Checkpoint  # dims, name, sha256, alignment heads, suppress ids (weights dropped)

    @property
    def dims(self):
        return self.checkpoint.dims

    def features(self, audio: np.ndarray, long_audio: str = "window"):
        """Host audio ``f32[samples]`` at 16 kHz -> ``(mel f32[window, n_mels, 3000], valid_frames i32[window])``."""
        return features_for_audio(audio, self.dims.n_mels, long_audio=long_audio)

    def encode(self, mel, layers: Sequence[int] | None = None, out_dtype=None):
        """``mel f32[batch, n_mels, 3000]`` -> ``f[len(layers), batch, 1500, embed]`` (default: all layers)."""
        graphdef, state = self._split
        layers = None if layers is None else tuple(int(i) for i in layers)
        return _encode(graphdef, state, jnp.asarray(mel), layers, out_dtype)

    def ffn_active(self, mel, frames) -> np.ndarray:
        """i64[L, 4 d]: per block, the valid frames (``frames: i32[batch]`` of ``mel``) at which each feed-forward unit
        is active (``engine.models.whisper.model.AudioEncoder.ffn_active``)."""
        graphdef, state = self._split
        return np.asarray(_ffn_active(graphdef, state, jnp.asarray(mel), jnp.asarray(frames, jnp.int32)), np.int64)

    def scaled_sums(self, mel, frames, scale) -> np.ndarray:
        """f32[L + 2, batch, embed]: each layer's states summed over the valid frames, with the feed-forward units
        scaled by ``scale: f32[L, 4 d]`` (``engine.models.whisper.model.AudioEncoder.scaled_sums``)."""
        graphdef, state = self._split
        mel, frames = jnp.asarray(mel), jnp.asarray(frames, jnp.int32)
        return np.asarray(_scaled_sums(graphdef, state, mel, frames, jnp.asarray(scale, jnp.float32)))

    # -- decoding ---------------------------------------------------------------------------

    @property
    def lang_ids(self) -> tuple[int, ...]:
        return tuple(self.checkpoint.lang_ids or self.tokenizer.language_tokens)

    def suppress_tokens(self, options: DecodingOptions) -> tuple[int, ...]:
        if options.suppress_tokens is not None:
            return tuple(options.suppress_tokens)
        if self.checkpoint.suppress_ids is not None:
            return tuple(self.checkpoint.suppress_ids)
        return tuple(self.tokenizer.suppress_tokens)

    def suppress_begin(self, options: DecodingOptions) -> tuple[int, ...]:
        if not options.suppress_blank:
            return ()
        if self.checkpoint.suppress_ids_begin is not None:
            return tuple(self.checkpoint.suppress_ids_begin)
        return tuple(self.tokenizer.encode(" ")) + (self.tokenizer.eot,)

    def detect_language(self, xa) -> tuple[list[str], np.ndarray]:
        """Detected Whisper language code per utterance and ``f32[batch, language]`` probabilities."""
        if not self.dims.is_multilingual:
            raise LanguageError("language detection needs a multilingual model; this one is English-only")
        lang_ids = self.lang_ids
        probs = decoding.language_probs(self.model, xa, self.tokenizer.sot, lang_ids)
        codes = [self.tokenizer.language_code(lang_ids[i]) for i in probs.argmax(-1)]
        return codes, probs

    def audio_features(self, mel, options: DecodingOptions | None = None):
        options = options or DecodingOptions()
        return decoding.audio_features(self.model, mel, options.encoder_layer, options.apply_ln_post)

    def transcribe(self, mel, options: DecodingOptions | None = None, xa=None) -> DecodingResult:
        """Greedy decoding or beam search (``options.beam_size``) of 30 s windows ``mel f32[batch, n_mels, 3000]``
        (or of a given decoder input ``xa: f[batch, frame, embed]``)."""
        options = options or DecodingOptions()
        if xa is None:
            xa = self.audio_features(mel, options)
        tok = self.tokenizer
        batch = xa.shape[0]
        probs = None
        if options.language is not None:
            tok.language_token(options.language)  # raises LanguageError for unknown codes
            languages = [options.language] * batch
        elif self.dims.is_multilingual:
            languages, probs = self.detect_language(xa)
        else:
            languages = ["en"] * batch
        if options.task == "translate" and not self.dims.is_multilingual:
            raise LanguageError("task 'translate' needs a multilingual model")
        prompt = np.array([tok.sot_sequence(lang, options.task) for lang in languages], np.int32)
        common = dict(
            eot=tok.eot,
            suppress_tokens=self.suppress_tokens(options),
            suppress_begin=self.suppress_begin(options),
            max_new_tokens=options.max_new_tokens,
        )
        if options.beam_size == 1:
            tokens, avg = decoding.greedy_decode(self.model, xa, prompt, **common)
        else:
            tokens, avg = decoding.beam_decode(
                self.model,
                xa,
                prompt,
                beam_size=options.beam_size,
                patience=options.patience,
                length_penalty=options.length_penalty,
                **common,
            )
        texts = [tok.decode(t) for t in tokens]
        return DecodingResult(tokens, texts, languages, probs, avg)

    def translate(self, mel, options: DecodingOptions | None = None) -> DecodingResult:
        return self.transcribe(mel, dataclasses.replace(options or DecodingOptions(), task="translate"))

    def alignment_heads(self) -> np.ndarray:
        """``i32[n, 2]`` (decoder layer, head): the checkpoint's, else the last half of decoder layers."""
        if self.checkpoint.alignment_heads is not None:
            return np.asarray(self.checkpoint.alignment_heads, np.int32)
        d = self.dims
        return np.array(
            [(layer, head) for layer in range(d.n_text_layer // 2, d.n_text_layer) for head in range(d.n_text_head)],
            np.int32,
        )


def _packaged_tokenizer_file() -> pathlib.Path | None:
    """The packaged whisper-base tokenizer.json, if the default model is installed."""
    try:
        path = importlib.resources.files(DEFAULT_PACKAGES[1]) / "data" / "tokenizer.json"
    except ModuleNotFoundError:
        return None
    return path if isinstance(path, pathlib.Path) and path.is_file() else None


def _tokenizer_for(ckpt: Checkpoint, tokenizer) -> WhisperTokenizer:
    dims = ckpt.dims
    kw = dict(multilingual=dims.is_multilingual, num_languages=dims.num_languages)
    if tokenizer is not None:
        path = pathlib.Path(tokenizer)
        if path.suffix == ".tiktoken":
            return WhisperTokenizer.from_tiktoken(path, **kw)
        return WhisperTokenizer.from_file(path, **kw)
    if ckpt.tokenizer_file is not None:
        return WhisperTokenizer.from_file(ckpt.tokenizer_file, **kw)
    # OpenAI .pt files carry no tokenizer. Every multilingual model up to large-v2 shares one
    # vocabulary (51865 ids), so the packaged whisper-base tokenizer is the right one for them.
    packaged = _packaged_tokenizer_file()
    if dims.n_vocab == 51865 and packaged is not None:
        logging.info("checkpoint %s has no tokenizer; using the packaged multilingual tokenizer.json", ckpt.name)
        return WhisperTokenizer.from_file(packaged, **kw)
    raise CheckpointError(
        f"checkpoint {ckpt.name!r} has no tokenizer.json and its vocabulary ({dims.n_vocab} ids) needs its own: "
        "put the model's tokenizer.json beside it, or pass tokenizer='path/to/tokenizer.json' (or a .tiktoken file)"
    )


def load_whisper(source=None, *, dtype=jnp.float32, tokenizer=None) -> LoadedWhisper:
    """Load a checkpoint (see ``engine.models.whisper.checkpoints.load.load_checkpoint``) as a Flax model + tokenizer.

    ``dtype`` is the compute and weight dtype (float32, bfloat16 or float16). ``tokenizer``
    overrides the checkpoint's tokenizer (a ``tokenizer.json`` or OpenAI ``.tiktoken`` file).
    """
    ckpt = load_checkpoint(source)
    tok = _tokenizer_for(ckpt, tokenizer)
    model = Whisper(ckpt.dims, ckpt.state_dict, dtype=dtype)
    # The model now owns device copies of the weights: keep the config, drop the host arrays.
    return LoadedWhisper(model, tok, dataclasses.replace(ckpt, state_dict={}))
