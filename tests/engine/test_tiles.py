"""The seqsim job's order and units under a memory budget (engine.pipelines.seqsim.tiling.tiles, held.simulate), on
lengths alone: no state is read."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.pipelines.seqsim.tiling.tiles import (
    BudgetError,
    Language,
    Sizing,
    blocked_order,
    check_budget,
    plan_units,
    simulate,
)

SIZING = Sizing(embed=4, itemsize=4, states=True, packs=False)  # states only: bytes = utterances x longest x 16


def languages(counts: dict[str, int], frames: int = 10) -> dict[str, Language]:
    return {lang: Language(lang, np.full(n, frames, np.int32), SIZING) for lang, n in counts.items()}


def test_blocked_order_visits_every_pair_once_tile_by_tile():
    langs = [f"l{i:02d}" for i in range(12)]
    pairs = list(itertools.combinations(langs, 2))
    order = blocked_order(pairs, dict.fromkeys(langs, 100), budget=400)  # tiles of 3 (one more language streams)
    assert sorted(order) == sorted(pairs)
    assert order[:3] == [("l00", "l01"), ("l00", "l02"), ("l01", "l02")]  # inside the first tile
    assert order[3:6] == [("l00", "l03"), ("l01", "l03"), ("l02", "l03")]  # then a strip: l03 against the tile


def test_one_process_reads_each_language_once_per_earlier_tile_within_the_budget():
    held = languages({f"l{i:02d}": 5 for i in range(12)})  # 800 bytes each
    pairs = list(itertools.combinations(sorted(held), 2))
    todo = {(layer, a, b): ("seqsim",) for layer in (0, 1) for a, b in pairs}
    schedule = plan_units(todo, [0, 1], pairs, held, budget=3200)
    walk = simulate(3200, held, schedule.items())
    assert walk.peak <= 3200
    reads = walk.reads_per_language()
    assert min(reads.values()) >= 2  # at least once per layer
    # Tiles of 3: a language of tile t is read once as a row and at most t times as a column, per layer.
    assert sum(reads.values()) / len(reads) <= 2 * (1 + 1.5)
    everything = simulate(12 * 800, held, schedule.items())
    assert everything.reads_per_language() == dict.fromkeys(held, 2.0)  # both layers, each read once
    # A layer's languages are dropped once the next layer's start: what one layer needs, not the whole budget (a
    # run of 8 layers held 8 layers' states where its plan said one).
    roomy = simulate(100 * 800, held, schedule.items())
    assert roomy.peak == 12 * 800 and roomy.reads_per_language() == dict.fromkeys(held, 2.0)


def test_units_group_small_pairs_and_split_a_pair_the_budget_cannot_hold():
    held = languages({"big": 40, "small0": 2, "small1": 2, "small2": 2}, frames=10)  # big: 6400 bytes
    pairs = list(itertools.combinations(sorted(held), 2))
    todo = {(0, a, b): ("seqsim", "mean") for a, b in pairs}
    schedule = plan_units(todo, [0], pairs, held, budget=4000, target=1e6)
    items = schedule.items()
    split = [item for item in items if item.split]
    assert split and {(i.a, i.b) for i in split} == {("big", s) for s in ("small0", "small1", "small2")}
    for item in split:  # every block fits the budget
        a, b = item.pieces()
        assert held[a.lang].part_bytes(a.parts)[a.part] + held[b.lang].part_bytes(b.parts)[b.part] <= 4000
    assert len(schedule.units) < len(items)  # the small pairs are grouped
    assert simulate(4000, held, items).peak <= 4000


def test_a_budget_below_the_smallest_block_names_the_pair_and_the_size():
    held = languages({"a": 3, "b": 3}, frames=1000)  # one utterance each: 16000 bytes
    with pytest.raises(BudgetError, match=r"900 B \(test\) is too small for the pair a:b: .* needs 31.2 KiB"):
        check_budget(held, [("a", "b")], 900, "test")
    check_budget(held, [("a", "b")], 32000, "test")
