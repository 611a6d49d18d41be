"""A loaded OWSM v3.1 model: encoder, decoder and CTC head with their checkpoint, in one object.

from engine.models.owsm.loaded import load_owsm
m = load_owsm("/path/to/owsm_v3.1_ebf_base")         # or the hub id espnet/owsm_v3.1_ebf_base
features, valid = m.features(waveforms)              # f32[batch, 3001, 80], i32[batch] encoder frames of speech
states = m.encode(features)                          # f32[L+2, batch, 749, width]: layers 0..L+1 (see model)
tokens, n = m.greedy(states[-1], "eng", "asr")       # i32[batch, max_tokens], i32[batch]
tokens, n, score = m.beam(states[-1], "eng", "asr", beam=5)  # ESPnet's beam search (owsm.beam)
m.detect_language(states[-1])                        # ["<eng>", ...]: ESPnet's Speech2Language
m.text(tokens[0, :n[0]])                             # the BPE pieces joined
m.ctc_logits(states, layer=5)                        # f32[batch, 749, vocab]
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
from engine.models.owsm import features as feats
from engine.models.owsm.beam import beam_fn
from engine.models.owsm.checkpoints import Checkpoint, load_checkpoint
from engine.models.owsm.ctc_model import OwsmCtcEncoder
from engine.models.owsm.decoder import OwsmDecoder, greedy_fn, language_probs_fn, prompt
from engine.models.owsm.model import OwsmEncoder
from engine.models.owsm.parallel import SIGNATURE


@functools.partial(jax.jit, static_argnames=("graphdef", "out_dtype"))
def _encode(graphdef, state, features, out_dtype):
    return nnx.merge(graphdef, state)(features, out_dtype)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _ctc_forward(graphdef, state, features, prefix, prompt):
    return nnx.merge(graphdef, state).forward(features, prefix, prompt)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedOwsm(LoadedConfig):
    encoder: OwsmEncoder  # OwsmCtcEncoder for OWSM-CTC
    decoder: OwsmDecoder | None  # None: OWSM-CTC, which has no attention decoder
    checkpoint: Checkpoint  # name, config, stats, sha256, path (weights dropped: the models hold them)

    def features(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """16 kHz clips -> ``(f32[batch, 3001, n_mels], valid i32[batch])`` (``features.batch_features``)."""
        return feats.batch_features(waveforms, self.config, self.checkpoint.stats)

    def encode(self, features, out_dtype=None) -> jax.Array:
        """``f32[batch, 3001, n_mels]`` -> ``f[L+2, batch, 749, width]`` on the default device."""
        graphdef, state = nnx.split(self.encoder)
        return _encode(graphdef, state, jnp.asarray(features), out_dtype)

    def sharded(self, mesh=None, out_dtype=None) -> ShardedEncoder:
        return ShardedEncoder(self.encoder, SIGNATURE, mesh, out_dtype=out_dtype)

    def memory(self, states, layer: int):
        """The decoder's input from encoder layer ``layer`` (early exit): ``after_norm`` applied to layers 0..L."""
        if not 0 <= layer < self.n_layers_out:
            raise ShapeError(f"layer {layer} is not in 0..{self.n_layers_out - 1}")
        x = states[layer]
        return x if layer == self.n_layers_out - 1 else self.encoder.after_norm(x)

    def prompts(self, rows: int, language: str | Sequence[str], task: str):
        """i32[rows, 4]: ``decoder.prompt`` of ``language`` (one for every row, or one per row) and ``task``."""
        languages = [language] * rows if isinstance(language, str) else list(language)
        if len(languages) != rows:
            raise ShapeError(f"{len(languages)} languages given for a batch of {rows} rows; give one or one per row")
        return jnp.asarray([prompt(self.config, lang, task) for lang in languages], jnp.int32)

    def greedy(self, memory, language: str | Sequence[str], task: str = "asr", max_tokens: int = 128):
        """memory f[batch, frame, width] -> ``(tokens i32[batch, max_tokens], n i32[batch])`` (``decoder``)."""
        graphdef, state = nnx.split(self.decoder)
        return greedy_fn(
            graphdef,
            state,
            self.prompts(memory.shape[0], language, task),
            jnp.asarray(memory),
            max_tokens=max_tokens,
            suppress=self.config.timestamp_range,
            eos=self.config.token_id("<eos>"),
        )

    def beam(self, memory, language: str | Sequence[str], task: str = "asr", beam: int = 5, max_tokens: int = 128):
        """memory f[batch, frame, width] -> ``(tokens i32[batch, max_tokens], n i32[batch], score f32[batch])``:
        ESPnet's beam search (``beam``)."""
        graphdef, state = nnx.split(self.decoder)
        return beam_fn(
            graphdef,
            state,
            self.prompts(memory.shape[0], language, task),
            jnp.asarray(memory),
            beam=beam,
            max_tokens=max_tokens,
            suppress=self.config.timestamp_range,
            eos=self.config.token_id("<eos>"),
        )

    def language_probs(self, memory):
        """memory f[batch, frame, width] -> f32[batch, language], over ``config.languages()`` in order: ESPnet's
        ``Speech2Language`` scores (``decoder.language_probs``)."""
        graphdef, state = nnx.split(self.decoder)
        return language_probs_fn(
            graphdef,
            state,
            jnp.asarray(memory),
            sos=self.config.token_id("<sos>"),
            languages=self.config.language_range,
        )

    def detect_language(self, memory) -> list[str]:
        """The most probable language token of each row of memory f[batch, frame, width], e.g. ``<fra>``."""
        best = np.asarray(self.language_probs(memory)).argmax(axis=-1)
        return [self.config.languages()[int(i)] for i in best]

    def ctc_logits(self, states, layer: int, ln_post: bool = True):
        """f32[batch, frame, vocab]: the CTC head on ``memory(states, layer)`` (``ln_post`` False: on the layer as it
        is, as OWSM-CTC's interior heads read their blocks)."""
        x = self.memory(states, layer) if ln_post else states[layer]
        head = self.decoder if self.decoder is not None else self.encoder  # OWSM-CTC's head is in its encoder
        return head.ctc_logits(x)

    def ctc_forward(self, features, language: str = "<nolang>", task: str = "<asr>"):
        """OWSM-CTC: ``f32[batch, feature_frame, n_mels]`` -> ``f32[L+2, batch, 2 + frame, width]``, every layer
        encoded with the prefix ``<language> <task>`` (``<nolang>``: not told) and no prompt, as ESPnet's
        ``Speech2Text.best_path`` encodes; the prefix's two positions first (``ctc_model``)."""
        c = self.config
        if c.ctc is None:
            raise ShapeError(f"'{self.checkpoint.name}' is not an OWSM-CTC model: it has no prefix; use encode()")
        ids = [c.token_id(f"<{t.strip('<>')}>") for t in (language, task)]
        rows = len(features)
        prefix = jnp.asarray([ids] * rows, jnp.int32)
        prompt = jnp.full((rows, 1), c.token_id("<na>"), jnp.int32)
        graphdef, state = nnx.split(self.encoder)
        return _ctc_forward(graphdef, state, jnp.asarray(features), prefix, prompt)

    def best_path(self, logits) -> list[list[int]]:
        """CTC greedy decoding of ``f32[batch, frame, vocab]``: each row's argmax, repeats merged, blanks dropped."""
        blank = self.config.token_id("<blank>")
        return [collapse(best, blank) for best in np.asarray(logits).argmax(-1)]

    def text(self, token_ids) -> str:
        """BPE pieces joined (``▁`` -> space), special ``<...>`` tokens dropped, as ESPnet's ``text_nospecial``."""
        pieces = [self.config.token_list[int(i)] for i in token_ids]
        return "".join(p for p in pieces if not (p.startswith("<") and p.endswith(">"))).replace("▁", " ").strip()


def collapse(best: np.ndarray, blank: int) -> list[int]:
    """A best path ``i[frame]``: repeats merged, blanks dropped."""
    return [int(t) for t in best[np.r_[True, best[1:] != best[:-1]]] if t != blank]


def load_owsm(source: str | os.PathLike, *, adapter: str | None = None, dtype=jnp.float32) -> LoadedOwsm:
    """Load an ESPnet OWSM repository (``checkpoints.load_checkpoint``: a folder or a hub id) as Flax modules.
    ``adapter``: the registry's head loaders' argument; OWSM has no language adapters."""
    if adapter is not None:
        raise CheckpointError(f"model {str(source)!r}: OWSM checkpoints have no language adapter ({adapter!r})")
    ckpt = load_checkpoint(source)
    if ckpt.config.ctc is not None:  # OWSM-CTC: the encoder holds its CTC head; no attention decoder
        return LoadedOwsm(
            OwsmCtcEncoder(ckpt.config, ckpt.state_dict, dtype), None, dataclasses.replace(ckpt, state_dict={})
        )
    encoder = OwsmEncoder(ckpt.config, ckpt.state_dict, dtype)
    decoder = OwsmDecoder(ckpt.config, ckpt.state_dict, dtype)
    return LoadedOwsm(encoder, decoder, dataclasses.replace(ckpt, state_dict={}))
