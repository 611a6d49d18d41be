"""A challenge-set folder's files, for the challenge job that writes them and the retrieval job that reads them.

Layout (``OUT`` any TensorStore kvstore location; ``engine.pipelines.challenge.run`` writes it)::

    OUT/<a>__<b>.csv    PAIR_COLUMNS: id, kept, reason, evidence: one row per shared id
    OUT/summary.csv     SUMMARY_COLUMNS: per pair and threshold (the chosen one and a ladder) pairs kept and the
                        share of mismatched pairs flagged
    OUT/challenge.json  the settings (SETTINGS_FIELDS) every CSV was made with, and per pair the threshold used,
                        its rule and the mismatched pairs' flag rate (``THRESHOLDS_KEY``)

One folder, one filter: ``check_out`` refuses a folder whose CSVs were made with other settings.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Sequence

from engine.errors import BabelgridError
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore, read_json
from engine.stores.reader import open_store
from engine.stores.records import csv_bytes, manifest_diffs

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
SUMMARY_CSV = "summary.csv"
SETTINGS_JSON = "challenge.json"
SETTINGS_FORMAT, SETTINGS_VERSION = "babelgrid-challenge", 2
# Settings every file of one output folder shares: a rerun into the folder with others is refused (the pairs are not
# among them: a rerun may add pairs, whose rows replace theirs in summary.csv).
SETTINGS_FIELDS = ("store", "phone_threshold", "phone_threshold_cap", "chance_flag_rate", "chance_pairs", "chance_seed",
                   "min_chance_pairs", "min_phones", "ner", "ner_models", "min_shared_letters")  # fmt: skip
# Not a setting: per pair, the threshold used, its rule and the mismatched pairs' flag rate (merged on reruns).
THRESHOLDS_KEY = "thresholds"


class ChallengeError(BabelgridError, ValueError):
    """A challenge set cannot be built or read as asked: unknown language, missing file, bad threshold."""


def pair_csv_name(lang_a: str, lang_b: str) -> str:
    return f"{lang_a}__{lang_b}.csv"


def pair_csv_bytes(flags: dict) -> bytes:
    """``<a>__<b>.csv`` of ``flags`` (id -> verdict with ``kept``, ``reason`` and ``evidence``:
    ``engine.pipelines.challenge.rules.PairFlag``)."""
    return csv_bytes(PAIR_COLUMNS, ([uid, int(f.kept), f.reason, "; ".join(f.evidence)] for uid, f in flags.items()))


def summary_csv_bytes(rows: Sequence[tuple]) -> bytes:
    return csv_bytes(SUMMARY_COLUMNS, rows)


def read_kept(out: str, lang_a: str, lang_b: str, *, missing_ok: bool = False) -> set[str] | None:
    """The kept ids of the challenge set for (lang_a, lang_b) under ``out`` (either file order); None when it has
    no file for the pair and ``missing_ok``."""
    _, kv = open_kvstore(out)
    for name in (pair_csv_name(lang_a, lang_b), pair_csv_name(lang_b, lang_a)):
        data = read_output(kv, name, out, fix=repair_hint(out, "challenge"))
        if data is not None:
            return {r["id"] for r in csv.DictReader(io.StringIO(data.decode())) if r["kept"] == "1"}
    if missing_ok:
        return None
    raise ChallengeError(
        f"challenge set {out!r} has no {pair_csv_name(lang_a, lang_b)} (nor {pair_csv_name(lang_b, lang_a)}); "
        f"build it: python -m jobs.challenge --store STORE --out {out} --pairs {lang_a}:{lang_b}"
    )


def text_digest(reader, lang: str) -> str:
    """sha256 of a language's (id, transcription) rows in a layer store: what a challenge set's kept ids were judged
    on. Stores of other models over the same dataset give the same digest."""
    table = reader.utterances_table(lang)
    rows = zip(table.column("id").to_pylist(), table.column("transcription").to_pylist(), strict=True)
    return hashlib.sha256(json.dumps(sorted((str(i), t or "") for i, t in rows)).encode()).hexdigest()


def check_built_on(out: str, similarity_manifest: dict, error: type[BabelgridError]) -> None:
    """Refuses (``error``) a challenge folder built on other texts than those of the layer store a similarity store
    (its ``similarity_manifest``) was computed from, language by language (``text_digest``): its kept ids were judged
    on other sentences, and retrieval --subset scored them without a word (a probe's). A store of another model over
    the same dataset passes. Not compared: a folder without recorded texts (hand-made, or older), or a layer store
    that cannot be opened here."""
    texts = (read_json(open_kvstore(out)[1], SETTINGS_JSON, out) or {}).get("texts")
    if not isinstance(texts, dict):
        return
    try:
        reader = open_store(similarity_manifest.get("layer_store", ""))
        langs = [lang for lang in reader.languages if lang in texts]
        differ = [lang for lang in langs if texts[lang] != text_digest(reader, lang)]
    except BabelgridError:
        return
    if differ:
        raise error(
            f"challenge set {out!r} was built on other texts of {differ} than the layer store {reader.url!r} holds "
            "under the same ids: its kept ids were judged on other sentences. Build it on that store: python -m "
            f"jobs.challenge --store {reader.url} --out NEW --pairs ..."
        )


def _is_challenge_output(key: str) -> bool:
    return key == SUMMARY_CSV or re.fullmatch(r"[^/]+__[^/]+\.csv", key) is not None


def check_out(kv, out: str, manifest: dict) -> None:
    """Refuses an output folder whose CSVs were made with other settings (``SETTINGS_FIELDS``), or with unknown
    ones (CSVs without ``challenge.json``: written before the settings were recorded), naming what differs."""
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
    data = read_output(kv, SUMMARY_CSV, out, fix=repair_hint(out, "challenge"))
    if data is None:
        return list(rows)
    done = {tuple(p) for p in pairs}
    old = csv.reader(io.StringIO(data.decode()))
    next(old, None)
    return [tuple(r) for r in old if r and (r[0], r[1]) not in done] + list(rows)
