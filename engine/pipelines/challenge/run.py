"""Pronunciation-controlled challenge sets: translation pairs with no phonetic shortcut between them
(``jobs/challenge.py``).

Every shared id of every asked language pair is judged by the filter (``engine.pipelines.challenge.rules``: a shared
name or number, or words that sound alike); the sound rule's threshold is calibrated per language pair against
chance (``engine.text.soundalike``) unless one is given.

Outputs of ``run_challenge`` (``OUT`` any TensorStore kvstore location; the format: ``engine.stores.challenge``)::

    OUT/<a>__<b>.csv    id, kept, reason, evidence: one row per shared id
    OUT/summary.csv     SUMMARY_COLUMNS: per pair and threshold (the chosen one and a ladder) pairs kept and the
                        share of mismatched pairs flagged
    OUT/challenge.json  the settings (SETTINGS_FIELDS) every CSV was made with, and per pair the threshold used,
                        its rule and the mismatched pairs' flag rate (``thresholds``)

A rerun into ``OUT`` with the same settings may add pairs; with other settings (or into a folder of CSVs without
``challenge.json``) it is refused before any work, naming each differing setting: one folder, one filter.
"""

from __future__ import annotations

import dataclasses
import math

from engine.errors import BabelgridError
from engine.pipelines.challenge.config import ChallengeConfig
from engine.pipelines.challenge.rules import (
    MIN_SHARED_LETTERS,
    SOUND_ALIKE,
    SpacyEntities,
    flag_store_pair,
    texts_by_id,
    words,
)
from engine.runtime.runs import output_lease
from engine.stores.challenge import (
    SETTINGS_FIELDS,
    SETTINGS_FORMAT,
    SETTINGS_JSON,
    SETTINGS_VERSION,
    SUMMARY_CSV,
    THRESHOLDS_KEY,
    ChallengeError,
    check_out,
    merged_summary,
    pair_csv_bytes,
    pair_csv_name,
    summary_csv_bytes,
    text_digest,
)
from engine.stores.integrity import write_outputs
from engine.stores.kv import create_or_compare, open_kvstore
from engine.stores.pairs import resolve_pairs
from engine.stores.reader import open_store
from engine.stores.records import json_bytes
from engine.text.soundalike import (
    PhoneBook,
    ThresholdChoice,
    choose_threshold,
    require_voices,
)

# Thresholds the summary also counts kept pairs at, so that one run shows how the set shrinks with the threshold.
SUMMARY_THRESHOLDS = (0.1, 0.12, 0.14, 0.16, 0.18, 0.2, 0.25)


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


def settings_manifest(config: ChallengeConfig) -> dict:
    """``OUT/challenge.json``: the settings the folder's CSVs were made with. The store is its canonical kvstore
    location (driver, bucket, absolute path), so that ``/x/store`` and ``file:///x/store/`` are one store."""
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
        # the texts the kept ids are judged on, per language: retrieval --subset compares them with its store's
        "texts": _texts(config.store),
    }


def _texts(store: str) -> dict | None:
    """``text_digest`` of every language of the layer store; None where it cannot be opened (the run names that
    itself, after the folder's settings are compared)."""
    try:
        reader = open_store(store)
        return {lang: text_digest(reader, lang) for lang in reader.languages}
    except BabelgridError:
        return None


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
    # before the lease, read only: a folder of other settings (checked again under the lease), then the languages,
    # pairs, espeak-ng voices and spaCy pipelines a request names but the store or the machine lacks, are refused
    # without creating the output folder
    store, pairs = request(config, store)
    entities = config.filter.entities() if entities is None else entities
    if isinstance(entities, SpacyEntities):
        entities.load(sorted({lang for pair in pairs for lang in pair}))
    with output_lease(config, "challenge"):
        return _challenge(config, store, entities, pairs)


def request(config: ChallengeConfig, store=None) -> tuple[object, list[tuple[str, str]]]:
    """(the store's reader, the language pairs) of the run, checked as the run and its plan refuse them: a folder of
    other settings, languages the store lacks, espeak-ng voices the machine lacks."""
    check_out(open_kvstore(config.run.out)[1], config.run.out, settings_manifest(config))
    store = open_store(config.store) if store is None else store
    available = list(store.languages())
    unknown = sorted(set(config.langs or ()) - set(available))
    if unknown:
        raise ChallengeError(f"the store has no language {unknown}; it has {available}")
    langs = [lang for lang in available if config.langs is None or lang in config.langs]
    pairs = resolve_pairs(config.pairs, langs, available)
    if not pairs:  # an empty or one-language store "succeeded" with an empty summary
        raise ChallengeError(f"no language pair to filter: the store has {available}; a challenge set needs two")
    involved = sorted({lang for pair in pairs for lang in pair})
    untranscribed = [lang for lang in involved if not texts_by_id(store.utterances_table(lang))]
    if untranscribed:  # every pair of theirs "kept 0/0", exit 0
        raise ChallengeError(
            f"the store has no transcription of {untranscribed}: challenge sets are filtered by the text (names, "
            "numbers, words that sound alike); encode a dataset that carries them"
        )
    require_voices(involved)
    return store, pairs


def _challenge(config: ChallengeConfig, store, entities, pairs) -> ChallengeResult:
    manifest = settings_manifest(config)
    out = config.run.out
    _, kv = open_kvstore(out)
    check_out(kv, out, manifest)  # again under the lease: another run may have written the folder since
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
    stored = create_or_compare(kv, SETTINGS_JSON, manifest, out, fields=SETTINGS_FIELDS,
                               error=ChallengeError, what="challenge folder")  # fmt: skip
    thresholds = {
        **stored.get(THRESHOLDS_KEY, {}),
        **{f"{a}__{b}": threshold_record(c) for (a, b), c in choices.items()},
    }
    writes = {pair_csv_name(a, b): pair_csv_bytes(f) for (a, b), f in all_flags.items()}
    writes[SUMMARY_CSV] = summary_csv_bytes(merged_summary(kv, out, summary, pairs))
    writes[SETTINGS_JSON] = json_bytes({**stored, THRESHOLDS_KEY: dict(sorted(thresholds.items()))})
    write_outputs(kv, writes, out)
    root = out.rstrip("/") + "/"
    outputs = tuple(root + k for k in writes)
    return ChallengeResult(all_flags, tuple(summary), outputs, choices)
