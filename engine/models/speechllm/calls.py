"""The calls every speech-LLM tower's encoder adapter makes of its model, the same for each tower (Qwen2-Audio,
Voxtral, AF3, Qwen3, USM): a model takes ``(features, valid)`` and returns its layers, one ``--tower_output``, or its
layers with heads masked."""

from __future__ import annotations

import jax.numpy as jnp

from engine.errors import CheckpointError
from engine.models.common.parallel import Signature

OUTPUTS = ("layers", "final", "projector")  # what a store of the family holds (encode --tower_output)


def check_output(output: str, has_projector: bool, alone: str) -> None:
    """``--tower_output`` against the family's outputs; ``alone``: the refusal of ``projector`` for a tower saved
    without its projector (each tower names what the full model's folder is)."""
    if output not in OUTPUTS:
        raise CheckpointError(f"--tower_output {output!r} is not one of {OUTPUTS}")
    if output == "projector" and not has_projector:
        raise CheckpointError(alone)


def asked_layers(layers, n_out: int) -> tuple[int, ...]:
    """A tower call's ``layers`` (None: every one of its ``n_out`` stored layers) as a tuple, each in 0..n_out-1."""
    layers = tuple(range(n_out)) if layers is None else tuple(int(i) for i in layers)
    bad = [i for i in layers if not 0 <= i < n_out]
    if bad or not layers:
        raise ValueError(f"layers {bad or '()'} out of range 0..{n_out - 1}")
    return layers


def _encode(model, features, valid, *, layers, out_dtype):
    return model(features, valid, layers, out_dtype)


def _output(name):
    def call(model, features, valid, *, layers, out_dtype):
        del layers  # one layer
        return model.output_states(features, valid, name, out_dtype)

    return call


def signatures(inputs: tuple) -> dict[str, Signature]:
    """Each ``--tower_output``'s sharded call, on the tower's ``inputs`` (``Signature``'s name, dtype, rank)."""
    return {"layers": Signature(_encode, inputs), **{o: Signature(_output(o), inputs) for o in OUTPUTS[1:]}}


def masked(model, features, valid, *, layers, head_mask):
    """``HeadMasked``'s call: every layer asked for, float32, with ``head_mask`` scaling each head."""
    return model(features, valid, layers, jnp.float32, head_mask)
