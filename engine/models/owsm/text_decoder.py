"""OWSM's text decoder behind ``engine.models.interface.Decoder`` (decode's one decoder path); OWSM-CTC's CTC heads
read with a task's prefix behind the same interface (``OwsmCtcDecoder``).

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
from engine.models.owsm.decoder import prompt
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.languages import owsm_language
from engine.models.owsm.loaded import LoadedOwsm, collapse, load_owsm

# The job's task names -> OWSM's task tokens; phones is POWSM's phone recognition.
TASK_TOKENS = {"transcribe": "<asr>", "translate": "<st_eng>", "phones": "<pr>"}


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmHeads(Checkpointed):
    """What OWSM's attention decoder (``OwsmDecoder``) and OWSM-CTC's heads read with a task's prefix
    (``OwsmCtcDecoder``) share behind ``Decoder``: the store check, the languages, the windows from audio, the CTC head
    over the store's states (on each one's ``head_logits``) and the text. Each declares its own caps, prompt, memory and
    search; only ``OwsmDecoder`` has a final norm to read early layers through (``caps.ln_post``)."""

    loaded: LoadedOwsm

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

    def windows(self, audio: np.ndarray, long_audio: str) -> list[np.ndarray]:
        inputs, _ = OwsmEncoder(self.loaded).windows(audio, long_audio)
        return inputs

    def collate(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def ctc(self, states: np.ndarray, lengths: np.ndarray, layer: int, ln_post: bool):
        """``(tokens per row, avg_logprob per row)`` of the CTC head over stored states ``f32[batch, frame, width]``
        of layer ``layer`` (``lengths`` valid frames each), through ``after_norm`` where ``ln_post`` (layer L+1 is its
        output already); each window's best path collapsed apart, as ESPnet decodes each window."""
        owsm = self.loaded
        blank, per_window = owsm.config.token_id("<blank>"), owsm.config.n_frames
        logp = np.asarray(jax.nn.log_softmax(self.head_logits(jnp.asarray(states), layer, ln_post)))
        tokens, avg = [], []
        for i, n in enumerate(int(n) for n in lengths):
            best = logp[i, :n].argmax(-1)
            ids = []
            for start in range(0, n, per_window):
                w = best[start : start + per_window]
                ids += collapse(w, blank)
            tokens.append(ids)
            avg.append(float(logp[i, np.arange(n), best].mean()))
        return tokens, avg

    def text(self, ids: Sequence[int]) -> str:
        return self.loaded.text(ids)


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmDecoder(OwsmHeads):
    """``Decoder`` over a ``LoadedOwsm`` (``loaded``)."""

    manifest_extra: tuple = (("head", "decoder"),)

    @functools.cached_property
    def caps(self) -> DecoderCaps:
        tasks = tuple(t for t in TASKS if TASK_TOKENS[t] in self.loaded.config.tasks())
        return DecoderCaps(tasks=tasks, detect_language=True, ctc=True, training=True)

    def prompt(self, task: str, language: str) -> list[int]:
        return prompt(self.loaded.config, language, TASK_TOKENS[task])

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

    def head_logits(self, x, layer: int, ln_post: bool):
        """The CTC head on layer ``layer``'s states ``x``, through ``after_norm`` where ``ln_post``."""
        if ln_post and layer < self.n_layers_out - 1:
            x = self.loaded.encoder.after_norm(x)
        return self.loaded.decoder.ctc_logits(x)


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmCtcDecoder(OwsmHeads):
    """OWSM-CTC behind ``Decoder``: its CTC heads read with the prefix a task selects.

    OWSM-CTC has no attention decoder; its encoder is told the language and the task (``<deu> <asr>``, ``<deu>
    <st_eng>``) as two positions before the audio (``ctc_model``), and its CTC heads, interior and final, emit what that
    prefix asks for (``ctc_asr_only``: v4's heads after blocks 6, 12 and 15 were trained on the transcript, 21 and the
    final head on the task's output). So decode recomputes each window's layers from the audio with the part's prefix
    (the store's states were encoded with ``<nolang> <asr>``) and reads the shared head on the part's layer as it is:
    at an interior head's layer that is the model's own interior head, at L+1 its final head, elsewhere the same head as
    a logit lens. ``greedy`` is the best path over every position, the prefix's two included, as ESPnet's
    ``Speech2Text.best_path`` reads it (its special tokens are dropped from the text); there is no beam search, no
    language detection and no fine-tuning. ``--decoding ctc`` reads the store's own states (``<nolang> <asr>``).
    """

    manifest_extra: tuple = (("head", "ctc_prefix"),)
    last: list = dataclasses.field(default_factory=list, repr=False)  # [(batch, language, task, states)]: one entry

    @functools.cached_property
    def caps(self) -> DecoderCaps:
        tasks = tuple(t for t, token in TASK_TOKENS.items() if token in self.loaded.config.tasks())
        return DecoderCaps(tasks=tasks, beam=False, ln_post=False, ctc=True)

    def prompt(self, task: str, language: str) -> list[int]:
        """The prefix ids ``<language> <task>``."""
        c = self.loaded.config
        return [c.token_id(f"<{language.strip('<>')}>"), c.token_id(TASK_TOKENS[task])]

    def memories(self, batch: np.ndarray, variants: Sequence[tuple[int, bool]]):
        """The batch's features with each variant's layer: the layers depend on the prefix, so ``search`` encodes."""
        valid = np.full(len(batch), self.window_frames, np.int32)
        for layer, ln_post in variants:
            yield (layer, ln_post), (batch, layer), valid

    def _states(self, batch: np.ndarray, language: str, task: str):
        """Every layer of ``batch`` with the prefix ``<language> <task>``: encoded once for all the layers decoded."""
        if self.last and self.last[0][0] is batch and self.last[0][1:3] == (language, task):
            return self.last[0][3]
        states = self.loaded.ctc_forward(batch, language, task)
        self.last[:] = [(batch, language, task, states)]
        return states

    def search(self, memory, valid, task: str, languages: Sequence[str | None], search: Search):
        """``(tokens per row, avg_logprob per row, language per row)``: the best path of the head on the part's layer
        of the windows encoded with the prefix ``<language> <task>`` (``memory``: ``memories``' (features, layer));
        or, ``memory`` a layer's states already encoded with the stores' prefix (the heads job's ablated encoder),
        the head on them."""
        del valid, search  # a full window each; greedy is the best path
        if isinstance(memory, tuple):
            batch, layer = memory
            if len(set(languages)) != 1 or languages[0] is None:
                raise LanguageError("OWSM-CTC decodes a batch with one given language (no detection)")
            states = self._states(batch, languages[0], TASK_TOKENS[task])
            logits = self.loaded.ctc_logits(states, layer, ln_post=False)
        else:
            logits = self.loaded.encoder.ctc_logits(jnp.asarray(memory))
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        best = logp.argmax(-1)
        blank = self.loaded.config.token_id("<blank>")
        tokens = [collapse(row, blank) for row in best]
        avg = np.take_along_axis(logp, best[..., None], -1)[..., 0].mean(-1)
        return tokens, avg.tolist(), [(languages[0] or "nolang").strip("<>")] * len(tokens)

    def head_logits(self, x, layer: int, ln_post: bool):
        """The shared CTC head on a layer as it is (``--decoding ctc`` over the store's ``<nolang> <asr>`` states)."""
        del layer, ln_post  # the heads read their layers as they are
        return self.loaded.encoder.ctc_logits(x)


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
    """OWSM's decoder; OWSM-CTC's CTC heads read with a task's prefix (``OwsmCtcDecoder``), which has no attention
    decoder."""
    loaded = load_owsm(source, dtype=dtype)
    return OwsmCtcDecoder(loaded) if loaded.decoder is None else OwsmDecoder(loaded)
