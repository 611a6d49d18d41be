"""The word probe's relations: rows ``lang_a, word_a, lang_b, word_b, relation`` naming two words (or, in a language
without transcriptions, two clip ids: concepts) and their relation, one of ``RELATIONS``; generated from a store's
words (``generate_relations``: synonyms by concept id, near-homophones by phone distance with espeak-ng, unrelated
pairs drawn apart from them) or read from a file (``read_relations``). The measuring is ``engine.pipelines.probe.run``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from engine.pipelines.probe.config import ProbeError
from engine.stores.records import csv_bytes
from engine.text.soundalike import PhoneBook, _distance, require_voices

RELATIONS = ("synonym", "near_homophone", "unrelated")
RELATION_COLUMNS = ("lang_a", "word_a", "lang_b", "word_b", "relation")


def synonym_relations(words: dict[str, list[tuple[str, str]]], a: str, b: str) -> list[tuple]:
    """The synonym rows of languages ``a`` and ``b``: their words of the same concept id (ids only, no phones)."""
    by_id_b = dict(words[b])
    return [(a, w, b, by_id_b[i], "synonym") for i, w in words[a] if i in by_id_b]


def generate_relations(words: dict[str, list[tuple[str, str]]], pairs, seed: int = 0) -> list[tuple]:
    """RELATION_COLUMNS rows for ``pairs`` of languages; ``words[lang]``: [(concept id, word)]."""
    if not pairs:
        return []
    require_voices(sorted({lang for p in pairs for lang in p}))
    book = PhoneBook()
    for lang in sorted({lang for p in pairs for lang in p}):
        book.add(lang, [w for _, w in words[lang]])
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in pairs:
        rows += synonym_relations(words, a, b)
        near = set()
        for (x, wx_list), (y, wy_list) in (((a, words[a]), (b, words[b])), ((b, words[b]), (a, words[a]))):
            for cid, w in wx_list:
                others = [(oid, o) for oid, o in wy_list if oid != cid]
                if not others:
                    continue
                dist = [_distance(book.phones(x, w), book.phones(y, o)) for _, o in others]
                nearest = others[int(np.nanargmin(dist))][1] if not np.all(np.isnan(dist)) else None
                if nearest is not None:
                    near.add((w, nearest) if x == a else (nearest, w))
        rows += [(a, wa, b, wb, "near_homophone") for wa, wb in sorted(near)]
        for cid, w in words[a]:
            others = [o for oid, o in words[b] if oid != cid and (w, o) not in near]
            if others:
                rows.append((a, w, b, others[int(rng.integers(len(others)))], "unrelated"))
    return rows


def read_relations(text: str, where: str) -> list[tuple]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in RELATION_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ProbeError(f"relations file {where!r} has no column {missing}; its header must name {RELATION_COLUMNS}")
    rows = []
    for line, r in enumerate(reader, start=2):
        if r["relation"] not in RELATIONS:
            raise ProbeError(f"{where}:{line}: relation {r['relation']!r} is not one of {RELATIONS}")
        rows.append(tuple(r[c].strip() for c in RELATION_COLUMNS))
    return rows


def relations_csv_bytes(rows: Sequence[tuple]) -> bytes:
    return csv_bytes(RELATION_COLUMNS, rows)
