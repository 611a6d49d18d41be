"""Pronunciation-controlled challenge sets: translation pairs with no phonetic shortcut between them.

A sentence pair (the same id in languages a and b) is *flagged*, and left out of the challenge set, when either holds:

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

Outputs of ``run_challenge`` (``OUT`` any TensorStore kvstore location)::

    OUT/<a>__<b>.csv    id, kept, reason, evidence: one row per shared id
    OUT/summary.csv     SUMMARY_COLUMNS: per pair and threshold (the chosen one and a ladder) pairs kept and the
                        share of mismatched pairs flagged
    OUT/challenge.json  the settings (SETTINGS_FIELDS) every CSV was made with, and per pair the threshold used,
                        its rule and the mismatched pairs' flag rate (``thresholds``)

A rerun into ``OUT`` with the same settings may add pairs; with other settings (or into a folder of CSVs without
``challenge.json``) it is refused before any work, naming each differing setting: one folder, one filter.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

from engine.errors import BabelgridError
from engine.text.soundalike import (
    AUTO,
    DEFAULT_CHANCE_FLAG_RATE,
    DEFAULT_CHANCE_PAIRS,
    DEFAULT_MIN_PHONES,
    DEFAULT_PHONE_THRESHOLD,
    MIN_CHANCE_PAIRS,
    Calibration,
    PhoneBook,
    ThresholdChoice,
    choose_threshold,
    require_voices,
    sound_alike,
)

MIN_SHARED_LETTERS = 3  # a shared spelling of 1-2 letters ("a", "de", "in") is a function word, not a shortcut
# Thresholds the summary also counts kept pairs at, so that one run shows how the set shrinks with the threshold.
SUMMARY_THRESHOLDS = (0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25)
PAIR_COLUMNS = ("id", "kept", "reason", "evidence")
SUMMARY_COLUMNS = (
    "lang_a",
    "lang_b",
    "phone_threshold",
    "chosen",  # 1: the threshold this run used for the pair; 0: another rung of the ladder (SUMMARY_THRESHOLDS)
    "threshold_rule",  # chosen row: fixed, chance, cap or cap_too_few_mismatched (engine.text.soundalike)
    "pairs",
    "kept",
    "names_numbers",
    "sound_alike",
    "mismatched_pairs",  # mismatched (different-id) sentence pairs drawn for the chance rate
    "mismatched_flagged",  # share of them the sound rule flags at this threshold (NaN: none drawn)
)
NAMES_NUMBERS, SOUND_ALIKE = "names_numbers", "sound_alike"

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters, with inner apostrophes (o'clock, l'acqua)
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


class ChallengeError(BabelgridError, ValueError):
    """A challenge set cannot be built or read as asked: unknown language, missing file, bad threshold."""


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


def pair_csv_name(lang_a: str, lang_b: str) -> str:
    return f"{lang_a}__{lang_b}.csv"


def flag_store_pair(
    texts_a: dict[str, str], texts_b: dict[str, str], lang_a, lang_b, config, book, entities=None
) -> dict:
    """id -> PairFlag for every id with a text in both languages, in sorted id order."""
    return {
        uid: flag_pair(lang_a, texts_a[uid], lang_b, texts_b[uid], config, book, entities)
        for uid in sorted(texts_a.keys() & texts_b.keys())
    }


def pair_csv_bytes(flags: dict) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PAIR_COLUMNS)
    for uid, f in flags.items():
        writer.writerow([uid, int(f.kept), f.reason, "; ".join(f.evidence)])
    return buf.getvalue().encode()


def summary_rows(lang_a: str, lang_b: str, flags: dict, choice: ThresholdChoice) -> list[tuple]:
    """One row per threshold (the chosen one, ``chosen`` 1, and SUMMARY_THRESHOLDS): pairs kept if that were the
    threshold, and the share of the pair's mismatched pairs (``choice``) the sound rule flags at it."""
    rows = []
    for t in sorted({*SUMMARY_THRESHOLDS, choice.threshold}):
        sound = sum(1 for f in flags.values() if f.min_distance < t)  # NaN < t is False: no eligible word pair
        kept = sum(1 for f in flags.values() if not f.names_numbers and not f.min_distance < t)
        names = sum(1 for f in flags.values() if f.names_numbers)
        chosen = t == choice.threshold
        rows.append(
            (lang_a, lang_b, t, int(chosen), choice.rule if chosen else "", len(flags), kept, names, sound)
            + (choice.mismatched_pairs, choice.mismatched_flagged(t))
        )
    return rows


def summary_csv_bytes(rows: Sequence[tuple]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue().encode()


def read_kept(out: str, lang_a: str, lang_b: str, *, missing_ok: bool = False) -> set[str] | None:
    """The kept ids of the challenge set for (lang_a, lang_b) under ``out`` (either file order); None when it has
    no file for the pair and ``missing_ok``."""
    from engine.stores.kv import open_kvstore

    _, kv = open_kvstore(out)
    for name in (pair_csv_name(lang_a, lang_b), pair_csv_name(lang_b, lang_a)):
        result = kv.read(name).result()
        if result.state != "missing":
            rows = csv.DictReader(io.StringIO(bytes(result.value).decode()))
            return {r["id"] for r in rows if r["kept"] == "1"}
    if missing_ok:
        return None
    raise ChallengeError(
        f"challenge set {out!r} has no {pair_csv_name(lang_a, lang_b)} (nor {pair_csv_name(lang_b, lang_a)}); "
        f"build it: python -m jobs.challenge --store STORE --out {out} --pairs {lang_a}:{lang_b}"
    )


# --- the job's library entry ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChallengeConfig:
    """store: layer store URL; out: output folder or kvstore URL; pairs: ``resolve_pairs`` spec (``unordered`` =
    every pair of the store's languages once, or ``en:es,de:*``); langs: restrict to these (None = all).
    phone_threshold: ``AUTO`` (per language pair, the largest threshold, at most DEFAULT_PHONE_THRESHOLD, at which
    at most ``chance_flag_rate`` of up to ``chance_pairs`` mismatched sentence pairs drawn with ``chance_seed`` are
    flagged: ``engine.text.soundalike``) or a number used for every pair."""

    store: str
    out: str
    pairs: str = "unordered"
    langs: tuple[str, ...] | None = None
    phone_threshold: float | str = AUTO
    min_phones: int = DEFAULT_MIN_PHONES
    ner: bool = False
    ner_models: tuple[tuple[str, str], ...] = ()
    chance_flag_rate: float = DEFAULT_CHANCE_FLAG_RATE
    chance_pairs: int = DEFAULT_CHANCE_PAIRS
    chance_seed: int = 0

    def __post_init__(self):
        self.calibration  # noqa: B018  (validates the threshold settings now, not after the store is read)
        self.filter  # noqa: B018

    @property
    def calibration(self) -> Calibration:
        try:
            return Calibration(self.phone_threshold, DEFAULT_PHONE_THRESHOLD, self.chance_flag_rate,
                               self.chance_pairs, self.chance_seed, MIN_CHANCE_PAIRS)  # fmt: skip
        except ValueError as e:
            raise ChallengeError(str(e)) from None

    @property
    def filter(self) -> FilterConfig:
        """The filter with the cap as threshold: ``run_challenge`` replaces it by each pair's ``ThresholdChoice``."""
        threshold = DEFAULT_PHONE_THRESHOLD if self.phone_threshold == AUTO else self.phone_threshold
        return FilterConfig(threshold, self.min_phones, self.ner, tuple(sorted(self.ner_models)))


def parse_threshold(text: str | float) -> float | str:
    """``--phone_threshold``: ``"auto"`` or a number in [0, 1]."""
    if isinstance(text, str) and text.strip().lower() == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise ChallengeError(f"--phone_threshold must be {AUTO!r} or a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise ChallengeError(f"--phone_threshold must be {AUTO!r} or a number in [0, 1], got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class ChallengeResult:
    flags: dict  # (lang_a, lang_b) -> {id: PairFlag}
    summary: tuple[tuple, ...]  # SUMMARY_COLUMNS rows
    outputs: tuple[str, ...]
    thresholds: dict  # (lang_a, lang_b) -> ThresholdChoice

    def report(self) -> str:
        lines = ["challenge sets: pairs kept of shared ids"]
        for (a, b), flags in self.flags.items():
            kept = sum(f.kept for f in flags.values())
            names = sum(f.names_numbers for f in flags.values())
            sound = sum(SOUND_ALIKE in f.reasons for f in flags.values())
            choice = self.thresholds[a, b]
            lines.append(
                f"  {a}-{b}: {kept}/{len(flags)} kept ({names} names/numbers, {sound} sound-alike); phone_threshold "
                f"{choice.threshold:.4g}: {choice.describe()}"
            )
        return "\n".join(lines)


SETTINGS_JSON = "challenge.json"
SETTINGS_FORMAT, SETTINGS_VERSION = "babelgrid-challenge", 2
# Settings every file of one output folder shares: a rerun into the folder with others is refused (the pairs are not
# among them: a rerun may add pairs, whose rows replace theirs in summary.csv).
SETTINGS_FIELDS = ("store", "phone_threshold", "phone_threshold_cap", "chance_flag_rate", "chance_pairs", "chance_seed",
                   "min_chance_pairs", "min_phones", "ner", "ner_models", "min_shared_letters")  # fmt: skip
# Not a setting: per pair, the threshold used, its rule and the mismatched pairs' flag rate (merged on reruns).
THRESHOLDS_KEY = "thresholds"


def settings_manifest(config: ChallengeConfig) -> dict:
    """``OUT/challenge.json``: the settings the folder's CSVs were made with. The store is its canonical kvstore
    location (driver, bucket, absolute path), so that ``/x/store`` and ``file:///x/store/`` are one store."""
    from engine.stores.kv import open_kvstore

    spec, _ = open_kvstore(config.store)
    store = {k: spec[k] for k in ("driver", "bucket", "path") if k in spec}
    f, c = config.filter, config.calibration
    return {
        "format": SETTINGS_FORMAT,
        "version": SETTINGS_VERSION,
        "store": store,
        "phone_threshold": c.threshold,
        "phone_threshold_cap": c.cap,
        "chance_flag_rate": c.flag_rate,
        "chance_pairs": c.max_pairs,
        "chance_seed": c.seed,
        "min_chance_pairs": c.min_pairs,
        "min_phones": f.min_phones,
        "ner": f.ner,
        "ner_models": {lang: model for lang, model in f.ner_models},
        "min_shared_letters": MIN_SHARED_LETTERS,
    }


def _is_challenge_output(key: str) -> bool:
    return key == "summary.csv" or re.fullmatch(r"[^/]+__[^/]+\.csv", key) is not None


def check_out(kv, out: str, manifest: dict) -> None:
    """Refuses an output folder whose CSVs were made with other settings (``SETTINGS_FIELDS``), or with unknown
    ones (CSVs without ``challenge.json``: written before the settings were recorded), naming what differs."""
    from engine.stores.kv import manifest_diffs, read_json

    stored = read_json(kv, SETTINGS_JSON, out)
    if stored is None:
        try:
            keys = [k.decode() for k in kv.list().result()]
        except ValueError as e:
            raise ChallengeError(f"cannot list challenge folder {out!r}: {e}") from None
        old = sorted(k for k in keys if _is_challenge_output(k))
        if old:
            raise ChallengeError(
                f"challenge folder {out!r} holds {old[:4]}{' ...' if len(old) > 4 else ''} but no {SETTINGS_JSON}: "
                "they were made with settings not recorded (an older babelgrid), so they cannot be mixed with this "
                "run's. Write to a new output folder, or delete the old CSVs"
            )
        return
    if stored.get("format") != SETTINGS_FORMAT:
        raise ChallengeError(f"{SETTINGS_JSON} in {out!r} is not a challenge-set settings file (format "
                             f"{stored.get('format')!r}); write to a new output folder")  # fmt: skip
    diffs = manifest_diffs(stored, manifest, SETTINGS_FIELDS)
    if diffs:
        named = "; ".join(diffs).replace(": store has ", ": folder has ")
        raise ChallengeError(
            f"challenge folder {out!r} was made with other settings: {named}. Its CSVs would mix two filters: write "
            "to a new output folder, or rerun with the folder's settings"
        )


def merged_summary(kv, out: str, rows: Sequence[tuple], pairs) -> list[tuple]:
    """``rows`` after the rows of the folder's existing summary.csv for pairs this run did not compute."""
    from engine.stores.kv import read_value

    result = read_value(kv, "summary.csv", out)
    if result.state == "missing":
        return list(rows)
    done = {tuple(p) for p in pairs}
    old = csv.reader(io.StringIO(bytes(result.value).decode()))
    next(old, None)
    return [tuple(r) for r in old if r and (r[0], r[1]) not in done] + list(rows)


def threshold_record(choice: ThresholdChoice) -> dict:
    """``challenge.json``'s record of one pair's threshold: the value, its rule and the mismatched pairs' flag rate."""
    rate = choice.mismatched_flagged()
    return {
        "phone_threshold": choice.threshold,
        "threshold_rule": choice.rule,
        "mismatched_pairs": choice.mismatched_pairs,
        "mismatched_flagged": None if math.isnan(rate) else rate,
    }


def run_challenge(config: ChallengeConfig, store=None, entities=None) -> ChallengeResult:
    """Flags every shared id of every asked pair and writes ``OUT/<a>__<b>.csv``, ``OUT/summary.csv`` (rows of
    pairs from earlier runs into the folder kept) and ``OUT/challenge.json`` (the settings). A folder made with other
    settings is refused before any work (``check_out``). ``entities``: the entity finder (None =
    ``config.filter.entities()``: spaCy with ``ner``, else none)."""
    from engine.stores.kv import create_or_compare, json_bytes, open_kvstore, write_all
    from engine.stores.reader import open_store
    from engine.stores.similarity import resolve_pairs

    manifest = settings_manifest(config)
    _, kv = open_kvstore(config.out)
    check_out(kv, config.out, manifest)
    entities = config.filter.entities() if entities is None else entities
    store = open_store(config.store) if store is None else store
    available = list(store.languages())
    unknown = sorted(set(config.langs or ()) - set(available))
    if unknown:
        raise ChallengeError(f"the store has no language {unknown}; it has {available}")
    langs = [lang for lang in available if config.langs is None or lang in config.langs]
    pairs = resolve_pairs(config.pairs, langs, available)
    require_voices(sorted({lang for pair in pairs for lang in pair}))
    if isinstance(entities, SpacyEntities):
        entities.load(sorted({lang for pair in pairs for lang in pair}))
    texts = {lang: texts_by_id(store.utterances_table(lang)) for lang in sorted({x for p in pairs for x in p})}
    book, all_flags, summary, choices = PhoneBook(), {}, [], {}
    for a, b in pairs:
        tokens_a, tokens_b = ({uid: words(t) for uid, t in texts[x].items()} for x in (a, b))
        choices[a, b] = choose_threshold(tokens_a, tokens_b, a, b, book, config.calibration, config.min_phones)
        pair_filter = dataclasses.replace(config.filter, phone_threshold=choices[a, b].threshold)
        all_flags[a, b] = flag_store_pair(texts[a], texts[b], a, b, pair_filter, book, entities)
        summary += summary_rows(a, b, all_flags[a, b], choices[a, b])
    # Settings first (a conditional create: of two runs racing into one new folder, one wins, the other is refused),
    # then the CSVs, which a crash can only leave incomplete, never made with other settings.
    stored = create_or_compare(kv, SETTINGS_JSON, manifest, config.out, fields=SETTINGS_FIELDS,
                               error=ChallengeError, what="challenge folder")  # fmt: skip
    thresholds = {
        **stored.get(THRESHOLDS_KEY, {}),
        **{f"{a}__{b}": threshold_record(c) for (a, b), c in choices.items()},
    }
    writes = {pair_csv_name(a, b): pair_csv_bytes(f) for (a, b), f in all_flags.items()}
    writes["summary.csv"] = summary_csv_bytes(merged_summary(kv, config.out, summary, pairs))
    writes[SETTINGS_JSON] = json_bytes({**stored, THRESHOLDS_KEY: dict(sorted(thresholds.items()))})
    write_all(kv, writes, config.out)
    root = config.out.rstrip("/") + "/"
    outputs = tuple(root + k for k in writes)
    return ChallengeResult(all_flags, tuple(summary), outputs, choices)
