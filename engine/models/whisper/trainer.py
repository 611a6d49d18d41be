"""Whisper's text decoder behind ``engine.models.interface.Trainer``: what the finetune job trains.

Parameters: the ``TextDecoder``'s as a flat ``{"blocks.0.cross_attn.query.kernel": array}`` dict (our layouts, kernels
``[in, out]``; every decoder variable is a Param). ``GROUPS``: the ``--trainable`` groups as regular expressions on
those names, layer norms with the sublayer they normalise.

Memory: Whisper's decoder attends to all 1500 frames of a window, and depends on the frames past an utterance, while
a layer store keeps valid frames only. ``memory`` fills those frames with the silent window's states
(``timing.fill_padding`` / ``silence_states``: the encoder run once on 30 s of zeros), for training and evaluation
alike (``SILENCE_FILL``): a stand-in for what decoding from audio sees (the decode job recomputes the encoder).

Logits: the decoder given the memory itself (folded cross-attention, ``folded.attend_folded``) where that costs no more
than projecting keys and values, else ``cross_kv``. Export: a Hugging Face folder (``checkpoints.export.export_hf``).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.languages import fleurs_to_whisper
from engine.models.common.trainable import merge_params, replace_params, split_params
from engine.models.interface import SILENCE_FILL, Checkpointed
from engine.models.whisper.checkpoints.export import export_hf, generation_config
from engine.models.whisper.decoding import greedy_decode
from engine.models.whisper.loaded import LoadedWhisper, load_whisper
from engine.models.whisper.model import Whisper
from engine.models.whisper.timing import N_ENCODER_FRAMES, fill_padding, silence_states

GROUPS = {
    "decoder": r".*",
    "cross_attention": r"blocks\.\d+\.cross_attn(_ln)?\..*",
    "self_attention": r"blocks\.\d+\.attn(_ln)?\..*",
    "mlp": r"blocks\.\d+\.mlp_(in|out|ln)\..*",
    "embeddings": r"(token|positional)_embedding",
    "final_ln": r"ln\..*",
}
PADDING_NOTE = (
    "frames past each utterance are a silent window's states, for training and evaluation alike; jobs.decode "
    "recomputes them from audio"
)


def with_decoder(model: Whisper, params: Mapping[str, jax.Array]) -> Whisper:
    """A new ``Whisper`` sharing ``model``'s encoder arrays, its decoder's parameters replaced by the flat ``params``
    (a subset is fine: the rest keep ``model``'s values). ``model`` itself is not changed."""
    out = nnx.clone(model)
    replace_params(out.decoder, params)
    return out


@dataclasses.dataclass(frozen=True)
class DecoderGraph:
    """``TrainGraph`` of Whisper's decoder (hashable: the train step's static argument)."""

    graphdef: nnx.GraphDef

    def logits(self, params, tokens, memory, valid):
        del valid  # the frames past each utterance are filled: every frame is read
        dec = merge_params(self.graphdef, params)
        dims = dec.dims
        # Folded cross-attention (whisper.folded.attend_folded) costs as many FLOPs as projecting the keys and values
        # when heads * positions == embed (64 positions for every Whisper size) and fewer below; above, it costs more.
        folded = dims.n_text_head * tokens.shape[1] <= dims.n_text_state
        logits, _, _ = dec(tokens, memory if folded else dec.cross_kv(memory))
        return logits


@dataclasses.dataclass(frozen=True, eq=False)
class WhisperTrainer(Checkpointed):
    """``Trainer`` over a ``LoadedWhisper`` (``loaded``)."""

    loaded: LoadedWhisper
    padding = SILENCE_FILL
    padding_note = PADDING_NOTE
    memory_frames = N_ENCODER_FRAMES
    groups = GROUPS

    @property
    def eot(self) -> int:
        return self.loaded.tokenizer.eot

    @property
    def n_text_ctx(self) -> int:
        return self.loaded.dims.n_text_ctx

    @property
    def store_dims(self) -> dict:
        return self.loaded.dims.to_dict()

    def language(self, code: str) -> str:
        """``prompt``'s language of store code ``code``: its Whisper code (``en_us`` -> ``en``); LanguageError for a
        language Whisper has no token for."""
        return fleurs_to_whisper(code)

    def prompt(self, task: str, language: str) -> list[int]:
        """``<|startoftranscript|><|language|><|task|><|notimestamps|>``."""
        return list(self.loaded.tokenizer.sot_sequence(language, task))

    def tokens(self, text: str) -> list[int]:
        return self.loaded.tokenizer.encode(" " + text)

    @functools.cached_property
    def _silence(self) -> np.ndarray:
        return silence_states(self.loaded)

    def memory(self, states: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
        return fill_padding(states, n_frames, self._silence, frames=N_ENCODER_FRAMES)

    def split(self) -> tuple[DecoderGraph, dict[str, jax.Array]]:
        graphdef, params = split_params(self.loaded.model.decoder)
        return DecoderGraph(graphdef), params

    def tuned(self, params: Mapping[str, jax.Array]) -> WhisperTrainer:
        return WhisperTrainer(dataclasses.replace(self.loaded, model=with_decoder(self.loaded.model, params)))

    def greedy(self, memory, valid, prompt: Sequence[int], max_new_tokens: int) -> list[str]:
        """The greedy text of each row of ``memory`` after ``prompt``, blank and suppressed tokens as OpenAI's."""
        del valid  # every frame is read
        tok = self.loaded.tokenizer
        xa = jnp.asarray(memory)
        prompts = np.tile(np.asarray(prompt, np.int32), (xa.shape[0], 1))
        begin = (*tok.encode(" "), tok.eot)
        tokens, _ = greedy_decode(
            self.loaded.model, xa, prompts, eot=tok.eot, suppress_tokens=tok.suppress_tokens, suppress_begin=begin,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        return [tok.decode(t) for t in tokens]

    def export_problem(self) -> str | None:
        """What would make ``export`` fail (the package, the tokenizer file it copies, the generation config)."""
        try:
            import safetensors.numpy  # noqa: F401  (export writes model.safetensors with it)
        except ImportError as e:
            return (f"exporting the model needs the safetensors package ({e}): pip install safetensors (a "
                    "dependency of babelgrid; reinstall it)")  # fmt: skip
        tokenizer = self.loaded.checkpoint.tokenizer_file
        if tokenizer is not None and not pathlib.Path(tokenizer).is_file():
            return (f"the model's tokenizer file '{tokenizer}', which export copies, is missing; restore the "
                    "--model folder")  # fmt: skip
        try:
            generation_config(self.loaded)
        except Exception as e:  # whatever the tokenizer or the checkpoint config lacks fails the same way at the end
            return (f"the model cannot be exported: its generation config fails ({type(e).__name__}: {e}); pass "
                    "a complete --model")  # fmt: skip
        return None

    def export(self, folder) -> None:
        export_hf(self.loaded, folder)


def load_trainer(source=None, *, dtype=jnp.float32) -> WhisperTrainer:
    """The trainer of a Whisper checkpoint (``load_whisper``'s sources; None: the packaged whisper-base) or of a
    ``LoadedWhisper`` already loaded."""
    if isinstance(source, LoadedWhisper):
        return WhisperTrainer(source)
    return WhisperTrainer(load_whisper(source, dtype=dtype))
