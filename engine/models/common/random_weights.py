"""Random-weight model folders, the part every family shares: the sizes asked for, one kind of folder a family
writes, random tensors from a table of shapes, and the files (safetensors, JSON) written with NumPy alone.

A family's ``random_folder`` module lists its ``RandomKind``s (``whisper``, ``parakeet``, ...): the hub model whose
layout the folder copies, default sizes small enough to encode the demo set in seconds, and the function that writes
the folder's files from ``Sizes`` and a NumPy generator. ``engine.models.random_folder`` finds them through the
registry and writes a folder safely; ``babelgrid random-model`` is its command. Nothing here imports torch or
transformers: the folders are for trying the jobs where neither (nor the hub) is at hand.

Weights (``random_tensors``): a matrix, a convolution or an embedding is drawn from a normal of variance 1 / fan-in
(its size past the first axis), so that every layer's states stay of order one and finite; a norm's scale (and a
BatchNorm's running variance) is one; biases, shifts and running means are zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Mapping

import numpy as np
from safetensors.numpy import save_file

WEIGHTS_FILE = "model.safetensors"
# Bounds on a random model's sizes, checked before a tensor is drawn (``--layers 1000000`` held 13.8 GB): real models
# have at most a few dozen blocks and widths of a few thousand; a block holds at most about 24 width^2 weights
# (an encoder's and a decoder's, feed-forwards 4x), and a folder at most MAX_BYTES of them
MAX_LAYERS = 256
MAX_WIDTH = 8192
MAX_BYTES = 16 * 2**30


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The sizes of a random model: its encoder's blocks (``layers``; a decoder has as many unless the kind fixes
    them), its width and its attention heads."""

    layers: int
    width: int
    heads: int

    def __post_init__(self):
        for name in ("layers", "width", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, most in (("layers", MAX_LAYERS), ("width", MAX_WIDTH), ("heads", self.width)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most}, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}: each head needs a share")
        weights = 4 * 24 * self.layers * self.width**2  # bytes of float32, about
        if weights > MAX_BYTES:
            raise ValueError(
                f"{self.text()} is about {weights / 2**30:.0f} GiB of weights, more than a random model's "
                f"{MAX_BYTES // 2**30} GiB: give fewer layers or a smaller width"
            )

    def text(self) -> str:
        return f"{self.layers} blocks x {self.width} wide, {self.heads} heads"


@dataclasses.dataclass(frozen=True)
class RandomKind:
    """One kind of random folder a family writes: ``name`` (what ``--kind`` takes), the hub model whose files it
    copies (``imitates``), default ``sizes``, and ``write(folder, sizes, rng)``, which writes the files into the
    (empty) ``folder``."""

    name: str
    imitates: str
    sizes: Sizes
    write: Callable[[pathlib.Path, Sizes, np.random.Generator], None] = dataclasses.field(repr=False)
    note: str = ""  # what the folder leaves out or fixes, for the job's report


def normal_state(
    shapes: Mapping[str, tuple[int, ...]], seed: int, scale: float, near_one: Callable[[str], bool]
) -> dict[str, np.ndarray]:
    """A state dict of ``shapes`` for tests and benchmarks: each tensor N(0, ``scale``^2) in float32, drawn in the
    order of ``shapes`` from ``seed``, and 1 + that where ``near_one(name)`` (norm scales, BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in shapes.items():
        w = (rng.standard_normal(shape) * scale).astype(np.float32)
        sd[name] = (1 + w) if near_one(name) else w
    return sd


def random_tensors(shapes: Mapping[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A float32 tensor for every name of ``shapes``, initialised as the module docstring says."""
    return {name: _tensor(name, tuple(shape), rng) for name, shape in shapes.items()}


def _tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    parts = name.split(".")
    leaf, module = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1 and _is_norm(module)):
        return np.ones(shape, np.float32)
    if len(shape) < 2 or "bias" in leaf or leaf == "running_mean":
        return np.zeros(shape, np.float32)
    fan_in = math.prod(shape[1:])
    return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def _is_norm(module: str) -> bool:
    """Whether a module name is a norm's (``layer_norm``, ``norm_mha``, ``after_norm``, Whisper's ``attn_ln``)."""
    return "norm" in module or module == "ln" or module.startswith("ln_") or module.endswith("_ln")


def save_weights(path: pathlib.Path, tensors: Mapping[str, np.ndarray]) -> None:
    """``tensors`` as a safetensors file, as ``save_pretrained`` writes one (``format: pt`` in its metadata)."""
    # reshaped: ascontiguousarray makes a 0-d tensor (Gemma 4's clip bounds) 1-d
    save_file({k: np.ascontiguousarray(v).reshape(np.shape(v)) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})  # fmt: skip


def write_checkpoint(folder: pathlib.Path, tensors: Mapping[str, np.ndarray], config: dict, files=None) -> None:
    """``tensors`` as ``WEIGHTS_FILE`` and ``config`` as ``config.json`` in ``folder``, as ``save_pretrained`` writes a
    model, and each of ``files`` (file name -> its JSON value: a preprocessor's, a generation config) beside them."""
    save_weights(folder / WEIGHTS_FILE, tensors)
    write_json(folder / "config.json", config)
    for name, value in (files or {}).items():
        write_json(folder / name, value)


def write_json(path: pathlib.Path, value) -> None:
    """``value`` as indented JSON, its non-ASCII characters kept (a vocabulary's letters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def random_model_hint(kind: str) -> str:
    """What a hub error adds: the command that writes a random folder of the same kind, to try the jobs offline."""
    return f"or try the jobs on random weights, no hub needed: babelgrid random-model --kind {kind} --out DIR"
