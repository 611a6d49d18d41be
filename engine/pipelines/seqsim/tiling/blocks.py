"""Split pair-layers of the seqsim job: each block of a split pair is staged as a unit scores it, and the
pair-layer is committed whole once every block of it is staged (``engine.stores.similarity_blocks`` holds the
protocol: no partial chunk writes, the done marker last, blocks of other settings or grids never mixed in).

``commit`` runs right after a block is staged (the process that stages the last block commits the pair-layer) and
once more for every split pair-layer at the end of a run (``commit_all``): with two processes staging the last two
blocks at once, a linearizable store lets at least one of them see both, and if the one that saw them was killed
before it committed, the end of the run (or a resume) commits. Every process may commit a pair-layer: the bytes
are the same.
"""

from __future__ import annotations

import logging

import numpy as np

from engine.pipelines.seqsim.measures import MEASURES, Scores
from engine.pipelines.seqsim.tiling.tiles import Item
from engine.stores.integrity import DamageError
from engine.stores.similarity import done_marker
from engine.stores.similarity_blocks import StagedBlock, settings_digest

log = logging.getLogger(__name__)


def digest(work, measure: str, a: str, b: str) -> str:
    """What a block of (measure, a, b) is computed from and with: the done utterances, the measure's settings and
    the compute dtype (blocks computed in another dtype are never assembled with these): 16 hex digits of the SHA-256
    of their JSON, keys sorted. The store keys staged blocks by it without reading it."""
    return settings_digest({**work.wanted[measure, a, b], "dtype": work.context.dtype})


def stage(work, item: Item, rows: np.ndarray, cols: np.ndarray, scores: dict[str, Scores]) -> None:
    """Stages the block ``item`` scored: ``rows``, ``cols`` its layer-store utterance indices."""
    for m in item.measures:
        scored = scores[m]
        values = scored.values if scored.failed is None else np.where(scored.failed, np.nan, scored.values)
        extra = {}
        if MEASURES[m].nan_scores:
            i, j = np.nonzero(scored.failed)
            extra = {"nonconverged": [[int(rows[x]), int(cols[y])] for x, y in zip(i, j, strict=True)],
                     "fallback": int(scored.fallback)}  # fmt: skip
        block = StagedBlock(rows, cols, values.astype(np.float32), extra)
        work.out.stage_block(m, item.a, item.b, item.layer, item.grid, digest(work, m, item.a, item.b), item.block,
                             block)  # fmt: skip


def is_staged(work, item: Item) -> bool:
    """Whether every measure of the block ``item`` is committed or staged with this run's settings."""
    for m in item.measures:
        if work.matches(m, item.a, item.b, item.layer):
            continue
        staged = work.out.staged(m, item.a, item.b, item.layer, item.grid, digest(work, m, item.a, item.b))
        if item.block not in staged:
            return False
    return True


def commit(work, layer: int, a: str, b: str, measures, grid: tuple[int, int], summary, staged_now=False) -> bool:
    """Writes the matrix and done marker of each of ``measures`` of (layer, a, b) whose every block of ``grid`` is
    staged, then deletes its staging; True when this process wrote any. ``staged_now``: this process has just staged
    a block of it, which is deleted if another process committed the pair-layer meanwhile (its deletion of the
    staging may have come first)."""
    wrote = False
    for m in measures:
        if work.matches(m, a, b, layer):
            if staged_now:
                work.out.drop_staged(m, a, b, layer, grid, digest(work, m, a, b))
            continue
        key = digest(work, m, a, b)
        if len(work.out.staged(m, a, b, layer, grid, key)) < grid[0] * grid[1]:
            continue
        blocks = []
        for block in ((i, j) for i in range(grid[0]) for j in range(grid[1])):
            try:
                blocks.append(work.out.read_block(m, a, b, layer, grid, key, block))
            except DamageError as e:
                log.error("%s", e)
                work.out.drop_block(m, a, b, layer, grid, key, block)
                summary.skip("damaged staged block (rerun to compute it again)", f"{a}:{b}", f"{m} layer {layer}")
                blocks.append(None)
        if any(block is None for block in blocks):
            continue  # committed by another process meanwhile, or damaged
        request = work.request
        full = np.full((len(request.lengths[a]), len(request.lengths[b])), np.nan, np.float32)
        for block in blocks:
            full[np.ix_(block.rows, block.cols)] = block.scores
        marker = {**done_marker(request.done_index[a], request.done_index[b]), "dtype": work.context.dtype}
        if MEASURES[m].nan_scores:
            failed = sorted(pair for block in blocks for pair in block.extra["nonconverged"])
            marker |= {**MEASURES[m].marker_settings(work.context), "nonconverged": failed,
                       "fallback": sum(block.extra["fallback"] for block in blocks)}  # fmt: skip
        work.out.write_layer(work.arrays[m, a, b], m, a, b, layer, full, marker)
        work.out.drop_staged(m, a, b, layer)
        summary.matrices += 1
        wrote = True
    return wrote


def commit_all(work, items, summary) -> None:
    """``commit`` for every split pair-layer of ``items`` not committed yet (the end of a run)."""
    for layer, a, b, measures, grid in dict.fromkeys((i.layer, i.a, i.b, i.measures, i.grid) for i in items if i.split):
        if commit(work, layer, a, b, measures, grid, summary):
            summary.pair_layers += 1
