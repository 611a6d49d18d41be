"""What an interp unit reads besides the states: each language's words (times in seconds, from the align job or any
``words.parquet``, as spans of the store's encoder frames at its ``frame_rate``), their text embeddings and phones, and
the utterance pairs of a (language pair, layer).

Words are timed in seconds, not frames, so the words of one model's align run serve a store of any family over the
same audio: Whisper's words.parquet of the same clips maps onto a wav2vec2 or w2v-BERT store by that store's frame
rate (50 frames/s for all of them today). Beyond 30 s a non-Whisper window holds 1499 frames, not 1500, so a word past
the first window lands up to one frame early per window.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from engine.pipelines.interp.config import InterpConfig, InterpError
from engine.runtime.runs import RunSummary
from engine.stores.words import frame_span, read_words, words_language
from engine.text import phones as ph

# Punctuation and symbols around a word (Whisper's words keep their leading space and trailing punctuation).
_EDGES = re.compile(r"^[\W_]+|[\W_]+$", re.UNICODE)


@dataclasses.dataclass
class Language:
    """The words of one language, by utterance id, with what the two sides need."""

    lang: str
    index: dict[str, int]  # id -> store utterance index
    n_frames: dict[str, int]
    words: dict[str, list[tuple[int, str, str, int, int]]]  # id -> [(word_index, word, key, start, end frame)]
    text: dict[str, np.ndarray]  # key (clean lower-case word) -> unit embedding; absent where not covered
    phones: dict[str, tuple[str, ...]]


def clean_word(word: str) -> str:
    """The word without surrounding space and punctuation, lower-case ('' for pure punctuation)."""
    return _EDGES.sub("", word.strip()).lower()


def load_language(reader, words_url: str, lang: str, encoder, summary: RunSummary) -> Language:
    """The words of ``lang`` that have a frame span in an encoded utterance, their text embeddings (``encoder``, an
    ``engine.text.encoders`` encoder) and phones; what is left out is counted in ``summary``."""
    table = reader.utterances_table(lang).to_pydict()
    lengths = reader.lengths(lang)
    index = {uid: int(u) for u, uid in zip(table["utterance"], table["id"], strict=True) if lengths[u] > 0}
    n_frames = {uid: int(lengths[u]) for uid, u in index.items()}
    # Words aligned on a store whose codes are another system's (a FLEURS Whisper store's en_us for eng_Latn) are
    # this language's when they name the same language (engine.stores.words.words_language).
    rows = read_words(words_url, words_language(words_url, lang)).to_pydict()
    if rows["id"] and not set(rows["id"]) & set(table["id"]):  # every word skipped, under a reason that was false
        raise InterpError(f"no word of {lang} in --words {words_url!r} belongs to an utterance of the layer store "
                          f"(its ids {sorted(set(rows['id']))[:3]} ...): they were aligned on another store; run "
                          "jobs.align on this one")  # fmt: skip
    words: dict[str, list] = {}
    for uid, wi, word, start, end in zip(
        rows["id"], rows["word_index"], rows["word"], rows["start"], rows["end"], strict=True
    ):
        if uid not in index:
            continue
        key = clean_word(word)
        if not key:
            continue  # punctuation on its own: not a word
        span = frame_span(float(start), float(end), n_frames[uid], reader.info.frame_rate)
        if span is None:
            summary.skip("missing_timestamps", lang, f"{uid}/{wi}")
            continue
        earlier = words.get(uid)
        if earlier and span[0] < earlier[-1][4]:
            # Words may not share frames (mean and max pool disjoint segments): the later word starts where the
            # earlier one ends, and is dropped when nothing is left of it.
            span = (earlier[-1][4], span[1])
            if span[0] >= span[1]:
                summary.skip("overlapping_timestamps", lang, f"{uid}/{wi}")
                continue
        words.setdefault(uid, []).append((int(wi), word.strip(), key, *span))
    for uid in index:
        if uid not in words:
            summary.skip("no_words", lang, uid)
    keys = sorted({w[2] for ws in words.values() for w in ws})
    text = {}
    if encoder.covers(lang):
        text = dict(zip(keys, encoder.encode(keys), strict=True))
    else:
        for uid, ws in words.items():
            for w in ws:
                summary.skip(f"language_not_covered_by_{encoder.name.replace('/', '_')}", lang, f"{uid}/{w[0]}")
    phones = dict(zip(keys, ph.phonemize_words(lang, keys), strict=True)) if ph.covers(lang) else {}
    if not phones:
        summary.skip("language_not_covered_by_espeak", lang, "*")
    return Language(lang, index, n_frames, words, text, phones)


def utterance_pairs(A: Language, B: Language, layer: int, config: InterpConfig, sim) -> list[tuple[str, str, int]]:
    """(id_a, id_b, rank): rank 0 the parallel pair, 1..k the query's retrieved candidates (the parallel one left
    out, it is rank 0 already). ``sim``: the similarity store ranking the candidates (with ``config.retrieved``)."""
    pairs = [(uid, uid, 0) for uid in sorted(A.words) if uid in B.words]
    if config.retrieved:
        scores, rows, cols = sim.matrix(config.measure, A.lang, B.lang, layer)
        rows, cols = [str(r) for r in rows], [str(c) for c in cols]
        order = np.argsort(-np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf), axis=1, kind="stable")
        for r, uid in enumerate(rows):
            if uid not in A.words:
                continue
            found = [cols[c] for c in order[r, : config.retrieved + 1] if cols[c] != uid and cols[c] in B.words]
            pairs += [(uid, cid, rank) for rank, cid in enumerate(found[: config.retrieved], start=1)]
    return pairs
