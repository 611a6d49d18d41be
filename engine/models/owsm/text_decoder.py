"""OWSM's text decoder behind ``engine.models.interface.Decoder`` (decode's one decoder path).

Prompt ``<sos> <lang> <task> <notimestamps>`` (``decoder.prompt``): task ``transcribe`` is ``<asr>``, ``translate``
``<st_eng>``, ``phones`` POWSM's ``<pr>`` (``/p/`` tokens, scored as a phone error rate); the language the store
language's ISO 639-3 token (``languages.owsm_language``: ``en`` -> ``<eng>``; ``--decode_as de=xxx`` names another),
or with ``--language detect`` each window's own, ESPnet's ``Speech2Language`` on the memory decoded. Memory: the
decoder reads all of a window's frames, so decode recomputes them from the audio: ``windows`` are the window features,
``memories`` the encoder run once per batch and each layer's states, through ``after_norm`` or not. Search: greedy or
ESPnet's beam search (``beam``); ``avg_logprob`` the mean log-probability of the tokens and ``<eos>``
(teacher-forced). The CTC head (``--decoding ctc``) reads the store's states, window by window as ESPnet decodes each.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import LanguageError
from engine.models.interface import TASKS, Checkpointed, DecoderCaps, Search
from engine.models.owsm.ctc_decoder import OwsmCtcDecoder
from engine.models.owsm.decoder import prompt
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.languages import owsm_language
from engine.models.owsm.loaded import LoadedOwsm, load_owsm

# The job's task names -> OWSM's task tokens; phones is POWSM's phone recognition.
TASK_TOKENS = {"transcribe": "<asr>", "translate": "<st_eng>", "phones": "<pr>"}


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmDecoder(Checkpointed):
    """``Decoder`` over a ``LoadedOwsm`` (``loaded``)."""

    loaded: LoadedOwsm
    manifest_extra: tuple = (("head", "decoder"),)

    @functools.cached_property
    def caps(self) -> DecoderCaps:
        tasks = tuple(t for t in TASKS if TASK_TOKENS[t] in self.loaded.config.tasks())
        return DecoderCaps(tasks=tasks, detect_language=True, ctc=True, training=True)

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out

    @property
    def window_frames(self) -> int:
        return self.loaded.config.n_frames

    def same_store(self, info) -> bool:
        return True  # the checkpoint's sha256 names the encoder

    def language(self, lang: str, decode_as: dict[str, str]) -> str | None:
        """OWSM's language token (``<fra>``) of store language ``lang``; None if the model has none."""
        try:
            return owsm_language(decode_as.get(lang, lang), self.loaded.config.languages())
        except LanguageError:
            if lang in decode_as:
                raise
            return None

    def score_language(self, language: str) -> None:
        return None  # the store language's own code picks the normaliser

    def prompt(self, task: str, language: str) -> list[int]:
        return prompt(self.loaded.config, language, TASK_TOKENS[task])

    def windows(self, audio: np.ndarray, long_audio: str) -> list[np.ndarray]:
        inputs, _ = OwsmEncoder(self.loaded).windows(audio, long_audio)
        return inputs

    def collate(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def memories(self, batch: np.ndarray, variants: Sequence[tuple[int, bool]]):
        """``((layer, ln_post), memory, valid)`` of every variant: the encoder run once on the batch."""
        states = self.loaded.encode(batch)
        valid = np.full(len(batch), states.shape[2], np.int32)
        for layer, ln_post in variants:
            yield (layer, ln_post), (self.loaded.memory(states, layer) if ln_post else states[layer]), valid

    def final_norm(self, states):
        """``after_norm`` of states ``f[batch, frame, embed]`` of an intermediate layer: what ``memories`` gives for
        (layer, True) from what it gives for (layer, False)."""
        return self.loaded.encoder.after_norm(jnp.asarray(states))

    def search(self, memory, valid, task: str, languages: Sequence[str | None], search: Search):
        """``(tokens per row, avg_logprob per row, language per row)``; a row's language None: detected from the
        memory."""
        del valid  # every frame of the window is read
        owsm = self.loaded
        if languages[0] is None:
            languages = owsm.detect_language(memory)
        task_token, most = TASK_TOKENS[task], search.max_new_tokens
        if search.beam == 1:
            ids, lengths = owsm.greedy(memory, languages, task_token, max_tokens=most)
        else:
            ids, lengths, _ = owsm.beam(memory, languages, task_token, beam=search.beam, max_tokens=most)
        head = owsm.prompts(memory.shape[0], languages, task_token)
        graphdef, state = nnx.split(owsm.decoder)
        avg = np.asarray(_avg_logprob(graphdef, state, head, ids, lengths, jnp.asarray(memory)))
        ids, lengths = np.asarray(ids), np.asarray(lengths)
        tokens = [ids[i, : lengths[i]].tolist() for i in range(len(ids))]
        return tokens, avg.tolist(), [lang.strip("<>") for lang in languages]

    def ctc(self, states: np.ndarray, lengths: np.ndarray, layer: int, ln_post: bool):
        """``(tokens per row, avg_logprob per row)`` of the CTC head over stored states ``f32[batch, frame, width]``
        of layer ``layer`` (``lengths`` valid frames each), through ``after_norm`` where ``ln_post`` (layer L+1 is its
        output already); each window's best path collapsed apart, as ESPnet decodes each window."""
        owsm = self.loaded
        blank, per_window = owsm.config.token_id("<blank>"), owsm.config.n_frames
        x = jnp.asarray(states)
        if ln_post and layer < owsm.n_layers_out - 1:
            x = owsm.encoder.after_norm(x)
        logp = np.asarray(jax.nn.log_softmax(owsm.decoder.ctc_logits(x)))
        tokens, avg = [], []
        for i, n in enumerate(int(n) for n in lengths):
            best = logp[i, :n].argmax(-1)
            ids = []
            for start in range(0, n, per_window):
                w = best[start : start + per_window]
                ids += [int(t) for t in w[np.r_[True, w[1:] != w[:-1]]] if t != blank]
            tokens.append(ids)
            avg.append(float(logp[i, np.arange(n), best].mean()))
        return tokens, avg

    def text(self, ids: Sequence[int]) -> str:
        return self.loaded.text(ids)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _avg_logprob(graphdef, state, head, ids, lengths, memory):
    """f32[batch]: mean over ``ids[:, :lengths+1]`` (the text and its ``<eos>``, which fills the rest of ``ids``) of
    their log-probabilities after the prompt ``head``."""
    decoder = nnx.merge(graphdef, state)
    p = head.shape[1]
    logp = jax.nn.log_softmax(decoder.logits(jnp.concatenate([head, ids], axis=1), memory), axis=-1)
    picked = jnp.take_along_axis(logp[:, p - 1 : -1], ids[..., None], axis=-1)[..., 0]
    mask = jnp.arange(ids.shape[1])[None] <= lengths[:, None]
    return (picked * mask).sum(1) / jnp.maximum(mask.sum(1), 1)


def load_decoder(source, *, dtype=jnp.float32) -> OwsmDecoder | OwsmCtcDecoder:
    """OWSM's decoder; OWSM-CTC's CTC heads read with a task's prefix (``ctc_decoder``), which has no attention
    decoder."""
    loaded = load_owsm(source, dtype=dtype)
    return OwsmCtcDecoder(loaded) if loaded.decoder is None else OwsmDecoder(loaded)
