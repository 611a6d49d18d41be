"""OWSM's attention decoder behind ``engine.models.interface.Trainer``: what the finetune job trains.

Trained part (``TrainDecoder``): the decoder's token embedding, blocks, ``after_norm`` and ``output_layer``, a view of
``decoder.OwsmDecoder`` without the CTC head (finetune neither uses nor changes it) and with ESPnet's fixed sinusoidal
positions as constants. Flat names follow our tree (``blocks.0.src_attn.q.kernel``, kernels ``[in, out]``);
``espnet_name`` gives ESPnet's (``decoder.decoders.0.src_attn.linear_q.weight``, ``[out, in]``).

Teacher forcing is ``OwsmDecoder.logits``: ESPnet's ``TransformerDecoder.forward`` on a full window, whose memory mask
is all ones as in OWSM's training and inference (every clip is padded to the window). The prompt is
``<sos> <lang> <task> <notimestamps>`` (``decoder.prompt``; no previous text, ESPnet's ``<na>``), the text the
SentencePiece pieces of the model's ``bpemodel`` mapped to ids as ESPnet's ``TokenIDConverter`` maps them, then
``<eos>``. The job's loss leaves the prompt's labels out (ESPnet's training also scores ``<lang> <task>``).

Memory: OWSM's decoder reads the whole window, so the frames past an utterance are the silent window's states (the
encoder run once on a window of zeros), as for Whisper (``SILENCE_FILL``). Export: the checkpoint's folder (config,
statistics, SentencePiece model) with its weights as ``.safetensors``, the decoder's replaced, and a ``meta.yaml``
naming them: what ``load_owsm`` reads.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import re
import shutil
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from engine.errors import CheckpointError
from engine.languages import fleurs_to_whisper
from engine.models.common import trainable
from engine.models.common.trainable import fill_frames, merge_params, replace_params, split_params, torch_layout
from engine.models.interface import SILENCE_FILL, Checkpointed
from engine.models.owsm import features as feats
from engine.models.owsm.checkpoints import find_files, read_weights
from engine.models.owsm.decoder import MAX_POSITIONS, OwsmDecoder, greedy_fn, prompt
from engine.models.owsm.encoder import OwsmEncoder
from engine.models.owsm.languages import owsm_language
from engine.models.owsm.loaded import LoadedOwsm, load_owsm
from engine.models.owsm.model import sinusoids

TASK_TOKENS = {"transcribe": "<asr>", "translate": "<st_eng>"}
GROUPS = {
    "decoder": r".*",
    "cross_attention": r"blocks\.\d+\.(src_attn|norm2)\..*",
    "self_attention": r"blocks\.\d+\.(self_attn|norm1)\..*",
    "mlp": r"blocks\.\d+\.(feed_forward\.w_[12]|norm3)\..*",
    "embeddings": r"embedding",
    "final_ln": r"after_norm\..*",
}
PADDING_NOTE = (
    "frames past each utterance are a silent window's states, for training and evaluation alike; jobs.decode "
    "recomputes them from audio"
)
WEIGHTS = "valid.acc.ave.safetensors"  # the exported weights' name, beside the config


class TrainDecoder(nnx.Module):
    """The trained part of an ``OwsmDecoder`` (its own Variables, shared): no CTC head, positions as constants."""

    logits = OwsmDecoder.logits  # teacher forcing, through ``embed`` below

    def __init__(self, decoder: OwsmDecoder):
        self.config = decoder.config
        self.embedding = decoder.embedding
        self.blocks = decoder.blocks
        self.after_norm = decoder.after_norm
        self.output_layer = decoder.output_layer

    def embed(self, tokens, start):
        """As ``OwsmDecoder.embed``, its positions computed from their formula rather than stored."""
        n = start + tokens.shape[1]
        if n > MAX_POSITIONS:
            raise ValueError(f"{n} token positions exceed the decoder's {MAX_POSITIONS}")
        x = self.embedding[...][tokens] * math.sqrt(self.config.width)
        return x + jnp.asarray(sinusoids(n, self.config.width)[start:]).astype(x.dtype)


def espnet_name(name: str) -> str:
    """ESPnet's state-dict name of a flat parameter name (``blocks.0.src_attn.q.kernel`` ->
    ``decoder.decoders.0.src_attn.linear_q.weight``); a ``kernel`` is the transpose of ESPnet's ``weight``."""
    if name == "embedding":
        return "decoder.embed.0.weight"
    name = re.sub(r"^blocks\.", "decoders.", name)
    name = re.sub(r"_attn\.(q|k|v|out)\.", r"_attn.linear_\1.", name)
    return "decoder." + re.sub(r"\.(kernel|scale)$", ".weight", name)


def espnet_tensors(params: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Flat parameters (or their gradients) in ESPnet's names and PyTorch layouts."""
    return torch_layout(params, espnet_name)


@dataclasses.dataclass(frozen=True)
class DecoderGraph(trainable.DecoderGraph):
    """``TrainGraph`` of OWSM's decoder."""

    def logits(self, params, tokens, memory, valid):
        del valid  # the frames past each utterance are filled: every frame is read, as ESPnet's decoder reads them
        return merge_params(self.graphdef, params).logits(tokens, memory)


@dataclasses.dataclass(frozen=True, eq=False)
class OwsmTrainer(Checkpointed):
    """``Trainer`` over a ``LoadedOwsm`` (``loaded``)."""

    loaded: LoadedOwsm
    padding = SILENCE_FILL
    padding_note = PADDING_NOTE
    groups = GROUPS
    n_text_ctx = MAX_POSITIONS

    @property
    def eot(self) -> int:
        return self.loaded.config.token_id("<eos>")

    @property
    def memory_frames(self) -> int:
        return self.loaded.config.n_frames

    @property
    def store_dims(self) -> dict:
        return OwsmEncoder(self.loaded).store_dims.to_dict()

    def language(self, code: str) -> str:
        """``prompt``'s language of store code ``code``: its ISO 639-1 code as Whisper's table writes it, which
        ``prompt`` takes to OWSM's ISO 639-3 token (``nb_no`` -> ``no`` -> ``<nor>``, where ``nb`` would try ``<nob>``
        first); LanguageError for a language outside that table."""
        return fleurs_to_whisper(code)

    def prompt(self, task: str, language: str) -> list[int]:
        """``<sos> <lang> <task> <notimestamps>``: the language's ISO 639-3 token, task ``<asr>`` or ``<st_eng>``."""
        config = self.loaded.config
        return prompt(config, owsm_language(language, config.languages()), TASK_TOKENS[task])

    @functools.cached_property
    def _pieces(self):
        """The SentencePiece model's ``encode`` to pieces, and the token list's ids."""
        bpe = self.loaded.checkpoint.bpemodel
        if bpe is None:
            raise CheckpointError(f"OWSM model {self.name!r} has no SentencePiece model (config.yaml's "
                                  "bpemodel), which finetune needs to tokenize target texts; pass the model's full "
                                  "folder")  # fmt: skip
        try:
            import sentencepiece
        except ImportError:
            raise CheckpointError("fine-tuning OWSM tokenizes target texts with its SentencePiece model: pip install "
                                  "sentencepiece") from None  # fmt: skip
        processor = sentencepiece.SentencePieceProcessor(model_file=str(bpe))
        return processor, {t: i for i, t in enumerate(self.loaded.config.token_list)}

    def tokens(self, text: str) -> list[int]:
        processor, ids = self._pieces
        unk = ids["<unk>"]
        return [ids.get(p, unk) for p in processor.encode(text, out_type=str)]

    @functools.cached_property
    def _silence(self) -> np.ndarray:
        config = self.loaded.config
        window = feats.features(np.zeros(config.frontend.n_samples, np.float32), config.frontend,
                                self.loaded.checkpoint.stats)  # fmt: skip
        return np.asarray(self.loaded.encode(window[None])[-1][0], np.float32)

    def memory(self, states: np.ndarray, n_frames: np.ndarray) -> np.ndarray:
        return fill_frames(states, n_frames, self.memory_frames, self._silence)

    def split(self) -> tuple[DecoderGraph, dict[str, jax.Array]]:
        graphdef, params = split_params(TrainDecoder(self.loaded.decoder))
        return DecoderGraph(graphdef), params

    def tuned(self, params: Mapping[str, jax.Array]) -> OwsmTrainer:
        decoder = nnx.clone(self.loaded.decoder)
        replace_params(TrainDecoder(decoder), params)
        return OwsmTrainer(dataclasses.replace(self.loaded, decoder=decoder))

    def greedy(self, memory, valid, prompt: Sequence[int], max_new_tokens: int) -> list[str]:
        """Greedy text of each row after ``prompt``, timestamps suppressed (``OwsmDecoder.greedy``)."""
        del valid  # every frame is read
        config = self.loaded.config
        prompts = jnp.asarray(np.tile(np.asarray(prompt, np.int32), (len(memory), 1)))
        graphdef, state = nnx.split(self.loaded.decoder)
        ids, n = greedy_fn(graphdef, state, prompts, jnp.asarray(memory), max_tokens=max_new_tokens,
                           suppress=config.timestamp_range, eos=self.eot)  # fmt: skip
        ids, n = np.asarray(ids), np.asarray(n)
        return [self.loaded.text(ids[i, : n[i]]) for i in range(len(ids))]

    def export_problem(self) -> str | None:
        """What would make ``export`` fail: the safetensors package, the checkpoint's files it copies."""
        try:
            import safetensors.numpy  # noqa: F401  (export writes the weights with it)
        except ImportError as e:
            return f"exporting the model needs the safetensors package ({e}): pip install safetensors"
        if self.loaded.checkpoint.step is not None:  # its folder is the final model's, with the final weights
            return (
                f"'{self.loaded.checkpoint.name}' is a training step, whose folder is not a model repository to copy; "
                "finetune it without exporting, or export a model's own folder"
            )
        try:
            find_files(self.loaded.checkpoint.path)
        except CheckpointError as e:
            return f"the model's folder, which export copies, is incomplete ({e}); restore the --model folder"
        return None

    def export(self, folder) -> None:
        """The checkpoint's folder under ``folder``, its weights the tuned ones (module docstring)."""
        from safetensors.numpy import save_file

        root, folder = self.loaded.checkpoint.path, pathlib.Path(folder)
        config, weights = find_files(root)
        skip = {weights.resolve(), (root / "meta.yaml").resolve()}
        shutil.copytree(root, folder, dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if (pathlib.Path(d) / n).resolve() in skip
                                                 or n.startswith(".")])  # fmt: skip
        state = dict(read_weights(weights))
        _, params = split_params(TrainDecoder(self.loaded.decoder))
        for name, value in espnet_tensors(params).items():
            state[name] = value.astype(state[name].dtype)
        out = config.relative_to(root).parent / WEIGHTS
        tensors = {k: np.array(v, order="C") for k, v in state.items()}  # 0-d stays 0-d
        save_file(tensors, str(folder / out), metadata={"format": "pt"})
        meta = {"yaml_files": {"s2t_train_config": config.relative_to(root).as_posix()},
                "files": {"s2t_model_file": out.as_posix()}}  # fmt: skip
        (folder / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")


def load_trainer(source, *, dtype=jnp.float32) -> OwsmTrainer:
    """The trainer of an OWSM checkpoint (``load_owsm``'s sources) or of a ``LoadedOwsm`` already loaded."""
    if isinstance(source, LoadedOwsm):
        return OwsmTrainer(source)
    if source is None:
        raise CheckpointError("finetune on an OWSM store needs its model: pass --model (a folder or hub id)")
    loaded = load_owsm(source, dtype=dtype)
    if loaded.decoder is None:
        raise CheckpointError(
            f"'{loaded.checkpoint.name}' is an OWSM-CTC model: finetune trains an attention decoder's loss (OWSM v3.1 "
            "and v4, Canary), which it has none of"
        )
    return OwsmTrainer(loaded)
