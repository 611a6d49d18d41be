"""A model's ``nnx`` split for jitted functions: the graph definition as a static argument that hashes once; and the
token embedding transposed once for decoding's logits (``embedding_t``).

Jitted functions take the model as ``(graph, state)`` (``split``) and rebuild it inside with ``merge``, so that one
compiled program serves every call of the same shapes.
"""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
from flax import nnx


class _Graph:
    """A model's ``nnx`` graph definition as a jit static argument that hashes once: ``split`` returns the same
    object for equal definitions, so each jitted call of a decode compares it by identity. A ``GraphDef`` as the
    static argument itself was hashed and compared in full at every call (~1.5 ms of dispatch per stage)."""

    __slots__ = ("graphdef", "_hash")

    def __init__(self, graphdef):
        self.graphdef = graphdef
        self._hash = hash(graphdef)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        if self is other:
            return True
        return isinstance(other, _Graph) and self._hash == other._hash and self.graphdef == other.graphdef


@functools.lru_cache(maxsize=16)
def _interned(graphdef) -> _Graph:
    return _Graph(graphdef)


def split(model: nnx.Module) -> tuple[_Graph, nnx.State]:
    """``nnx.split(model)`` with the graph definition interned (``_Graph``), for a jitted function's static argument."""
    graphdef, state = nnx.split(model)
    return _interned(graphdef), state


def merge(graph: _Graph, state: nnx.State) -> nnx.Module:
    return nnx.merge(graph.graphdef, state)


_EMBEDDING_T: dict[int, jax.Array] = {}  # id(token embedding array) -> its transpose, dropped with the array


def embedding_t(model: nnx.Module) -> jax.Array:
    """A ``Whisper``'s decoder token embedding as ``f[embed, vocab]``, for the logits product of decoding.

    Against ``E: f[vocab, embed]``, ``x @ E^T`` ran at ~20 GB/s on CPU; against ``E^T`` stored so, a plain product:
    whisper-base 4.9-5.8 -> 4.0-4.6 ms at 8 rows, 9.1-9.8 -> 8.4-8.7 ms at 40, about level at 1, logits within 3e-6
    (``python bench/decode_profile.py --logits``, bench/RESULTS.md). The transpose costs ~60 ms
    and a copy of the embedding, so it is made once per embedding array and freed with it (a new model, or weights
    changed by fine-tuning, get their own).
    """
    emb = model.decoder.token_embedding[...]
    key = id(emb)
    if key not in _EMBEDDING_T:
        _EMBEDDING_T[key] = jnp.transpose(emb)
        weakref.finalize(emb, _EMBEDDING_T.pop, key, None)
    return _EMBEDDING_T[key]
