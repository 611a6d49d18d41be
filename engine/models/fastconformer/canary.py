"""Canary's decoder as babelgrid reads it: the Transformer decoder's weights from a ``CanaryForConditionalGeneration``
folder, the task prompt, and greedy decoding from any encoder layer's states (issue 47).

    from engine.models.fastconformer.canary import load_canary
    c = load_canary("/path/to/canary-1b-v2")
    prompt = c.prompt("fr", "en")                        # speech translation French -> English, with punctuation
    ids, n = c.greedy(memory, valid, prompt, max_tokens=128)   # memory f32[batch, frame, width]: any layer's states
    text = c.text(ids[0, : n[0]])

Prompt (``prompt``): ``<|startofcontext|> <|startoftranscript|> <|emo:undefined|> <|src|> <|tgt|> <|pnc|>
<|noitn|> <|notimestamp|> <|nodiarize|>`` (``<|nopnc|>`` without punctuation), the tokens
``CanaryProcessor.apply_transcription_request(audio, source_language, target_language, punctuation)`` gives through
the hub's chat template (transformers' ``test_processing_canary``'s expected prompt); transcription is ``src ==
tgt``, translation ``src != tgt``. Ids come from the checkpoint's ``tokenizer.json`` (``tokenizer``); a language the
tokenizer has no ``<|xx|>`` token for is refused naming the ones it has.

Cohere ASR (``cohere_asr``, ``engine.models.fastconformer.cohere``) loads here too: the same decoder with its encoder
projection and stored positions, its own prompt (``cohere.PROMPT``: transcription only, after the decoder start
``generate`` adds), its
tensors under ``save_pretrained``'s NeMo names (``model.transf_decoder.``, ``model.encoder_decoder_proj.``,
``log_softmax.``) or transformers' own.

Weights: the tensors under ``model.decoder.`` and ``proj_out.`` (``engine.models.common.prefixed``: of a sharded
checkpoint only their shards); ``proj_out.weight`` is the token embedding when ``tie_word_embeddings`` (what
``save_pretrained`` then leaves out). ``sha256`` is that of the encoder's weight files, as ``load_fastconformer``
computes it, so that a store's checkpoint hash names the same model.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError
from engine.models.common.io import file_sha256, folder_or_hub, read_json, some
from engine.models.common.prefixed import download_prefixed, prefixed_files, read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.fastconformer import cohere
from engine.models.fastconformer import features as feats
from engine.models.fastconformer.beam import beam_fn
from engine.models.fastconformer.config import DECODER_TYPES, FastConformerConfig, config_from_hf
from engine.models.fastconformer.decoder import (
    CanaryDecoder,
    DecoderConfig,
    avg_logprob_fn,
    decoder_config,
    decoder_shapes,
    greedy_fn,
)
from engine.models.fastconformer.tokenizer import Tokenizer

WINDOW_SAMPLES = 30 * feats.SAMPLE_RATE  # engine.models.interface.WINDOW_SECONDS at 16 kHz
PREFIXES = ("model.decoder.", "proj_out.")
EXTRA_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
LANGUAGE = re.compile(r"<\|([a-z]{2,3})\|>")
PROMPT = ("<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "{source}", "{target}", "{pnc}",
          "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>")  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedCanary:
    decoder: CanaryDecoder
    config: DecoderConfig
    encoder_config: FastConformerConfig
    tokenizer: Tokenizer
    name: str
    sha256: str  # of the encoder's weight files: the store's checkpoint hash
    path: pathlib.Path

    @property
    def n_layers_out(self) -> int:
        return self.encoder_config.n_layers_out

    def window_frames(self) -> int:
        """Encoder frames of a full 30 s window: how a store's frames of audio over 30 s split into windows."""
        return int(self.encoder_config.sub_length(int(feats.valid_frames(WINDOW_SAMPLES))))

    @functools.cached_property
    def _split(self):
        return nnx.split(self.decoder)

    def languages(self) -> list[str]:
        """The language codes of the tokenizer's ``<|xx|>`` tokens."""
        vocab = self.tokenizer.backend.get_vocab(with_added_tokens=True)
        return sorted(m.group(1) for t in vocab if (m := LANGUAGE.fullmatch(t)))

    def token_id(self, token: str) -> int:
        i = self.tokenizer.backend.token_to_id(token)
        if i is None:
            raise CheckpointError(f"model {self.name!r}: its tokenizer.json has no {token} token")
        return int(i)

    @property
    def translates(self) -> bool:
        """Whether the model has a translation prompt (Canary); Cohere ASR only transcribes."""
        return self.encoder_config.model_type != cohere.COHERE

    def prompt(self, source: str, target: str, punctuation: bool = True) -> list[int]:
        """The prompt ids of speech in ``source`` written in ``target`` (the module docstring)."""
        if source != target and not self.translates:
            raise CheckpointError(
                f"model {self.name!r} (Cohere ASR) only transcribes: it has no prompt for {source!r} -> {target!r}"
            )
        known = self.languages()
        for code in (source, target):
            if code not in known:
                raise CheckpointError(
                    f"language {code!r} has no <|{code}|> token in model {self.name!r}, which knows {some(known)}"
                )
        fill = dict(source=f"<|{source}|>", target=f"<|{target}|>", pnc="<|pnc|>" if punctuation else "<|nopnc|>")
        if self.translates:
            return [self.token_id(t.format(**fill)) for t in PROMPT]
        ids = [self.token_id(t.format(**fill)) for t in cohere.PROMPT]
        # generate puts the decoder start before a prompt that does not begin with it (cohere.PROMPT)
        return ids if ids[0] == self.config.start else [self.config.start, *ids]

    def greedy(self, memory, valid, prompt, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """memory f[batch, frame, width] (a layer's states, padding past ``valid`` i32[batch] frames masked), prompt
        i32[p] or i32[batch, p] -> (tokens i32[batch, max_tokens], n i32[batch]): ``tokens[r, :n[r]]`` are row r's
        generated tokens, eos excluded (``CanaryForConditionalGeneration.generate``'s, greedy)."""
        memory, valid, prompt = self._inputs(memory, valid, prompt)
        graphdef, state = self._split
        ids, n = greedy_fn(graphdef, state, prompt, memory, valid, max_tokens=int(max_tokens))
        return np.asarray(ids), np.asarray(n)

    def beam(self, memory, valid, prompt, beams: int, max_tokens: int, length_penalty: float = 1.0):
        """As ``greedy``, by ``generate(num_beams=beams)``'s beam search (``engine.models.fastconformer.beam``); also
        returns each row's finished scores f32[batch, beams], best first."""
        memory, valid, prompt = self._inputs(memory, valid, prompt)
        graphdef, state = self._split
        out = beam_fn(graphdef, state, prompt, memory, valid, beams=int(beams), max_tokens=int(max_tokens),
                      length_penalty=float(length_penalty))  # fmt: skip
        return tuple(np.asarray(x) for x in out)

    def avg_logprob(self, memory, valid, prompt, ids, n) -> np.ndarray:
        """f32[batch]: each row's mean log-probability of its tokens and the eos after them (teacher-forced)."""
        memory, valid, prompt = self._inputs(memory, valid, prompt)
        graphdef, state = self._split
        ids, n = jnp.asarray(ids, jnp.int32), jnp.asarray(n, jnp.int32)
        return np.asarray(avg_logprob_fn(graphdef, state, prompt, ids, n, memory, valid))

    def logits(self, tokens, memory, valid) -> np.ndarray:
        """Teacher-forced logits f32[batch, n, vocab] of tokens i32[batch, n] (transformers' ``logits``)."""
        graphdef, state = self._split
        memory, valid, tokens = self._inputs(memory, valid, tokens)
        return np.asarray(_logits(graphdef, state, tokens, memory, valid))

    def _inputs(self, memory, valid, prompt):
        memory = jnp.asarray(memory, self.decoder.embedding.dtype)
        prompt = np.asarray(prompt, np.int32)
        if prompt.ndim == 1:
            prompt = np.broadcast_to(prompt, (memory.shape[0], len(prompt)))
        return memory, jnp.asarray(valid, jnp.int32), jnp.asarray(prompt)

    def text(self, ids) -> str:
        """``tokenizer.decode(ids, skip_special_tokens=True)``."""
        return self.tokenizer.text(ids)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logits(graphdef, state, tokens, memory, valid):
    return nnx.merge(graphdef, state).logits(tokens, memory, valid)


def load_canary(source: str | os.PathLike, *, dtype=jnp.float32) -> LoadedCanary:
    """Canary's decoder from a ``CanaryForConditionalGeneration`` folder or hub id (or Cohere ASR's from a
    ``CohereAsrForConditionalGeneration`` one), in ``dtype``."""
    path, name = folder_or_hub(source, _download, "nvidia/canary-1b-v2")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"checkpoint '{path}' has no config.json; pass the folder save_pretrained wrote")
    config = read_json(path / "config.json")
    encoder = config_from_hf(config, str(path / "config.json"))
    if encoder.model_type not in DECODER_TYPES:
        raise CheckpointError(
            f"model {name!r} is a {encoder.model_type} model, which has no text decoder; Canary "
            "(CanaryForConditionalGeneration) and Cohere ASR (CohereAsrForConditionalGeneration) have one"
        )
    is_cohere = encoder.model_type == cohere.COHERE
    generation = path / "generation_config.json"
    dec = decoder_config(config, read_json(generation) if generation.is_file() else None, str(path / "config.json"))
    if (dec.memory_width or dec.width) != encoder.width:
        raise CheckpointError(
            f"model {name!r}: the decoder reads memory {dec.memory_width or dec.width} wide, not the encoder's "
            f"{encoder.width}"
        )
    _, stored = read_prefixed(path, cohere.DECODER_PREFIXES if is_cohere else PREFIXES)
    if is_cohere:  # save_pretrained's NeMo names -> transformers'
        stored = {cohere.hf_name(k): v for k, v in stored.items()}
    shapes = decoder_shapes(dec)
    missing = [k for k in shapes if k not in stored]
    wrong = [k for k in shapes if k in stored and tuple(stored[k].shape) != shapes[k]]
    if missing or wrong:
        raise CheckpointError(
            f"checkpoint '{path}': its Canary decoder lacks {some(missing) or 'nothing'} and has wrong shapes in "
            f"{some(wrong) or 'nothing'} for its config.json; is config.json the one saved with these weights?"
        )
    sd = {k: np.asarray(stored[k], np.float32) for k in shapes}
    files, _ = prefixed_files(path, (encoder.prefix,))
    return LoadedCanary(
        decoder=CanaryDecoder(dec, sd, dtype), config=dec, encoder_config=encoder,
        tokenizer=Tokenizer.from_folder(path, name), name=name, sha256=file_sha256(files), path=path,
    )  # fmt: skip


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub folder with the encoder's and the decoder's shards (the encoder's decide the store's hash)."""

    def prefixes_of(config: dict, where: str) -> tuple[str, ...]:
        encoder = config_from_hf(config, where)
        return (encoder.prefix, *(cohere.DECODER_PREFIXES if encoder.model_type == cohere.COHERE else PREFIXES))

    local = f"load_canary('/path/to/canary-1b-v2'); {random_model_hint('canary')}"
    folder = download_prefixed(repo_id, revision, prefixes_of, local)
    import huggingface_hub  # lazy: only hub ids need it (download_prefixed reached the hub or its cache already)

    try:  # the tokenizer and generation settings, into the same snapshot folder as the weights
        huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=EXTRA_FILES)
    except Exception as e:  # noqa: BLE001 - connection and not-found errors come as several hub and httpx types
        raise CheckpointError(
            f"'{repo_id}': {', '.join(EXTRA_FILES)} could not be fetched ({type(e).__name__}); download the repo and "
            "pass its folder"
        ) from None
    return folder
