"""A model's ``nnx`` split for jitted functions: the graph definition as a static argument that hashes once.

Jitted functions take the model as ``(graph, state)`` (``split``) and rebuild it inside with ``merge``, so that one
compiled program serves every call of the same shapes.
"""

from __future__ import annotations

import functools

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
