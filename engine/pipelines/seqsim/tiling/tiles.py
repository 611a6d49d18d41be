"""How an all-pairs run walks its pairs under a memory budget: languages in tiles, pairs blocked over the triangle,
large pairs in utterance blocks, small ones grouped, in work units of about equal FLOPs.

Sizes. A language at one layer is held as its done utterances' states, f[utterance, longest, embed] in the run's
compute dtype, and, when SeqSim scores it by packed bins (CPU), as its packed bins in both roles
(``kernels.seqsim_packed.PackedSide``: at most bins x bin_frames x (3 * embed + 4) values, and its index arrays):
``Language.part_bytes``. What a process holds is counted from these (Held, below).

Order. Per layer, the languages are cut into row tiles of consecutive languages that fit the budget less the largest
language that fits half of it, and the pairs are visited tile by tile: the pairs inside the tile, then, for each
later language in turn (a strip), its pairs with the tile's languages. A process holding a tile reads each later
language once per tile, so a language is read at most 1 + (the index of its tile) times per layer, fewer where the
budget holds more.

Splits. A pair whose two languages do not fit the budget together is scored in blocks of utterances (rows x columns
of its two sides), the fewest that fit; a budget below its smallest block (one part of each side) is a BudgetError
before any work, naming the pair and the bytes it needs. Parts of a side scored by packed bins are whole bins of
the side's own packing, so a SeqSim block is bit for bit the whole pair's there (``kernels.seqsim_packed.restrict``);
the other measures of a pair split for memory are scored per block by their own kernels on the block's utterances
(the same kernels; their products take the block's shape, so their last bit may differ from a whole pair's).

Units. Work units aim at ``target`` FLOPs (``Cost.unit_flops``): by default the run's total over
``UNITS_PER_PROCESS`` units per process, at least ``MIN_UNIT_FLOPS``. Consecutive pairs are grouped up to it, and a
pair above it whose measures are exact in bins (SeqSim by packed bins) is split into blocks of bins for balance, its
other measures scored whole in an item of their own. N processes claiming units of about equal cost in order finish
within about one unit of each other.

Held. One process holds pieces of languages (``Piece``: a language, or a part of it, at one layer), loaded on demand
within the memory budget (``HeldStates``), and counts what it holds: each held piece counts its ``part_bytes`` (an
upper bound of its arrays' bytes: states, packed bins) from the moment it is loaded until it is dropped; ``held`` is
their sum, ``peak`` its highest value, ``read`` the bytes read per language. Before the pieces of an item are loaded,
held pieces the item does not read are dropped, the one used again farthest ahead in the run's order first (Belady's
rule on the order every process walks), until the new ones fit; a piece never used again (an earlier layer's) is
dropped then even when they fit, so that a run of many layers holds what one layer needs, not its whole budget.
``plan_units`` makes every item fit the budget, so ``held`` never exceeds it. The plan runs the same rule over the
whole order (``simulate``) for the reads and the peak it prints.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np

from engine.dtypes import DTYPES
from engine.pipelines.seqsim.measures import MEASURES, Side, kernel_calls
from engine.runtime.plan import size
from engine.stores.similarity import PAIR_SEPARATOR, SimilarityError
from kernels.seqsim import side_packing
from kernels.seqsim_packed import restrict

UNITS_PER_PROCESS = 32  # the last unit a process takes is then ~3% of its work: processes end within ~10%
MIN_UNIT_FLOPS = 2e9  # ~0.1 s of the CPU kernel: a claim, a few markers and reads cost less than that


class BudgetError(SimilarityError):
    """The memory budget cannot hold the smallest block of some pair."""


@dataclasses.dataclass(frozen=True)
class Sizing:
    """What a held language's bytes depend on: ``embed``, the compute dtype's ``itemsize``, whether ``states`` are
    read at all (a run of lengths-only measures reads none) and whether SeqSim ``packs`` them into bins."""

    embed: int
    itemsize: int
    states: bool = True
    packs: bool = False


class Language:
    """One language's done utterances as the run holds them: ``lengths`` i32[done]; its parts for ``k`` blocks."""

    def __init__(self, name: str, lengths: np.ndarray, sizing: Sizing):
        self.name, self.lengths, self.sizing = name, np.asarray(lengths, np.int32), sizing
        self.frames = int(self.lengths.max(initial=0))  # the frame axis its states are read with
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray | None]]] = {}
        self._bytes: dict[int, list[int]] = {}
        packs = sizing.packs and sizing.states and len(self.lengths) > 0
        self.packing = side_packing(self.lengths, self.frames) if packs else None

    @property
    def most_parts(self) -> int:
        """The finest split: one bin (packed) or one utterance each part."""
        count = len(self.packing.frame) if self.packing is not None else len(self.lengths)
        return max(count, 1)

    def parts(self, k: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``k`` parts, each (positions in the done utterances, sorted; its bins of ``packing`` or None): runs of
        consecutive bins (or utterances) of about equal size."""
        if k not in self._parts:
            if k == 1 or self.packing is None:
                every = None if self.packing is None else np.arange(self.most_parts)  # k == 1: all its bins
                self._parts[k] = [(rows, every) for rows in np.array_split(np.arange(len(self.lengths)), k)]
            else:
                slots = self.packing.utterance
                self._parts[k] = [(np.sort(slots[bins][slots[bins] >= 0]), bins)
                                  for bins in np.array_split(np.arange(self.most_parts), k)]  # fmt: skip
        return self._parts[k]

    def part_bytes(self, k: int) -> list[int]:
        """Bytes one part holds, for each of ``k`` parts (the module docstring's sizes)."""
        if k not in self._bytes:
            self._bytes[k] = [self._bytes_of(rows, bins) for rows, bins in self.parts(k)]
        return self._bytes[k]

    def _bytes_of(self, rows: np.ndarray, bins: np.ndarray | None) -> int:
        s = self.sizing
        if not s.states or not len(rows):
            return 0
        held = len(rows) * int(self.lengths[rows].max()) * s.embed * s.itemsize
        if self.packing is not None:
            n, frames = len(bins), self.packing.frame.shape[1]
            slots, chunks = self.packing.chunks.shape[1:]
            held += n * frames * (3 * s.embed + 4) * s.itemsize + n * (frames + 4 * slots * chunks + 4 * slots)
        return held

    @property
    def whole_bytes(self) -> int:
        return self.part_bytes(1)[0]


class Piece(NamedTuple):
    """Part ``part`` of ``parts`` of a language at a layer: what a process loads and holds."""

    layer: int
    lang: str
    parts: int
    part: int


@dataclasses.dataclass(frozen=True)
class Item:
    """The ``measures`` of one pair at one layer, whole or one block (``block`` of ``grid`` rows x columns)."""

    layer: int
    a: str
    b: str
    measures: tuple[str, ...]
    cost: float
    grid: tuple[int, int] = (1, 1)
    block: tuple[int, int] = (0, 0)
    rest: bool = False  # the measures of a split pair scored whole (the pair-layer completes with its blocks)

    @property
    def split(self) -> bool:
        return self.grid != (1, 1)

    @property
    def name(self) -> str:
        pair = f"{self.a}{PAIR_SEPARATOR}{self.b}"
        return f"{pair}.{self.block[0]}.{self.block[1]}of{self.grid[0]}x{self.grid[1]}" if self.split else pair

    def pieces(self) -> tuple[Piece, Piece]:
        """The parts of its two languages it reads."""
        return (
            Piece(self.layer, self.a, self.grid[0], self.block[0]),
            Piece(self.layer, self.b, self.grid[1], self.block[1]),
        )


@dataclasses.dataclass(frozen=True)
class Unit:
    """One claimed work unit: consecutive items of one layer."""

    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        first = self.items[0]
        return f"{first.layer}/{first.name}" + (f"+{len(self.items) - 1}" if len(self.items) > 1 else "")

    @property
    def cost(self) -> float:
        return sum(item.cost for item in self.items)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A run's units in the order every process walks them, and what sized them."""

    units: list[Unit]
    target: float  # FLOPs a unit aims at
    budget: int

    def items(self) -> list[Item]:
        return [item for unit in self.units for item in unit.items]


def pair_flops(measures: Sequence[str], lengths_a: np.ndarray, lengths_b: np.ndarray, embed: int) -> float:
    """FLOPs of ``measures`` on N x M utterances of these lengths (each kernel counted once, ``Cost.unit_flops``)."""
    if not len(lengths_a) or not len(lengths_b):
        return 0.0
    return sum(kernel.cost.unit_flops(lengths_a, lengths_b, embed) for kernel, _ in kernel_calls(measures))


def check_budget(languages: Mapping[str, Language], pairs: Sequence[tuple[str, str]], budget: int, source: str):
    """BudgetError when some pair's smallest block (the finest parts of both sides) exceeds ``budget`` bytes, naming
    the pair that needs the most and how much; before any work."""
    worst, need = None, 0
    for a, b in pairs:
        A, B = languages[a], languages[b]
        if A.whole_bytes + B.whole_bytes <= budget:
            continue
        smallest = max(A.part_bytes(A.most_parts)) + max(B.part_bytes(B.most_parts))
        if smallest > budget and smallest > need:
            worst, need = (a, b), smallest
    if worst is not None:
        unit = "one bin of packed frames" if languages[worst[0]].packing is not None else "one utterance"
        raise BudgetError(
            f"memory budget {size(budget)} ({source}) is too small for the pair {worst[0]}:{worst[1]}: its smallest "
            f"block ({unit} of each language) needs {size(need)}; raise --memory_budget to at least {size(need)}"
        )


def blocked_order(pairs: Sequence[tuple[str, str]], sizes: Mapping[str, int], budget: int) -> list[tuple[str, str]]:
    """``pairs`` in the order of the module docstring: row tiles of languages (sorted) that fit ``budget`` less the
    largest language that fits half of it, the pairs inside a tile first, then one strip per later language; (a, b)
    and (b, a) together."""
    langs = sorted({x for pair in pairs for x in pair})
    rank = {lang: i for i, lang in enumerate(langs)}
    # Room for one streamed language beside the tile: the largest that can pair whole with another (a language
    # above half the budget is split against most others anyway, and gets a tile of its own).
    capacity = budget - max((sizes[lang] for lang in langs if 2 * sizes[lang] <= budget), default=0)
    tile, used, tile_of = 0, 0, {}
    for lang in langs:
        if used and used + sizes[lang] > capacity:
            tile, used = tile + 1, 0
        tile_of[lang] = tile
        used += sizes[lang]

    def key(pair):
        x, y = sorted(pair, key=rank.get)
        inside = tile_of[x] == tile_of[y]
        return (tile_of[x], not inside, 0 if inside else rank[y], rank[x], rank[y])

    return sorted(pairs, key=key)  # stable: (a, b) before (b, a) as asked


def plan_units(
    todo: Mapping[tuple[int, str, str], Sequence[str]],
    layers: Sequence[int],
    pairs: Sequence[tuple[str, str]],
    languages: Mapping[str, Language],
    budget: int,
    *,
    processes: int = 1,
    target: float | None = None,
    balance: bool = True,
) -> Schedule:
    """The units of a run: ``todo[layer, a, b]`` the measures still to compute of each pair-layer; layer by layer,
    pairs in ``blocked_order``, items grouped up to ``target`` FLOPs (default: the module docstring's). ``balance``:
    split a pair larger than ``target`` into blocks of utterances (False: only a pair larger than the budget; every
    other block shape is another compiled kernel, which runs of unknown size, ``--worker``, need not pay)."""
    embed = next(iter(languages.values())).sizing.embed if languages else 0

    def flops(measures, a, b, rows=None, cols=None) -> float:
        la, lb = languages[a].lengths, languages[b].lengths
        return pair_flops(measures, la if rows is None else la[rows], lb if cols is None else lb[cols], embed)

    total = sum(flops(measures, a, b) for (_, a, b), measures in todo.items())
    target = target or max(total / (UNITS_PER_PROCESS * max(processes, 1)), MIN_UNIT_FLOPS)
    order = blocked_order(pairs, {lang: x.whole_bytes for lang, x in languages.items()}, budget)
    grids: dict[tuple, tuple[int, int]] = {}
    units: list[Unit] = []
    for layer in layers:
        current: list[Item] = []
        for a, b in order:
            measures = tuple(todo.get((layer, a, b), ()))
            if not measures:
                continue
            for item in _items(layer, a, b, measures, languages, budget, target if balance else math.inf, grids, flops):
                current.append(item)
                if sum(i.cost for i in current) >= target:
                    units.append(Unit(tuple(current)))
                    current = []
        if current:
            units.append(Unit(tuple(current)))
    return Schedule(units, target, budget)


def _items(layer, a, b, measures, languages, budget, target, grids, flops) -> list[Item]:
    A, B = languages[a], languages[b]
    exact = tuple(m for m in measures if MEASURES[m].kernel.exact_in_bins) if A.packing is not None else ()
    fits = A.whole_bytes + B.whole_bytes <= budget
    want = math.ceil(flops(exact, a, b) / target) if exact and B.packing is not None else 1
    if fits and want <= 1:
        return [Item(layer, a, b, measures, flops(measures, a, b))]
    if (a, b, want) not in grids:
        grids[a, b, want] = _grid(A, B, budget, want)
    grid = grids[a, b, want]
    if grid == (1, 1):
        return [Item(layer, a, b, measures, flops(measures, a, b))]
    split = exact if fits else measures  # for balance only the exact measures; for memory every one
    rest = tuple(m for m in measures if m not in split)
    items = [Item(layer, a, b, rest, flops(rest, a, b), rest=True)] if rest else []
    for i, (rows, _) in enumerate(A.parts(grid[0])):
        for j, (cols, _) in enumerate(B.parts(grid[1])):
            items.append(Item(layer, a, b, split, flops(split, a, b, rows, cols), grid, (i, j)))
    return items


def _grid(A: Language, B: Language, budget: int, want: int) -> tuple[int, int]:
    """(rows, columns) of blocks of the pair (A, B): every block fits ``budget``, at least ``want`` blocks where
    the sides have that many parts, the fewest such, as square as the sides allow."""
    best, best_key = None, None
    for ra in range(1, A.most_parts + 1):
        room = budget - max(A.part_bytes(ra))
        if room < 0:
            continue
        rb = next((k for k in range(1, B.most_parts + 1) if max(B.part_bytes(k)) <= room), None)
        if rb is None:
            continue
        rb = min(max(rb, math.ceil(want / ra)), B.most_parts)
        key = (max(want - ra * rb, 0), ra * rb, abs(ra - rb))
        if best_key is None or key < best_key:
            best, best_key = (ra, rb), key
    if best is None:  # check_budget refuses such a budget before the run starts
        raise BudgetError(f"no block of the pair {A.name}:{B.name} fits {size(budget)}")
    return best


class HeldStates:
    """What one process holds (module docstring: Held); ``load(piece)`` reads a piece, ``items`` is the run's order."""

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
        for piece in others:  # never used again first (an earlier layer's): dropped even when the new ones fit
            if self.bytes + need <= self.budget and self._next_use(piece, position) != math.inf:
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
    return Side(index, lengths, jax.device_put(states), packing)
