"""OWSM-CTC behind ``engine.models.interface.Decoder``: its CTC heads read with the prefix a task selects.

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

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.errors import LanguageError
from engine.models.interface import Checkpointed, DecoderCaps, Search
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.languages import owsm_language
from engine.models.owsm.loaded import LoadedOwsm, collapse

TASK_TOKENS = {"transcribe": "<asr>", "translate": "<st_eng>"}


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmCtcDecoder(Checkpointed):
    """``Decoder`` over an OWSM-CTC ``LoadedOwsm`` (``loaded``)."""

    loaded: LoadedOwsm
    manifest_extra: tuple = (("head", "ctc_prefix"),)
    last: list = dataclasses.field(default_factory=list, repr=False)  # [(batch, language, task, states)]: one entry

    @functools.cached_property
    def caps(self) -> DecoderCaps:
        tasks = tuple(t for t, token in TASK_TOKENS.items() if token in self.loaded.config.tasks())
        return DecoderCaps(tasks=tasks, beam=False, ln_post=False, ctc=True)

    @property
    def n_layers_out(self) -> int:
        return self.loaded.n_layers_out

    @property
    def window_frames(self) -> int:
        return self.loaded.config.n_frames

    def same_store(self, info) -> bool:
        return True  # the checkpoint's sha256 names the encoder

    def language(self, lang: str, decode_as: dict[str, str]) -> str | None:
        try:
            return owsm_language(decode_as.get(lang, lang), self.loaded.config.languages())
        except LanguageError:
            if lang in decode_as:
                raise
            return None

    def score_language(self, language: str) -> None:
        return None

    def prompt(self, task: str, language: str) -> list[int]:
        """The prefix ids ``<language> <task>``."""
        c = self.loaded.config
        return [c.token_id(f"<{language.strip('<>')}>"), c.token_id(TASK_TOKENS[task])]

    def windows(self, audio: np.ndarray, long_audio: str) -> list[np.ndarray]:
        inputs, _ = OwsmEncoder(self.loaded).windows(audio, long_audio)
        return inputs

    def collate(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

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
        of the windows encoded with the prefix ``<language> <task>``."""
        del valid, search  # a full window each; greedy is the best path
        batch, layer = memory
        if len(set(languages)) != 1 or languages[0] is None:
            raise LanguageError("OWSM-CTC decodes a batch with one given language (no detection)")
        states = self._states(batch, languages[0], TASK_TOKENS[task])
        logp = np.asarray(jax.nn.log_softmax(self.loaded.ctc_logits(states, layer, ln_post=False), axis=-1))
        best = logp.argmax(-1)
        blank = self.loaded.config.token_id("<blank>")
        tokens = [collapse(row, blank) for row in best]
        avg = np.take_along_axis(logp, best[..., None], -1)[..., 0].mean(-1)
        return tokens, avg.tolist(), [languages[0].strip("<>")] * len(tokens)

    def ctc(self, states: np.ndarray, lengths: np.ndarray, layer: int, ln_post: bool):
        """``(tokens per row, avg_logprob per row)`` of the head over stored states (``<nolang> <asr>``)."""
        del ln_post  # the heads read their layers as they are
        blank = self.loaded.config.token_id("<blank>")
        logp = np.asarray(jax.nn.log_softmax(self.loaded.encoder.ctc_logits(jnp.asarray(states)), axis=-1))
        tokens, avg = [], []
        for i, n in enumerate(int(n) for n in lengths):
            best = logp[i, :n].argmax(-1)
            tokens.append(collapse(best, blank))
            avg.append(float(logp[i, np.arange(n), best].mean()))
        return tokens, avg

    def text(self, ids: Sequence[int]) -> str:
        return self.loaded.text(ids)
