"""The states one process of an all-pairs run holds: pieces of languages (``tiles.Piece``: a language, or a part
of it, at one layer) loaded on demand within the memory budget, and the job's own count of what it holds.

Each held piece counts its ``Language.part_bytes`` (an upper bound of its arrays' bytes: states, packed bins) from
the moment it is loaded until it is dropped; ``held`` is their sum, ``peak`` its highest value, ``read`` the bytes
read per language. Before the pieces of an item are loaded, held pieces the item does not read are dropped, the one
used again farthest ahead in the run's order first (Belady's rule on the order every process walks: a piece of an
earlier layer is never used again), until the new ones fit. ``tiles.plan_units`` makes every item fit the budget, so
``held`` never exceeds it. The plan runs the same rule over the whole order (``simulate``) for the reads and the
peak it prints.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from engine.dtypes import DTYPES
from engine.pipelines.seqsim.measures import Side
from engine.pipelines.seqsim.tiling.tiles import Item, Language, Piece
from kernels.seqsim_packed import restrict


class HeldStates:
    """What one process holds (module docstring); ``load(piece)`` reads a piece, ``items`` is the run's order."""

    def __init__(self, budget: int, languages: Mapping[str, Language], items: Sequence[Item], load: Callable):
        self.budget, self.languages, self.load = budget, languages, load
        self.uses: dict[Piece, list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            for piece in dict.fromkeys(item.pieces()):
                self.uses[piece].append(position)
        self.held: dict[Piece, object] = {}
        self.bytes = 0
        self.peak = 0
        self.read: Counter[str] = Counter()  # bytes read per language
        self.loads = 0  # pieces read

    def size(self, piece: Piece) -> int:
        return self.languages[piece.lang].part_bytes(piece.parts)[piece.part]

    def get(self, item: Item, position: int) -> tuple:
        """The two sides ``item`` reads, loading what is not held; ``position``: the item's place in the order."""
        pieces = item.pieces()
        missing = [p for p in dict.fromkeys(pieces) if p not in self.held]
        need = sum(self.size(p) for p in missing)
        others = sorted((p for p in self.held if p not in pieces), key=lambda p: -self._next_use(p, position))
        for piece in others:
            if self.bytes + need <= self.budget:
                break
            self.drop(piece)
        for piece in missing:
            self.bytes += self.size(piece)  # counted before the read: the read's buffers are held meanwhile
            self.peak = max(self.peak, self.bytes)
            self.held[piece] = self.load(piece)
            self.read[piece.lang] += self.size(piece)
            self.loads += 1
        return tuple(self.held[p] for p in pieces)

    def drop(self, piece: Piece) -> None:
        del self.held[piece]
        self.bytes -= self.size(piece)

    def _next_use(self, piece: Piece, position: int) -> float:
        uses = self.uses.get(piece, ())
        i = bisect.bisect_right(uses, position)
        return uses[i] if i < len(uses) else math.inf

    def reads_per_language(self) -> dict[str, float]:
        """Bytes read of each language over its whole size at one layer: 1.0 per layer when read once."""
        return {lang: read / max(self.languages[lang].whole_bytes, 1) for lang, read in sorted(self.read.items())}


def simulate(budget: int, languages: Mapping[str, Language], items: Sequence[Item]) -> HeldStates:
    """One process walking every item of ``items`` under ``budget``, reading nothing: what it would read and hold."""
    held = HeldStates(budget, languages, items, lambda piece: None)
    for position, item in enumerate(items):
        held.get(item, position)
    return held


def load_piece(reader, language: Language, done_index: np.ndarray, piece: Piece, dtype: str, transform=None) -> Side:
    """The Side of ``piece`` from the layer store: its done utterances (``done_index``: the language's, i64[done]),
    states up to its own longest utterance in the compute ``dtype``, and for a part of a packed language the bins of
    the whole language's packing it holds (so that SeqSim scores its blocks as the whole pair would). ``transform``:
    a function of the host states ``f[u, frames, d]`` applied before they go to the device (``--remove_language``)."""
    rows, bins = language.parts(piece.parts)[piece.part]
    index, lengths = done_index[rows], language.lengths[rows]
    if not language.sizing.states or not len(rows):
        return Side(index, lengths, None)
    frames = int(lengths.max())
    packing = None
    if piece.parts > 1 and language.packing is not None:
        packing, utterances = restrict(language.packing, bins, language.frames, frames)
        assert np.array_equal(utterances, rows), "a part's utterances are its bins' utterances"
    # Only the frames some utterance of the piece uses, in the compute dtype, in one read; kernels mask the rest.
    states, _ = reader.language_layer(
        piece.lang, piece.layer, utterances=index, dtype=DTYPES[dtype], frames=frames, zero_padding=False
    )
    if transform is not None:
        states = transform(states)
    return Side(index, lengths, jnp.asarray(states), packing)
