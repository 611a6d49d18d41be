"""Canary's Transformer decoder (and Cohere ASR's) behind ``engine.models.interface.Trainer``: what the finetune job
trains.

Trained part (``TrainDecoder``): the token embedding (also ``proj_out``'s weight where tied), ``embedding_layernorm``,
the blocks, the final norm and ``proj_out``, a view of ``decoder.CanaryDecoder`` with NeMo's fixed positions as
constants; Cohere ASR's also trains its stored position table (``positions``, in the ``embeddings`` group) and its
encoder projection (``memory_proj``, in ``cross_attention``: it feeds only the cross-attentions), as transformers
does. Flat names follow our tree (``blocks.0.cross_attn.q.kernel``, kernels ``[in, out]``); ``hf_name`` gives
transformers' (``model.decoder.layers.0.encoder_attn.q_proj.weight``, ``[out, in]``).

Teacher forcing is ``CanaryDecoder.logits``, transformers' ``CanaryForConditionalGeneration`` logits given the encoder
output: the prompt ``LoadedCanary.prompt(source, target)`` (task transcribe: target = source; translate: target
English), the text's ids as the checkpoint's ``tokenizer.json`` encodes it without special tokens, then eos.

Memory: the cross-attention masks the frames past each utterance's valid ones, so the store's valid frames are all
the decoder reads, as from audio: the rest of a row is zeros, masked (``MASKED``), and training sees exactly what
decoding sees. Export: the checkpoint's folder with one ``model.safetensors`` of every tensor, the decoder's replaced,
what ``load_canary`` and transformers' ``from_pretrained`` read.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import CheckpointError
from engine.languages import fleurs_to_whisper
from engine.models.common.prefixed import read_prefixed
from engine.models.common.trainable import (
    DecoderGraph,
    fill_frames,
    replace_params,
    split_params,
    torch_layout,
)
from engine.models.fastconformer import cohere
from engine.models.fastconformer.canary import LoadedCanary, load_canary
from engine.models.fastconformer.decoder import CanaryDecoder, positions
from engine.models.interface import MASKED, FamilyDims

TARGET = "en"  # translate: X -> English
GROUPS = {
    "decoder": r".*",
    "cross_attention": r"blocks\.\d+\.(cross_attn|ln2)\..*|memory_proj\..*",
    "self_attention": r"blocks\.\d+\.(self_attn|ln1)\..*",
    "mlp": r"blocks\.\d+\.(fc1|fc2|ln3)\..*",
    "embeddings": r"embedding|positions|embed_norm\..*",
    "final_ln": r"final_norm\..*",
}
PADDING_NOTE = (
    "frames past each utterance are masked out of the cross-attention, for training and evaluation alike, as when "
    "decoding from audio"
)
WEIGHT_FILES = re.compile(r"(model|pytorch_model).*\.(safetensors|bin)(\.index\.json)?")
_HF = (
    (r"^embedding$", "model.decoder.embed_tokens.weight"),
    (r"^embed_norm\.", "model.decoder.embedding_layernorm."),
    (r"^positions$", "model.decoder.pos_emb.weight"),
    (r"^memory_proj\.", "model.decoder.proj."),
    (r"^final_norm\.", "model.decoder.norm."),
    (r"^out_weight$", "proj_out.weight"),
    (r"^out_bias$", "proj_out.bias"),
    (r"^blocks\.", "model.decoder.layers."),
    (r"\.ln1\.", ".input_layernorm."),
    (r"\.ln2\.", ".post_attention_layernorm."),
    (r"\.ln3\.", ".final_layernorm."),
    (r"\.cross_attn\.", ".encoder_attn."),
    (r"_attn\.([qkvo])\.", r"_attn.\1_proj."),
    (r"\.(fc[12])\.", r".mlp.\1."),
    (r"\.(kernel|scale)$", ".weight"),
)


class TrainDecoder(nnx.Module):
    """The trained part of a ``CanaryDecoder`` (its own Variables, shared): NeMo's computed positions as constants,
    Cohere ASR's stored table and encoder projection as parameters."""

    logits = CanaryDecoder.logits  # teacher forcing, through ``embed`` below
    cross = CanaryDecoder.cross
    project = CanaryDecoder.project

    def __init__(self, decoder: CanaryDecoder):
        self.config = decoder.config
        self.embedding = decoder.embedding
        self.positions = decoder.positions if decoder.config.stored_positions else None
        self.memory_proj = decoder.memory_proj
        self.embed_norm = decoder.embed_norm
        self.blocks = decoder.blocks
        self.final_norm = decoder.final_norm
        self.out_weight = decoder.out_weight
        self.out_bias = decoder.out_bias

    def embed(self, tokens, start):
        """As ``CanaryDecoder.embed``; NeMo's positions computed from their formula, Cohere's read from the table."""
        n = start + tokens.shape[1]
        if n > self.config.max_positions:
            raise ValueError(f"{n} token positions exceed the decoder's {self.config.max_positions}")
        x = self.embedding[...][tokens]
        table = positions(n, self.config.width) if self.positions is None else self.positions[...][:n]
        return self.embed_norm(x + jnp.asarray(table[start:]).astype(x.dtype))


def hf_name(name: str) -> str:
    """transformers' name of a flat parameter name; a ``kernel`` is the transpose of transformers' ``weight``."""
    for pattern, replacement in _HF:
        name = re.sub(pattern, replacement, name)
    return name


def hf_tensors(params: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Flat parameters (or their gradients) in transformers' names and PyTorch layouts."""
    return torch_layout(params, hf_name)


@dataclasses.dataclass(frozen=True, eq=False)
class CanaryTrainer:
    """``Trainer`` over a ``LoadedCanary`` (``loaded``)."""

    loaded: LoadedCanary
    padding = MASKED
    padding_note = PADDING_NOTE
    groups = GROUPS

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def eot(self) -> int:
        return self.loaded.config.eos[0]

    @property
    def n_text_ctx(self) -> int:
        return self.loaded.config.max_positions

    @property
    def memory_frames(self) -> int:
        return self.loaded.window_frames()

    @property
    def store_dims(self) -> dict:
        c = self.loaded.encoder_config
        return FamilyDims.from_dict({"n_layers_out": c.n_layers_out, "embed": c.width, "config": c.to_dict()}).to_dict()

    def language(self, code: str) -> str:
        """``prompt``'s language of store code ``code``: its ISO 639-1 code as Whisper's table writes it, Canary's
        ``<|xx|>`` (``de_de`` -> ``de``); LanguageError for a language outside that table."""
        return fleurs_to_whisper(code)

    def prompt(self, task: str, language: str) -> list[int]:
        return self.loaded.prompt(language, language if task == "transcribe" else TARGET)

    def tokens(self, text: str) -> list[int]:
        return list(self.loaded.tokenizer.backend.encode(text, add_special_tokens=False).ids)

    def memory(self, states: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
        return fill_frames(states, n_frames, self.memory_frames)

    def split(self) -> tuple[DecoderGraph, dict[str, jax.Array]]:
        graphdef, params = split_params(TrainDecoder(self.loaded.decoder))
        return DecoderGraph(graphdef), params

    def tuned(self, params: Mapping[str, jax.Array]) -> CanaryTrainer:
        decoder = nnx.clone(self.loaded.decoder)
        replace_params(TrainDecoder(decoder), params)
        return CanaryTrainer(dataclasses.replace(self.loaded, decoder=decoder))

    def greedy(self, memory, valid, prompt: Sequence[int], max_new_tokens: int) -> list[str]:
        """Greedy text of each row after ``prompt`` (``LoadedCanary.greedy``), within the decoder's positions."""
        room = self.n_text_ctx - len(prompt)
        ids, n = self.loaded.greedy(memory, valid, prompt, min(max_new_tokens, room))
        return [self.loaded.text(ids[i, : n[i]]) for i in range(len(ids))]

    def export_problem(self) -> str | None:
        """What would make ``export`` fail: the safetensors package, the checkpoint's weights it rewrites."""
        try:
            import safetensors.numpy  # noqa: F401  (export writes the weights with it)
        except ImportError as e:
            return f"exporting the model needs the safetensors package ({e}): pip install safetensors"
        if not (self.loaded.path / "config.json").is_file():
            return f"the model's folder '{self.loaded.path}', which export copies, lacks config.json; restore it"
        return None

    def export(self, folder) -> None:
        """The checkpoint's folder under ``folder``, its weights one ``model.safetensors``, the decoder's tuned."""
        from safetensors.numpy import save_file

        root, folder = self.loaded.path, pathlib.Path(folder)
        try:
            _, state = read_prefixed(root, ("",))
        except CheckpointError as e:
            raise CheckpointError(f"cannot export: {e}") from None
        skip = lambda _, names: [n for n in names if WEIGHT_FILES.fullmatch(n) or n.startswith(".")]
        shutil.copytree(root, folder, dirs_exist_ok=True, ignore=skip)
        state = {k: np.asarray(v) for k, v in state.items()}
        _, params = split_params(TrainDecoder(self.loaded.decoder))
        # each tensor under the name the folder holds it by (Cohere ASR's: save_pretrained's NeMo names)
        held = {cohere.hf_name(k): k for k in state} if self.loaded.encoder_config.model_type == cohere.COHERE else {}
        for hf, value in hf_tensors(params).items():
            name = held.get(hf, hf)
            state[name] = value.astype(state[name].dtype) if name in state else value
        tensors = {k: np.array(v, order="C") for k, v in state.items()}  # 0-d stays 0-d
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def load_trainer(source, *, dtype=jnp.float32) -> CanaryTrainer:
    """The trainer of a Canary checkpoint (``load_canary``'s sources) or of a ``LoadedCanary`` already loaded."""
    if isinstance(source, LoadedCanary):
        return CanaryTrainer(source)
    if source is None:
        raise CheckpointError("finetune on a Canary store needs its model: pass --model (a folder or hub id)")
    return CanaryTrainer(load_canary(source, dtype=dtype))
