"""Parallel ids: which utterances of two languages are translations of each other, checked where a dataset is listed.

Every cross-lingual measure pairs utterances by equal ids: FLEURS's sentence id, a manifest's ``id`` column, a
folder's file stems (``en/s001.wav`` and ``de/s001.wav`` are a pair). A dataset whose languages share no id gives
empty retrieval tables after hours of encoding, so the encode job counts the shared ids before it writes anything.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence

from engine.data.utterance import DatasetError, Utterance

HOW_IDS_ARE_MADE = (
    "utterances are paired across languages by equal ids: a folder dataset's file stems (en/s001.wav and "
    "de/s001.wav are a pair: give a translation the same file name in every language folder), a manifest's 'id' "
    "column, FLEURS's sentence id"
)
SHOWN = 12  # language pairs listed one by one; more are summarised


def shared_ids(listing: Mapping[str, Sequence[Utterance]]) -> dict[tuple[str, str], int]:
    """(a, b) with a < b -> how many ids the two languages share."""
    ids = {lang: {u.id for u in utts} for lang, utts in listing.items()}
    return {(a, b): len(ids[a] & ids[b]) for a, b in itertools.combinations(sorted(ids), 2)}


def shared_after_skips(
    listing: Mapping[str, Sequence[Utterance]], skipped: Mapping[str, Sequence[tuple[str, str]]]
) -> dict[tuple[str, str], int]:
    """``shared_ids`` of ``listing`` without the (lang, id) a run skipped (``RunSummary.skipped``, by reason): the
    pairs a cross-lingual measure can score in what the run stored (a skipped clip leaves its pairs short)."""
    gone = {(lang, str(uid)) for items in skipped.values() for lang, uid in items}
    return shared_ids(
        {lang: [u for u in utts if (lang, str(u.id)) not in gone] for lang, utts in listing.items() if utts}
    )


def pairing_lines(shared: Mapping[tuple[str, str], int], what: str = "shared ids") -> list[str]:
    """What a person reads about the pairs: each pair's count when there are few, else a summary and the unpaired;
    ``what`` names the counts (the listing's, or those left after a run's skips)."""
    if not shared:
        return []
    if len(shared) <= SHOWN:
        return [f"{what} per language pair: " + ", ".join(f"{a}-{b} {n}" for (a, b), n in shared.items())]
    counts = list(shared.values())
    none = [f"{a}-{b}" for (a, b), n in shared.items() if n == 0]
    line = (
        f"{what} over {len(shared)} language pairs: min {min(counts)}, median {statistics.median(counts):g}, "
        f"max {max(counts)}"
    )
    if none:
        line += f"; {len(none)} pairs share none: {', '.join(none[:SHOWN])}{' ...' if len(none) > SHOWN else ''}"
    return [line]


def check_listing(
    listing: Mapping[str, Sequence[Utterance]], what: str, *, allow_empty: bool = False, allow_unpaired: bool = False
) -> dict[tuple[str, str], int]:
    """Refuses a listing with no utterance (unless ``allow_empty``) and a multi-language listing whose languages
    share no id at all (unless ``allow_unpaired``), naming ``what`` (the dataset and split) and the fix; returns
    the shared counts."""
    if not any(listing.values()) and not allow_empty:
        raise DatasetError(
            f"{what} has no utterances in languages {sorted(listing)}: check --dataset, --split and --langs (and a "
            "folder's <dir>/<lang>/<id>.<ext> layout); --allow_empty runs on it anyway"
        )
    shared = shared_ids({lang: utts for lang, utts in listing.items() if utts})
    if shared and not any(shared.values()) and not allow_unpaired:
        raise DatasetError(
            f"{what}: no utterance id is shared by any two of its languages {sorted(listing)}, so no cross-lingual "
            f"measure has anything to pair: {HOW_IDS_ARE_MADE}. --allow_unpaired encodes it anyway"
        )
    return shared
