"""The registry of model families: what each family is and how it is loaded, by the functions themselves.

A family is one entry of ``FAMILIES``: its name, the ``model_type`` values of the ``config.json`` it reads (or, for a
layout without one, the function that recognises it: OWSM's ESPnet folders), its encoder's loader (an ``Encoder``,
``engine.models.interface``, which also gives the encoder's ``cost``), and the loaders of the heads it offers beside
the encoder: a text decoder (tokens from a layer's states: decode, finetune), a CTC head (decode's per-layer logit
lens) and cross-attention heads (align's word times). A job asks the entry for the head it needs and dispatches on
the loader it gets, never on the family's name. Each entry also lists the kinds of random-weight folder its family
writes (``random_kinds``: ``engine.models.random_folder``, ``babelgrid random-model``) and the names its hub
repositories go by (``hub_names``). Adding a family means adding its folder and one entry here.

The registry imports every family; the families import only ``engine.models.interface``, so no arrow runs back here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable

from engine.errors import CheckpointError
from engine.models.common.random_weights import RandomKind
from engine.models.fastconformer import encoder as fastconformer_encoder
from engine.models.fastconformer import random_folder as fastconformer_random
from engine.models.fastconformer.cohere import HUB_NAMES as COHERE_HUB_NAMES
from engine.models.fastconformer.config import DECODER_TYPES as FASTCONFORMER_DECODER_TYPES
from engine.models.fastconformer.config import HUB_IDS as FASTCONFORMER_HUB_IDS
from engine.models.fastconformer.config import MODEL_TYPES as FASTCONFORMER_TYPES
from engine.models.fastconformer.loaded import load_fastconformer
from engine.models.fastconformer.text_decoder import load_decoder as load_canary_decoder
from engine.models.fastconformer.trainer import load_trainer as load_canary_trainer
from engine.models.interface import (
    CROSS_ATTENTION,
    CTC,
    DECODER,
    DEFAULT_FAMILY,
    FASTCONFORMER_LAYERS,
    OWSM_LAYERS,
    SPEECHLLM_LAYERS,
    W2VBERT_LAYERS,
    WAV2VEC2_LAYERS,
    WHISPER_LAYERS,
    Encoder,
)
from engine.models.owsm import encoder as owsm_encoder
from engine.models.owsm.layout import is_espnet_s2t
from engine.models.owsm.loaded import load_owsm
from engine.models.owsm.random_folder import KINDS as OWSM_RANDOM
from engine.models.owsm.text_decoder import load_decoder as load_owsm_decoder
from engine.models.owsm.trainer import load_trainer as load_owsm_trainer
from engine.models.speechllm import encoder as speechllm_encoder
from engine.models.speechllm import qwen3_random
from engine.models.speechllm import random_folder as speechllm_random
from engine.models.speechllm.calls import OUTPUTS as SPEECHLLM_OUTPUTS
from engine.models.speechllm.config import HUB_IDS as SPEECHLLM_HUB_IDS
from engine.models.speechllm.config import MODEL_TYPES as SPEECHLLM_TYPES
from engine.models.speechllm.qwen3_checkpoints import HUB_NAMES as QWEN3_HUB_NAMES
from engine.models.speechllm.qwen3_config import HUB_IDS as QWEN3_HUB_IDS
from engine.models.speechllm.qwen3_config import MODEL_TYPES as QWEN3_TYPES
from engine.models.speechllm.realtime_config import HUB_IDS as REALTIME_HUB_IDS
from engine.models.speechllm.realtime_config import MODEL_TYPES as REALTIME_TYPES
from engine.models.speechllm.realtime_random import KINDS as REALTIME_RANDOM
from engine.models.speechllm.usm_config import HUB_IDS as USM_HUB_IDS
from engine.models.speechllm.usm_config import HUB_NAMES as USM_HUB_NAMES
from engine.models.speechllm.usm_config import MODEL_TYPES as USM_TYPES
from engine.models.speechllm.usm_random import KINDS as USM_RANDOM
from engine.models.w2vbert import encoder as w2vbert_encoder
from engine.models.w2vbert import random_folder as w2vbert_random
from engine.models.wav2vec2 import encoder as wav2vec2_encoder
from engine.models.wav2vec2 import random_folder as wav2vec2_random
from engine.models.wav2vec2.loaded import load_wav2vec2
from engine.models.whisper import encoder as whisper_encoder
from engine.models.whisper import random_folder as whisper_random
from engine.models.whisper.aligner import load_aligner
from engine.models.whisper.cost import decode_cost as whisper_decode_cost
from engine.models.whisper.text_decoder import load_decoder as load_whisper_decoder
from engine.models.whisper.trainer import load_trainer as load_whisper_trainer


@dataclasses.dataclass(frozen=True)
class Family:
    """One registry entry: a family's name, the ``config.json`` model types it reads, its encoder and the heads it
    offers, each head as the loader of the model that carries it (None: the family has no such head)."""

    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this family loads
    encoder: Callable[..., Encoder]  # (source, adapter=, dtype=) -> Encoder
    layer_meaning: str
    # (source, dtype=) -> the model's text decoder (``engine.models.interface.Decoder``): tokens from a layer's states
    decoder: Callable | None = None
    # the config.json model types whose checkpoints carry the decoder, where not all do (FastConformer: Canary's and
    # Cohere ASR's);
    # None: every checkpoint of the family has it
    decoder_types: tuple[str, ...] | None = None
    # (source, adapter=, dtype=) -> the model with the CTC head, whose ``ctc_lens()`` is decode's logit lens;
    # ``ctc_always``: every checkpoint has it, else only those whose config.json names a *ForCTC architecture
    # (wav2vec2's, ParakeetForCTC's)
    ctc: Callable | None = None
    ctc_always: bool = False
    # a store's dims dict -> the ``DecoderCost`` decode --plan prices its decoder with (None: no plan)
    decode_cost: Callable | None = None
    cross_attention: Callable | None = None  # (source, dtype=) -> the decoder whose cross-attention times words
    trainer: Callable | None = None  # (source, dtype=) -> the Trainer finetune trains (engine.models.interface)
    hub_ids: tuple[str, ...] = ()  # examples, for the docs and messages
    layout: Callable[[str | os.PathLike], bool] | None = None  # recognises a layout with no config.json (ESPnet's)
    outputs: tuple[str, ...] = ("layers",)  # what a store of the family may hold (encode --tower_output)
    random_kinds: tuple[RandomKind, ...] = ()  # the random-weight folders it writes (engine.models.random_folder)
    # a regular expression the name of its hub repositories matches (lower case): a hub id not in the local cache
    # (whose config.json cannot be read) is taken for the family its name matches, else for Whisper
    hub_names: str | None = None
    # (a layer store's StoreDims) -> layer -> its place on compare's depth axis; None: ``layer / (L + 1)``
    depth: Callable | None = None

    @property
    def heads(self) -> frozenset[str]:
        """The heads every checkpoint of the family has (a CTC head only where ``ctc_always``)."""
        ctc = self.ctc if self.ctc_always else None
        decoder = self.decoder if self.decoder_types is None else None
        have = {DECODER: decoder, CROSS_ATTENTION: self.cross_attention, CTC: ctc}
        return frozenset(head for head, loader in have.items() if loader is not None)

    def store_depth(self, info) -> Callable[[int], float]:
        """Each layer's place on compare's depth axis in a layer store of the family (``info``: its ``StoreInfo``):
        ``layer / (L + 1)`` for L blocks, 0 the first stored layer and 1 Whisper's ``ln_post``, unless the family
        places its layers itself (``depth``: the speech LLMs' tower outputs sit past their blocks)."""
        if self.depth is not None:
            return self.depth(info.dims)
        blocks = info.n_blocks
        return lambda layer: layer / (blocks + 1)

    def store_heads(self, info) -> frozenset[str]:
        """The heads of the model that wrote a layer store (``info``: its ``StoreInfo``): ``heads``, and the decoder
        where the store's model type is one of ``decoder_types``."""
        config = info.dims.to_dict().get("config") or {}
        carried = self.decoder_types is not None and config.get("model_type") in self.decoder_types
        return self.heads | ({DECODER} if carried else set())

    def load(self, source, *, adapter: str | None = None, dtype=None, output: str = "layers") -> Encoder:
        if output not in self.outputs:
            raise CheckpointError(
                f"--tower_output {output!r}: model {str(source)!r} is a {self.name} model, whose stores hold "
                f"{' or '.join(self.outputs)}; the tower outputs are the speech LLMs' (Qwen2-Audio, Voxtral, Audio "
                "Flamingo 3)"
            )
        if output != "layers":
            return self.encoder(source, adapter=adapter, dtype=dtype, output=output)
        return self.encoder(source, adapter=adapter, dtype=dtype)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "whisper", ("whisper",), whisper_encoder.load, WHISPER_LAYERS, decoder=load_whisper_decoder,
            decode_cost=whisper_decode_cost,
            cross_attention=load_aligner, hub_ids=("openai/whisper-base", "openai/whisper-large-v3"),
            random_kinds=whisper_random.KINDS, trainer=load_whisper_trainer,
        ),
        Family(
            "wav2vec2", ("wav2vec2", "hubert"), wav2vec2_encoder.load, WAV2VEC2_LAYERS, ctc=load_wav2vec2,
            hub_ids=("facebook/wav2vec2-xls-r-300m", "facebook/mms-1b-all", "facebook/hubert-large-ll60k"),
            random_kinds=wav2vec2_random.KINDS, hub_names=r"wav2vec2(?!-bert)|hubert|mms-|xls-r|omniasr",
        ),
        Family(
            "w2vbert", ("wav2vec2-bert", "seamless_m4t_v2"), w2vbert_encoder.load, W2VBERT_LAYERS,
            hub_ids=("facebook/w2v-bert-2.0", "facebook/seamless-m4t-v2-large"), random_kinds=w2vbert_random.KINDS,
            hub_names=r"w2v-bert|wav2vec2-bert|seamless-m4t",
        ),
        Family(
            "owsm", (), owsm_encoder.load, OWSM_LAYERS, decoder=load_owsm_decoder, ctc=load_owsm, ctc_always=True,
            hub_ids=("espnet/owsm_v3.1_ebf_base", "espnet/owsm_v4_base_102M", "espnet/owsm_ctc_v4_1B", "espnet/powsm"),
            layout=is_espnet_s2t, random_kinds=OWSM_RANDOM, trainer=load_owsm_trainer, depth=owsm_encoder.store_depth,
        ),
        Family(
            "speechllm", (*SPEECHLLM_TYPES, *QWEN3_TYPES, *USM_TYPES, *REALTIME_TYPES), speechllm_encoder.load,
            SPEECHLLM_LAYERS,
            hub_ids=(*SPEECHLLM_HUB_IDS.values(), *(i for ids in (*QWEN3_HUB_IDS.values(), *USM_HUB_IDS.values())
                                                     for i in ids), *REALTIME_HUB_IDS),
            outputs=SPEECHLLM_OUTPUTS, depth=speechllm_encoder.store_depth,
            random_kinds=speechllm_random.KINDS + qwen3_random.KINDS + USM_RANDOM + REALTIME_RANDOM,
            hub_names=r"qwen2-audio|voxtral|audio-flamingo|" + QWEN3_HUB_NAMES + "|" + USM_HUB_NAMES,
        ),
        Family(
            "fastconformer", FASTCONFORMER_TYPES, fastconformer_encoder.load, FASTCONFORMER_LAYERS,
            decoder=load_canary_decoder, decoder_types=FASTCONFORMER_DECODER_TYPES, ctc=load_fastconformer,
            trainer=load_canary_trainer, hub_ids=FASTCONFORMER_HUB_IDS, random_kinds=fastconformer_random.KINDS,
            hub_names=r"parakeet|canary|" + COHERE_HUB_NAMES,
        ),
    )
}  # fmt: skip


def family_of_model_type(model_type: str, source) -> Family:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise CheckpointError(
        f"model {str(source)!r} has model_type {model_type!r} in its config.json, which no babelgrid family loads; "
        f"supported model types: {', '.join(known)} (BUILD.md#models)"
    )


def detect_family(source: str | os.PathLike | None) -> Family:
    """The family of a checkpoint, from its ``config.json`` ``model_type`` without loading weights.

    Whisper's every layout (HF, OpenAI ``.pt``, CTranslate2, the packaged default) reads as Whisper: OpenAI files and
    CTranslate2 folders carry no ``model_type``. A source without ``config.json`` is first offered to the families
    that recognise a layout of their own (``Family.layout``: OWSM's ESPnet repositories). A hub id is looked up in the
    local hub cache only (a cached ``config.json``); an id not cached there is taken for the family its name says
    (``Family.hub_names``: ``Qwen/Qwen2-Audio-7B-Instruct`` is a speech LLM's), so that its own loader fetches it or
    names its own example when it cannot; any other is taken for Whisper, as babelgrid always did.
    """
    if source is None:
        return FAMILIES[DEFAULT_FAMILY]
    config = _config_json(source)
    if config is None:
        for family in FAMILIES.values():
            if family.layout is not None and family.layout(source):
                return family
        named = _family_by_hub_name(source)
        if named is not None:
            return named
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        return FAMILIES[DEFAULT_FAMILY]
    return family_of_model_type(str(model_type), source)


def _family_by_hub_name(source) -> Family | None:
    """The family whose ``hub_names`` the name of a hub id ``org/name[@revision]`` matches (not a local path)."""
    repo_id = str(source).partition("@")[0]
    if repo_id.count("/") != 1 or pathlib.Path(source).expanduser().exists():
        return None
    name = repo_id.lower()
    return next((f for f in FAMILIES.values() if f.hub_names and re.search(f.hub_names, name)), None)


def _config_json(source) -> dict | None:
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        file = path / "config.json"
    elif path.exists():
        return None  # a file: OpenAI .pt
    else:
        file = _cached_hub_config(str(source))
    if file is None or not pathlib.Path(file).is_file():
        return None
    try:
        return json.loads(pathlib.Path(file).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"config.json of model {str(source)!r} cannot be read ({e}); restore it") from None


def _cached_hub_config(repo: str) -> str | None:
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision or None)
    except Exception:  # noqa: BLE001 - no cache or a malformed id: not a family we can tell, so Whisper as before
        return None
    return found if isinstance(found, str) else None


def load_encoder(source, *, adapter: str | None = None, dtype=None, output: str = "layers") -> Encoder:
    """Load ``source`` (folder, file or hub id) with its family's loader; ``adapter``: an MMS language; ``output``:
    what its store holds (``Family.outputs``: a speech LLM's tower output or projector, else its layers)."""
    family = detect_family(source)
    if adapter is not None and family.name != "wav2vec2":
        raise CheckpointError(
            f"--adapter {adapter!r} loads an MMS language adapter, but model {str(source)!r} is a {family.name} "
            "model; adapters exist only for wav2vec2-family models (facebook/mms-1b-all)"
        )
    return family.load(source, adapter=adapter, dtype=dtype, output=output)


def load_model(source=None, *, adapter: str | None = None, dtype=None):
    """The model of ``source`` (a folder, file or hub id of any family; None: the packaged whisper-base) as its
    family loads it, for a notebook: ``LoadedWhisper``, ``LoadedWav2Vec2`` (``adapter``: an MMS language),
    ``LoadedW2vBert`` or ``LoadedOwsm``; ``dtype``: the compute dtype (float32 by default)."""
    return load_encoder(source, adapter=adapter, dtype=dtype).loaded


def require_head(source, head: str, job: str, hint: str = "") -> Family:
    """The family of ``source`` if it has ``head``, else a CheckpointError naming the model and what it lacks,
    raised before any weight is read."""
    family = detect_family(source)
    if (
        head in family.heads
        or (head == CTC and _has_ctc_head(source))
        or (head == DECODER and _has_decoder(family, source))
    ):
        return family
    name = "the packaged whisper-base" if source is None else repr(str(source))
    raise CheckpointError(
        f"{job} needs a model with a {head} head; model {name} is a {family.name} model without one. {hint}".rstrip()
    )


def refuse_without_head(job: str, head: str, source, store_info=None, hint: str = "") -> None:
    """Refuses ``job`` at once, before any weight is read or output written, when the store's model (``store_info``:
    a layer store's ``StoreInfo``) or the model given (``source``) lacks ``head``, naming the model and what it
    lacks; ``hint`` says what to do instead."""
    if store_info is not None and head not in FAMILIES[store_info.family].store_heads(store_info):
        raise CheckpointError(
            f"{job} needs a model with a {head} head; the layer store was written by {store_info.model_name!r}, a "
            f"{store_info.family} model without one. {hint}".rstrip()
        )
    require_head(source, head, job, hint)


def _has_decoder(family: Family, source) -> bool:
    """Whether a checkpoint of a family whose decoder only some model types carry (``Family.decoder_types``) is one
    of those, from its config.json."""
    if family.decoder is None or family.decoder_types is None or source is None:
        return False
    return (_config_json(source) or {}).get("model_type") in family.decoder_types


def _has_ctc_head(source) -> bool:
    """Whether a wav2vec2-family config names a *ForCTC architecture (the CTC head's weights come with it). No model
    given (``None``: the packaged whisper-base) has none."""
    config = (_config_json(source) if source is not None else None) or {}
    return any(str(a).endswith("ForCTC") for a in config.get("architectures") or ())
