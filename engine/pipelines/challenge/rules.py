"""The challenge-set filter: whether a translation pair (the same id in languages a and b) has a shortcut that is not
its meaning: a shared name or number, or words that sound alike.

A pair is *flagged*, and left out of the challenge set, when either holds:

- names_numbers: the two texts share a number (the same digits, separators dropped: ``1,000`` = ``1.000``), a
  proper noun (a token capitalised inside one sentence, not as its first word, found in the other with case and
  accents folded: ``Berlín`` = ``Berlin``), or a token of ``MIN_SHARED_LETTERS``+ letters spelled the same in
  both (case folded). With ``ner=True`` spaCy's entities count as proper nouns too (``spacy_pipeline``: the
  language's installed pipeline, a multi-language ``xx_*`` one, or one named in ``ner_models``); a missing spaCy,
  pipeline or entity component is an error, never a silent fall-back. No pipeline is on the package index (they
  install with ``python -m spacy download``), so the heuristic alone is the default.
- sound_alike: a word of one sentence and a word of the other are pronounced alike: normalised phone edit distance
  (``engine.text.phones.phone_distance``, on espeak-ng IPA) below the pair's threshold, both words at least
  ``min_phones`` segments long (``engine.text.soundalike``). The threshold is per language pair: by default
  (``AUTO``) the largest at which at most ``chance_flag_rate`` (5%) of mismatched sentence pairs (different ids,
  up to ``chance_pairs`` drawn with ``chance_seed``) would be flagged, capped at 0.16; with fewer than 20 mismatched
  pairs, the cap. A number instead is used for every pair.

The texts are the store's ``raw_transcription`` (FLEURS's cased text, which the capitalisation rule needs), else its
``transcription`` (stores written before the column existed, and the demo set, whose text is already cased).

Why ``min_phones``: on segment strings of 2-3 phones one substitution is a third of the word, so function words
(en "the" / de "der": 0.33, en "to" / de "zu": 0.31) and unrelated short words (en "dog" / de "Rat": 0.12) would
flag almost every pair. Why the cap 0.16: on the demo's cognates the excess of translations over mismatched pairs
flagged plateaus from 0.16 (docs/challenge.md); it catches de "Telefon" / en "telephone" (0.15), not de "Hund" /
en "dog" (0.42). Why calibrate below it: the rule compares every word pair of two sentences, so its false alarms
grow with sentence length (29% of the demo's mismatched pairs at 0.16, 62-94% of FLEURS-length ones); a threshold
held to a chance flag rate means the same thing for short and long sentences. A chance alarm removes a random pair,
which shrinks the set but does not bias it; the size-matched random subsets of ``jobs.retrieval --subset`` control
for the shrinking.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from collections.abc import Iterable

from engine.stores.challenge import ChallengeError
from engine.text.soundalike import DEFAULT_MIN_PHONES, DEFAULT_PHONE_THRESHOLD, PhoneBook, sound_alike

MIN_SHARED_LETTERS = 3  # a shared spelling of 1-2 letters ("a", "de", "in") is a function word, not a shortcut
NAMES_NUMBERS, SOUND_ALIKE = "names_numbers", "sound_alike"

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes (o'clock, l'acqua)
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """How a sentence pair is judged. phone_threshold: normalised phone distance (0 same, 1 nothing shared) below
    which two words sound alike (0: never; ``run_challenge`` calibrates one per language pair,
    ``engine.text.soundalike``); min_phones: shortest word (IPA segments) the sound rule looks at; ner: also use
    spaCy's entities (needs spaCy and a pipeline per language, ``spacy_pipeline``); ner_models: (language, spaCy
    pipeline name or folder) pairs for languages whose pipeline is not found by its name prefix."""

    phone_threshold: float = DEFAULT_PHONE_THRESHOLD
    min_phones: int = DEFAULT_MIN_PHONES
    ner: bool = False
    ner_models: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if isinstance(self.phone_threshold, bool) or not 0 <= self.phone_threshold <= 1:
            raise ChallengeError(
                f"phone_threshold must be in [0, 1] (0: the sound rule off), got {self.phone_threshold!r}"
            )
        if self.min_phones < 1:
            raise ChallengeError(f"min_phones must be >= 1, got {self.min_phones!r}")
        if self.ner_models and not self.ner:
            raise ChallengeError(
                f"ner_models {dict(self.ner_models)} given without ner: turn ner on (--ner) or drop them"
            )

    def entities(self):
        """The entity finder of this config for ``flag_pair``: None without ner."""
        return SpacyEntities(dict(self.ner_models)) if self.ner else None


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


NER_LABEL_COMPONENTS = ("ner", "entity_ruler")  # spaCy factories that set ``doc.ents``
MULTILINGUAL_PREFIX = "xx_"  # spaCy's multi-language pipelines (xx_ent_wiki_sm): the fallback for any language


@functools.cache
def spacy_pipeline(lang: str, model: str | None = None):
    """The spaCy pipeline that finds ``lang``'s entities: ``model`` (an installed package name or a pipeline folder),
    else the first installed ``<code>_*`` package in name order, else an installed multi-language ``xx_*`` one.
    Raises ChallengeError naming the fix when spaCy, the pipeline or its entity component is missing: ``ner=True``
    never falls back to the heuristic silently."""
    try:
        import spacy
    except ImportError:
        raise ChallengeError(
            "ner=True (--ner) needs spaCy, which is not installed: pip install spacy, then a pipeline per language "
            "(python -m spacy download en_core_web_sm); or leave ner off for the capitalisation heuristic"
        ) from None
    code = lang.strip().lower().replace("-", "_").split("_")[0]  # spaCy's packages: ISO 639-1 prefix (zh_core_web_sm)
    if model is None:
        installed = sorted(spacy.util.get_installed_models())
        own = [name for name in installed if name.startswith(f"{code}_")]
        multi = [name for name in installed if name.startswith(MULTILINGUAL_PREFIX)]
        if not own + multi:
            raise ChallengeError(
                f"ner=True but spaCy has no pipeline for {lang!r} installed (looked for {code}_* and "
                f"{MULTILINGUAL_PREFIX}*; installed: {installed or 'none'}): python -m spacy download "
                f"{code}_core_news_sm (en_core_web_sm for English), or name one with ner_models "
                f"(--ner_models {lang}=NAME_OR_FOLDER), or leave ner off for the capitalisation heuristic"
            )
        model = (own + multi)[0]
    try:
        nlp = spacy.load(model)
    except (OSError, ValueError) as e:
        raise ChallengeError(f"spaCy cannot load pipeline {model!r} for {lang!r}: {e}") from None
    factories = dict(nlp.pipe_factories)
    if not set(factories.values()) & set(NER_LABEL_COMPONENTS):
        raise ChallengeError(
            f"spaCy pipeline {model!r} for {lang!r} has no entity component ({' or '.join(NER_LABEL_COMPONENTS)}); "
            f"its components: {list(factories) or 'none'}. Give a pipeline that recognises entities"
        )
    return nlp


class SpacyEntities:
    """``(lang, text) -> entity tokens`` from spaCy pipelines (``spacy_pipeline``), each loaded at its first use.
    ``models``: language -> pipeline name or folder, for languages whose pipeline is not found by its prefix."""

    def __init__(self, models: dict[str, str] | None = None):
        self.models = dict(models or {})

    def load(self, langs: Iterable[str]) -> None:
        """Loads every language's pipeline now: a missing one fails the run before any work, not midway."""
        for lang in langs:
            spacy_pipeline(lang, self.models.get(lang))

    def __call__(self, lang: str, text: str) -> list[str]:
        doc = spacy_pipeline(lang, self.models.get(lang))(text or "")
        return [t for ent in doc.ents for t in words(ent.text)]


def shared_names_numbers(lang_a: str, text_a: str, lang_b: str, text_b: str, entities=None) -> list[str]:
    """Evidence strings for the names_numbers rule: shared numbers, proper nouns and 3+ letter spellings.
    ``entities``: None (the heuristic alone) or ``(lang, text) -> tokens`` whose tokens count as proper nouns too
    (``SpacyEntities``)."""
    evidence = [f"number {n}" for n in sorted(numbers(text_a) & numbers(text_b))]
    words_a, words_b = words(text_a), words(text_b)
    folded_a, folded_b = {fold(w): w for w in words_a}, {fold(w): w for w in words_b}
    names_a, names_b = capitalised_inside(text_a), capitalised_inside(text_b)
    if entities is not None:
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


def flag_pair(
    lang_a: str,
    text_a: str,
    lang_b: str,
    text_b: str,
    config: FilterConfig = FilterConfig(),
    book=None,
    entities=None,
) -> PairFlag:
    """The verdict on one translation pair (see the module docstring for the two rules). ``entities``: the entity
    finder (``shared_names_numbers``); None = ``config.entities()``."""
    book = PhoneBook() if book is None else book
    entities = config.entities() if entities is None else entities
    names = shared_names_numbers(lang_a, text_a, lang_b, text_b, entities)
    sounds, smallest = sound_alike(
        lang_a, words(text_a), lang_b, words(text_b), book, config.phone_threshold, config.min_phones
    )
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


def flag_store_pair(
    texts_a: dict[str, str], texts_b: dict[str, str], lang_a, lang_b, config, book, entities=None
) -> dict:
    """id -> PairFlag for every id with a text in both languages, in sorted id order."""
    return {
        uid: flag_pair(lang_a, texts_a[uid], lang_b, texts_b[uid], config, book, entities)
        for uid in sorted(texts_a.keys() & texts_b.keys())
    }
