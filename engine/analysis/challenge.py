"""Pronunciation-controlled challenge sets: translation pairs with no phonetic shortcut between them.

A sentence pair (the same id in languages a and b) is *flagged*, and left out of the challenge set, when either holds:

- names_numbers: the two texts share a number (the same digits, separators dropped: ``1,000`` = ``1.000``), a
  proper noun (a token capitalised inside one sentence, not as its first word, found in the other with case and
  accents folded: ``Berlín`` = ``Berlin``), or a token of ``MIN_SHARED_LETTERS``+ letters spelled the same in
  both (case folded). Where spaCy and a pipeline for the language are installed (``ner=True``), its entities
  count as proper nouns too; none is on the package index, so the heuristic is the default.
- sound_alike: a word of one sentence and a word of the other are pronounced alike: normalised phone edit distance
  (``engine.analysis.phones.phone_distance``, on espeak-ng IPA) below ``phone_threshold``, both words at least
  ``min_phones`` segments long.

The texts are the store's ``raw_transcription`` (FLEURS's cased text, which the capitalisation rule needs), else its
``transcription`` (stores written before the column existed, and the demo set, whose text is already cased).

Why ``min_phones``: on segment strings of 2-3 phones one substitution is a third of the word, so function words
(en "the" / de "der": 0.33, en "to" / de "zu": 0.31) and unrelated short words (en "dog" / de "Rat": 0.12) would
flag almost every pair. Why ``phone_threshold`` 0.25: en "telephone" / de "Telefon" is 0.15, de "Hund" / en "dog"
0.42; docs/challenge.md lists the flag rate of mismatched (non-translation) sentence pairs per threshold, the
false-alarm rate this default accepts.

Outputs of ``run_challenge`` (``OUT`` any TensorStore kvstore location)::

    OUT/<a>__<b>.csv    id, kept, reason, evidence: one row per shared id
    OUT/summary.csv     lang_a, lang_b, phone_threshold, pairs, kept, names_numbers, sound_alike
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

from engine.analysis.phones import PhonesError, covers, espeak_voice, phone_distance, phonemize_words
from engine.errors import BabelgridError

MIN_SHARED_LETTERS = 3  # a shared spelling of 1-2 letters ("a", "de", "in") is a function word, not a shortcut
DEFAULT_PHONE_THRESHOLD = 0.25
DEFAULT_MIN_PHONES = 4
# Thresholds the summary also counts kept pairs at, so that one run shows how the set shrinks with the threshold.
SUMMARY_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)
PAIR_COLUMNS = ("id", "kept", "reason", "evidence")
SUMMARY_COLUMNS = ("lang_a", "lang_b", "phone_threshold", "pairs", "kept", "names_numbers", "sound_alike")
NAMES_NUMBERS, SOUND_ALIKE = "names_numbers", "sound_alike"

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes (o'clock, l'acqua)
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


class ChallengeError(BabelgridError, ValueError):
    """A challenge set cannot be built or read as asked: unknown language, missing file, bad threshold."""


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """How a sentence pair is judged. phone_threshold: normalised phone distance (0 same, 1 nothing shared) below
    which two words sound alike; min_phones: shortest word (IPA segments) the sound rule looks at; ner: also use
    spaCy's entities (needs spaCy and a pipeline per language)."""

    phone_threshold: float = DEFAULT_PHONE_THRESHOLD
    min_phones: int = DEFAULT_MIN_PHONES
    ner: bool = False

    def __post_init__(self):
        if not 0 < self.phone_threshold <= 1:
            raise ChallengeError(f"phone_threshold must be in (0, 1], got {self.phone_threshold!r}")
        if self.min_phones < 1:
            raise ChallengeError(f"min_phones must be >= 1, got {self.min_phones!r}")


@dataclasses.dataclass(frozen=True)
class PairFlag:
    """The verdict on one sentence pair. ``min_distance``: the smallest phone distance between eligible words
    (NaN when none is eligible), so that a summary can count kept pairs at other thresholds without re-phonemising."""

    kept: bool
    reasons: tuple[str, ...]
    evidence: tuple[str, ...]
    names_numbers: bool
    min_distance: float

    @property
    def reason(self) -> str:
        return "+".join(self.reasons)


def fold(token: str) -> str:
    """Case and accents folded: ``Berlín`` -> ``berlin``."""
    decomposed = unicodedata.normalize("NFKD", token.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The letter tokens of ``text``, in order (digits and punctuation dropped)."""
    return _WORD.findall(text or "")


def numbers(text: str) -> set[str]:
    """The numbers of ``text`` as digit strings, separators dropped (``7:30`` -> ``730``)."""
    return {re.sub(r"\D", "", n) for n in _NUMBER.findall(text or "")}


def capitalised_inside(text: str) -> list[str]:
    """Tokens capitalised anywhere but at a sentence start: the proper-noun guess of the heuristic. German
    capitalises every noun, which is harmless here: a noun only counts when the other sentence has it too."""
    found = []
    for sentence in re.split(r"(?<=[.!?¿¡…])\s+", text or ""):
        tokens = words(sentence.lstrip("¿¡\"'«„“ "))
        found += [t for t in tokens[1:] if t[:1].isupper()]
    return found


@functools.cache
def _spacy_pipeline(lang: str):
    try:
        import spacy
    except ImportError:
        raise ChallengeError("ner=True needs spaCy (pip install spacy) and a pipeline per language") from None
    code = espeak_voice(lang).split("-")[0]
    installed = [name for name in spacy.util.get_installed_models() if name.startswith(f"{code}_")]
    if not installed:
        raise ChallengeError(
            f"ner=True but spaCy has no pipeline for {lang!r} installed (looked for {code}_*); install one "
            f"(python -m spacy download {code}_core_news_sm) or leave ner off for the capitalisation heuristic"
        )
    return spacy.load(installed[0])


def entities(lang: str, text: str) -> list[str]:
    """Tokens of spaCy's named entities in ``text``."""
    return [t for ent in _spacy_pipeline(lang)(text or "").ents for t in words(ent.text)]


def shared_names_numbers(lang_a: str, text_a: str, lang_b: str, text_b: str, ner: bool = False) -> list[str]:
    """Evidence strings for the names_numbers rule: shared numbers, proper nouns and 3+ letter spellings."""
    evidence = [f"number {n}" for n in sorted(numbers(text_a) & numbers(text_b))]
    words_a, words_b = words(text_a), words(text_b)
    folded_a, folded_b = {fold(w): w for w in words_a}, {fold(w): w for w in words_b}
    names_a, names_b = capitalised_inside(text_a), capitalised_inside(text_b)
    if ner:
        names_a, names_b = names_a + entities(lang_a, text_a), names_b + entities(lang_b, text_b)
    seen = set()
    for name, other in [*((n, folded_b) for n in names_a), *((n, folded_a) for n in names_b)]:
        key = fold(name)
        if key in other and key not in seen:
            seen.add(key)
            evidence.append(f"name {name}={other[key]}" if key in folded_b else f"name {other[key]}={name}")
    spelled = {w.casefold() for w in words_a if len(w) >= MIN_SHARED_LETTERS} & {
        w.casefold() for w in words_b if len(w) >= MIN_SHARED_LETTERS
    }
    evidence += [f"spelled {w}" for w in sorted(spelled) if fold(w) not in seen]
    return evidence


def require_voices(langs: Iterable[str]) -> None:
    """Raises ``PhonesError`` naming the languages espeak-ng speaks when one of ``langs`` has no voice."""
    missing = [lang for lang in langs if not covers(lang)]
    if missing:
        from phonemizer.backend import EspeakBackend

        have = sorted(EspeakBackend.supported_languages())
        raise PhonesError(
            f"espeak-ng has no voice for {missing}, so their words cannot be phonemised. Languages espeak-ng has "
            f"(`espeak-ng --voices`): {', '.join(have)}. Leave these languages out (--pairs / --langs), or map "
            "their codes to a voice in engine.analysis.phones.ESPEAK_VOICES"
        )


class PhoneBook:
    """Phones of every word met so far, per language: each (language, word) is phonemised once."""

    def __init__(self):
        self._phones: dict[str, dict[str, tuple[str, ...]]] = {}

    def add(self, lang: str, tokens: Iterable[str]) -> None:
        """Phonemises the tokens of ``lang`` not seen yet, in one espeak-ng call."""
        known = self._phones.setdefault(lang, {})
        todo = sorted({fold_case(t) for t in tokens} - known.keys())
        if todo:
            require_voices([lang])
            known.update(zip(todo, phonemize_words(lang, todo), strict=True))

    def phones(self, lang: str, token: str) -> tuple[str, ...]:
        self.add(lang, [token])
        return self._phones[lang][fold_case(token)]


def fold_case(token: str) -> str:
    # Case only: accents change the sound (es "si" / "sí" do not, it "pero" / "però" do), so espeak keeps them.
    return token.casefold()


@functools.lru_cache(maxsize=1 << 18)
def _distance(a: tuple[str, ...], b: tuple[str, ...]) -> float:
    return phone_distance(a, b)


def sound_alike(
    lang_a: str, text_a: str, lang_b: str, text_b: str, book: PhoneBook, config: FilterConfig
) -> tuple[list[str], float]:
    """(evidence for the words below the threshold, smallest distance over eligible word pairs or NaN)."""
    words_a, words_b = sorted(set(map(fold_case, words(text_a)))), sorted(set(map(fold_case, words(text_b))))
    book.add(lang_a, words_a)
    book.add(lang_b, words_b)
    eligible_a = [(w, book.phones(lang_a, w)) for w in words_a if len(book.phones(lang_a, w)) >= config.min_phones]
    eligible_b = [(w, book.phones(lang_b, w)) for w in words_b if len(book.phones(lang_b, w)) >= config.min_phones]
    found, smallest = [], math.nan
    for (wa, pa), (wb, pb) in itertools.product(eligible_a, eligible_b):
        d = _distance(pa, pb)
        smallest = d if math.isnan(smallest) else min(smallest, d)
        if d < config.phone_threshold:
            found.append((d, f"{wa}~{wb} {d:.2f}"))
    return [e for _, e in sorted(found)], smallest


def flag_pair(
    lang_a: str, text_a: str, lang_b: str, text_b: str, config: FilterConfig = FilterConfig(), book=None
) -> PairFlag:
    """The verdict on one translation pair (see the module docstring for the two rules)."""
    book = PhoneBook() if book is None else book
    names = shared_names_numbers(lang_a, text_a, lang_b, text_b, ner=config.ner)
    sounds, smallest = sound_alike(lang_a, text_a, lang_b, text_b, book, config)
    reasons = tuple(r for r, hit in ((NAMES_NUMBERS, names), (SOUND_ALIKE, sounds)) if hit)
    return PairFlag(not reasons, reasons, tuple(names + sounds), bool(names), smallest)


# --- a store's pairs ------------------------------------------------------------------------------------------------


def texts_by_id(table) -> dict[str, str]:
    """id -> text of a store's utterance table (pyarrow): raw_transcription, else transcription; the first
    recording of an id; ids without any text are left out."""
    columns = table.column_names
    ids = table.column("id").to_pylist()
    raw = table.column("raw_transcription").to_pylist() if "raw_transcription" in columns else [None] * len(ids)
    plain = table.column("transcription").to_pylist()
    out: dict[str, str] = {}
    for uid, r, t in zip(ids, raw, plain, strict=True):
        if uid not in out and (r or t):
            out[uid] = r or t
    return out


def pair_csv_name(lang_a: str, lang_b: str) -> str:
    return f"{lang_a}__{lang_b}.csv"


def flag_store_pair(texts_a: dict[str, str], texts_b: dict[str, str], lang_a, lang_b, config, book) -> dict:
    """id -> PairFlag for every id with a text in both languages, in sorted id order."""
    return {
        uid: flag_pair(lang_a, texts_a[uid], lang_b, texts_b[uid], config, book)
        for uid in sorted(texts_a.keys() & texts_b.keys())
    }


def pair_csv_bytes(flags: dict) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAIR_COLUMNS)
    for uid, f in flags.items():
        writer.writerow([uid, int(f.kept), f.reason, "; ".join(f.evidence)])
    return buf.getvalue().encode()


def summary_rows(lang_a: str, lang_b: str, flags: dict, threshold: float) -> list[tuple]:
    """One row per threshold (the chosen one and SUMMARY_THRESHOLDS): pairs kept if that were the threshold."""
    rows = []
    for t in sorted({*SUMMARY_THRESHOLDS, threshold}):
        sound = sum(1 for f in flags.values() if f.min_distance < t)  # NaN < t is False: no eligible word pair
        kept = sum(1 for f in flags.values() if not f.names_numbers and not f.min_distance < t)
        names = sum(1 for f in flags.values() if f.names_numbers)
        rows.append((lang_a, lang_b, t, len(flags), kept, names, sound))
    return rows


def summary_csv_bytes(rows: Sequence[tuple]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue().encode()


def read_kept(out: str, lang_a: str, lang_b: str) -> set[str]:
    """The kept ids of the challenge set for (lang_a, lang_b) under ``out`` (either file order)."""
    from engine.stores.kv import open_kvstore

    _, kv = open_kvstore(out)
    for name in (pair_csv_name(lang_a, lang_b), pair_csv_name(lang_b, lang_a)):
        result = kv.read(name).result()
        if result.state != "missing":
            rows = csv.DictReader(io.StringIO(bytes(result.value).decode()))
            return {r["id"] for r in rows if r["kept"] == "1"}
    raise ChallengeError(
        f"challenge set {out!r} has no {pair_csv_name(lang_a, lang_b)} (nor {pair_csv_name(lang_b, lang_a)}); "
        f"build it: python -m jobs.challenge --store STORE --out {out} --pairs {lang_a}:{lang_b}"
    )


# --- the job's library entry ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChallengeConfig:
    """store: layer store URL; out: output folder or kvstore URL; pairs: ``resolve_pairs`` spec (``unordered`` =
    every pair of the store's languages once, or ``en:es,de:*``); langs: restrict to these (None = all)."""

    store: str
    out: str
    pairs: str = "unordered"
    langs: tuple[str, ...] | None = None
    phone_threshold: float = DEFAULT_PHONE_THRESHOLD
    min_phones: int = DEFAULT_MIN_PHONES
    ner: bool = False

    @property
    def filter(self) -> FilterConfig:
        return FilterConfig(self.phone_threshold, self.min_phones, self.ner)


@dataclasses.dataclass(frozen=True)
class ChallengeResult:
    flags: dict  # (lang_a, lang_b) -> {id: PairFlag}
    summary: tuple[tuple, ...]  # SUMMARY_COLUMNS rows
    outputs: tuple[str, ...]
    threshold: float

    def report(self) -> str:
        lines = [f"challenge sets (phone_threshold {self.threshold}): pairs kept of shared ids"]
        for (a, b), flags in self.flags.items():
            kept = sum(f.kept for f in flags.values())
            names = sum(f.names_numbers for f in flags.values())
            sound = sum(SOUND_ALIKE in f.reasons for f in flags.values())
            lines.append(f"  {a}-{b}: {kept}/{len(flags)} kept ({names} names/numbers, {sound} sound-alike)")
        return "\n".join(lines)


def run_challenge(config: ChallengeConfig, store=None) -> ChallengeResult:
    """Flags every shared id of every asked pair and writes ``OUT/<a>__<b>.csv`` and ``OUT/summary.csv``."""
    from engine.similarity import resolve_pairs
    from engine.stores.kv import open_kvstore, write_all
    from engine.stores.reader import open_store

    store = open_store(config.store) if store is None else store
    available = list(store.languages())
    unknown = sorted(set(config.langs or ()) - set(available))
    if unknown:
        raise ChallengeError(f"the store has no language {unknown}; it has {available}")
    langs = [lang for lang in available if config.langs is None or lang in config.langs]
    pairs = resolve_pairs(config.pairs, langs, available)
    require_voices(sorted({lang for pair in pairs for lang in pair}))
    texts = {lang: texts_by_id(store.utterances_table(lang)) for lang in sorted({x for p in pairs for x in p})}
    book, all_flags, summary = PhoneBook(), {}, []
    for a, b in pairs:
        all_flags[a, b] = flag_store_pair(texts[a], texts[b], a, b, config.filter, book)
        summary += summary_rows(a, b, all_flags[a, b], config.phone_threshold)
    writes = {pair_csv_name(a, b): pair_csv_bytes(f) for (a, b), f in all_flags.items()}
    writes["summary.csv"] = summary_csv_bytes(summary)
    _, kv = open_kvstore(config.out)
    write_all(kv, writes, config.out)
    root = config.out.rstrip("/") + "/"
    return ChallengeResult(all_flags, tuple(summary), tuple(root + k for k in writes), config.phone_threshold)
