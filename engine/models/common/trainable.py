"""What the families' ``Trainer``s (``engine.models.interface``) share: a module's parameters as one flat dict and back,
and a batch of stored states turned into fixed-size memory rows.

Flat names join a variable's path with dots (``blocks.0.src_attn.q.kernel``); every variable of the module split must
be a Param (a family splits a view of its decoder holding only what it trains).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.errors import ShapeError


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _path(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


class SplitModule:
    """``_split``: ``nnx.split(self.model)``, taken once, for the jitted calls of a frozen dataclass with a ``model``
    field (a loaded model, or one of its encoders' wrappers)."""

    @functools.cached_property
    def _split(self):
        return nnx.split(self.model)


def split_params(module: nnx.Module) -> tuple[nnx.GraphDef, dict[str, jax.Array]]:
    """The module's graph and its parameters as a flat ``{name: array}`` dict."""
    graphdef, state = nnx.split(module)
    return graphdef, {_key(path): var[...] for path, var in nnx.to_flat_state(state)}


def merge_params(graphdef: nnx.GraphDef, params: Mapping[str, jax.Array]) -> nnx.Module:
    return nnx.merge(graphdef, nnx.State.from_flat_path({_path(k): nnx.Param(v) for k, v in params.items()}))


def replace_params(module: nnx.Module, params: Mapping[str, jax.Array]) -> None:
    """Writes the flat ``params`` (a subset is fine) into ``module``'s own variables, each in its variable's dtype.
    ``module`` is changed: pass a clone (``nnx.clone``) of a model that must stay as it is."""
    graphdef, current = split_params(module)
    merged = {**current, **{k: jnp.asarray(v, current[k].dtype) for k, v in params.items()}}
    # nnx.merge reuses the state's Variable objects: update from a fresh split, not from the merged module itself.
    nnx.update(module, nnx.split(merge_params(graphdef, merged))[1])


def fill_frames(states: np.ndarray, n_frames, frames: int, fill: np.ndarray | None = None) -> np.ndarray:
    """f32[batch, frames, embed]: each row's first ``n_frames`` states, then ``fill[n:frames]`` (a silent window's
    states, ``f[frames, embed]``) or zeros. ``states f[batch, frame, embed]``: only the valid frames are read."""
    n_frames = np.asarray(n_frames).reshape(-1)
    if n_frames.size and n_frames.max() > min(frames, states.shape[1]):
        raise ShapeError(f"n_frames must be at most {min(frames, states.shape[1])}, got {n_frames.max()}")
    out = np.zeros((states.shape[0], frames, states.shape[2]), np.float32)
    if fill is not None:
        out[:] = np.asarray(fill, np.float32)[:frames]
    for i, n in enumerate(n_frames):
        out[i, : int(n)] = states[i, : int(n)]
    return out


def torch_layout(params: Mapping[str, jax.Array], name_of: Callable[[str], str]) -> dict[str, np.ndarray]:
    """Flat parameters (or their gradients) under ``name_of``'s names in PyTorch layouts: a ``kernel`` transposed
    to the reference's ``weight``."""
    return {name_of(k): np.asarray(v).T if k.endswith(".kernel") else np.asarray(v) for k, v in params.items()}


@dataclasses.dataclass(frozen=True)
class DecoderGraph:
    """``TrainGraph`` of a decoder module with ``logits(tokens, memory, valid)`` (hashable: the train step's static
    argument); a family whose decoder reads every memory frame overrides ``logits``."""

    graphdef: nnx.GraphDef

    def logits(self, params, tokens, memory, valid):
        return merge_params(self.graphdef, params).logits(tokens, memory, valid)
