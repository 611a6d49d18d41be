"""USM Conformer checkpoints (Gemma 3n, Gemma 4 E2B/E4B): the audio tower and ``embed_audio``'s soft-token path out of
the full model's Hugging Face folder, by the released names under ``audio_tower.`` and ``embed_audio.``.

Two layouts hold them: the released full models (``model_type`` ``gemma3n`` or ``gemma4``; tensors
``model.audio_tower.*`` and ``model.embed_audio.*`` beside the language and vision models) and a tower saved alone
(``gemma3n_audio``, ``gemma4_audio``: its tensors without a prefix, no ``embed_audio``). Only these tensors are read,
and from the hub only the shards holding them: the language model (several GB) never is. 3n's ``embed_audio`` also
holds the hard-token embedding table the LLM reads for its audio special tokens, which no audio passes through: it is
not read. ``sha256`` is the digest of the tensors read, in name order.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from engine.models.common.io import folder_or_hub, read_config
from engine.models.common.prefixed import read_prefixed
from engine.models.common.random_weights import random_model_hint
from engine.models.common.weights import check_layer_claim, checked_state
from engine.models.speechllm.tower_checkpoints import (
    TowerCheckpoint,
    digest,
    download_with_preprocessor,
    names_tower,
    read_preprocessor,
)
from engine.models.speechllm.usm_config import (
    GEMMA3N,
    HUB_IDS,
    HUB_NAMES,
    MODEL_TYPES,
    TOWER_TYPES,
    UsmConfig,
    from_hf,
)

TOWER, EMBED = "audio_tower.", "embed_audio."
PREFIXES = ("model." + TOWER, "model." + EMBED)
CLIP_BOUNDS = ("input_min", "input_max", "output_min", "output_max")  # Gemma4ClippableLinear's stored bounds
_UNREAD = re.compile(r"embed_audio\.(embedding|hard_embedding_norm)\.weight")  # 3n's hard-token path


def names(kind: str, i: int | None = None) -> dict:
    """The released names (under ``audio_tower.``, without ``.weight``) of the subsampler and output (``i`` None) or
    of block ``i``'s pieces: ``ffw_start``/``ffw_end`` (``pre``, ``w1``, ``w2``, ``post``), ``attn_pre``, ``attn``
    (``q``, ``k``, ``v``, ``post``, ``pos``, ``per_dim_scale``: a full name), ``attn_post``, ``lconv`` (``pre``,
    ``start``, ``conv``, ``conv_norm``, ``end``), ``norm``. A clipped linear's weight is ``{name}.linear.weight``."""
    t = TOWER
    if i is None:
        sub = f"{t}subsample_conv_projection."
        convs = ("conv_0", "conv_1") if kind == GEMMA3N else ("layer0", "layer1")
        return {"conv0": sub + convs[0], "conv1": sub + convs[1], "proj": sub + "input_proj_linear",
                "output_proj": f"{t}output_proj"}  # fmt: skip
    if kind == GEMMA3N:
        p = f"{t}conformer.{i}."
        a = p + "attention.attn."
        ffw = {k: {"pre": f"{p}{k}.pre_layer_norm", "w1": f"{p}{k}.ffw_layer_1", "w2": f"{p}{k}.ffw_layer_2",
                   "post": f"{p}{k}.post_layer_norm"} for k in ("ffw_layer_start", "ffw_layer_end")}  # fmt: skip
        attn = {"q": a + "q_proj", "k": a + "k_proj", "v": a + "v_proj", "post": p + "attention.post",
                "pos": a + "relative_position_embedding.pos_proj", "per_dim_scale": a + "per_dim_scale"}  # fmt: skip
        return {"ffw_start": ffw["ffw_layer_start"], "ffw_end": ffw["ffw_layer_end"], "attn": attn,
                "attn_pre": p + "attention.pre_attn_norm", "attn_post": p + "attention.post_norm",
                "lconv": _lconv(p), "norm": p + "norm"}  # fmt: skip
    p = f"{t}layers.{i}."
    a = p + "self_attn."
    ffw = {k: {"pre": f"{p}{k}.pre_layer_norm", "w1": f"{p}{k}.ffw_layer_1", "w2": f"{p}{k}.ffw_layer_2",
               "post": f"{p}{k}.post_layer_norm"} for k in ("feed_forward1", "feed_forward2")}  # fmt: skip
    attn = {"q": a + "q_proj", "k": a + "k_proj", "v": a + "v_proj", "post": a + "post", "pos": a + "relative_k_proj",
            "per_dim_scale": a + "per_dim_scale"}  # fmt: skip
    return {"ffw_start": ffw["feed_forward1"], "ffw_end": ffw["feed_forward2"], "attn": attn,
            "attn_pre": p + "norm_pre_attn", "attn_post": p + "norm_post_attn", "lconv": _lconv(p),
            "norm": p + "norm_out"}  # fmt: skip


def _lconv(p: str) -> dict:
    lc = p + "lconv1d."
    return {"pre": lc + "pre_layer_norm", "start": lc + "linear_start", "conv": lc + "depthwise_conv1d",
            "conv_norm": lc + "conv_norm", "end": lc + "linear_end"}  # fmt: skip


def state_shapes(c: UsmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the tower (and ``embed_audio``) needs, by released name (no ``model.``), with its shape."""
    w, (c0, c1), top = c.width, c.conv_channels, names(c.kind)
    shapes = {f"{top['conv0']}.conv.weight": (c0, 1, 3, 3), f"{top['conv0']}.norm.weight": (c0,),
              f"{top['conv1']}.conv.weight": (c1, c0, 3, 3), f"{top['conv1']}.norm.weight": (c1,),
              f"{top['proj']}.weight": (w, c1 * c.sub_mels)}  # fmt: skip

    def lin(name: str, shape: tuple[int, int]) -> None:
        if c.clipped_linears:
            shapes[f"{name}.linear.weight"] = shape
            shapes.update({f"{name}.{b}": () for b in CLIP_BOUNDS})
        else:
            shapes[f"{name}.weight"] = shape

    for i in range(c.layers):
        n = names(c.kind, i)
        for ffw in (n["ffw_start"], n["ffw_end"]):
            shapes[f"{ffw['pre']}.weight"] = shapes[f"{ffw['post']}.weight"] = (w,)
            lin(ffw["w1"], (4 * w, w))
            lin(ffw["w2"], (w, 4 * w))
        for proj in ("q", "k", "v", "post"):
            lin(n["attn"][proj], (w, w))
        shapes[f"{n['attn']['pos']}.weight"] = (w, w)
        shapes[n["attn"]["per_dim_scale"]] = (c.head_dim,)
        lc = n["lconv"]
        lin(lc["start"], (2 * w, w))
        lin(lc["end"], (w, w))
        shapes[f"{lc['conv']}.weight"] = (w, 1, c.conv_kernel)
        for norm in (n["attn_pre"], n["attn_post"], n["norm"], lc["pre"], lc["conv_norm"]):
            shapes[f"{norm}.weight"] = (w,)
    if c.has_output_proj:
        shapes |= {f"{top['output_proj']}.weight": (c.output_dim, w), f"{top['output_proj']}.bias": (c.output_dim,)}
    if c.has_projector:
        shapes[f"{EMBED}embedding_projection.weight"] = (c.text_width, c.final_width)
        if c.kind == GEMMA3N:
            shapes[f"{EMBED}soft_embedding_norm.weight"] = (w,)
    return shapes


@dataclasses.dataclass(frozen=True)
class UsmCheckpoint(TowerCheckpoint):
    config: UsmConfig
    preprocessor: dict | None  # preprocessor_config.json, if the folder has one


def is_usm(source) -> bool:
    """Whether a speech-LLM ``--model`` is a Gemma audio model: a folder whose ``config.json`` names one of
    ``MODEL_TYPES``, or a hub id (not a local path) whose name says Gemma 3n or Gemma 4 E2B/E4B."""
    return names_tower(source, MODEL_TYPES, HUB_NAMES)


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
    """The hub repo's config, its feature extractor's settings and the shards holding the tower only."""
    kind = "gemma4" if "gemma-4" in repo_id.lower() else "gemma3n"
    local = f"load('/path/to/{repo_id.split('/')[1]}') with config.json and its safetensors; {random_model_hint(kind)}"
    return download_with_preprocessor(repo_id, revision, PREFIXES, local)


def load_checkpoint(source: str | os.PathLike) -> UsmCheckpoint:
    """Read a Gemma 3n or Gemma 4 folder (or a tower's own), or a hub id ``org/name[@revision]``."""
    path, name = folder_or_hub(source, _download, HUB_IDS[GEMMA3N][0])
    raw = read_config(path)
    config = from_hf(raw)
    alone = raw.get("model_type") in TOWER_TYPES
    _, stored = read_prefixed(path, ("",) if alone else PREFIXES)
    sd = {(TOWER + k if alone else k.removeprefix("model.")): v for k, v in stored.items()}
    what = f"a {config.kind} audio tower of {config.layers} layers"
    block = "conformer." if config.kind == GEMMA3N else "layers."
    check_layer_claim(sd, f"{TOWER}{block}", config.layers, "audio layer count", str(path))
    sd = checked_state(sd, state_shapes(config), source=str(path), what=what, unread=_UNREAD)
    return UsmCheckpoint(name, config, sd, digest(sd), path, read_preprocessor(path))
