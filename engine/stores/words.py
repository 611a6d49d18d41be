"""An align job's output, for the job and for analysts: word rows per language, their parts, and the reader.

Layout (``OUT`` a local path or a TensorStore kvstore URL; ``engine.pipelines.align.run`` writes it)::

    OUT/align.json                      settings and model of the run; a resumed run must match them
    OUT/<lang>/words.parquet            utterance, id, recording, word_index, word, start, end, probability
    OUT/<lang>/skipped.csv              utterance, id, reason: what has no words and why
    OUT/<lang>/parts/<first>.parquet    the same rows for utterances first..first+chunk-1 (the unit of resume);
                                        its Parquet metadata lists the utterances it was made from and its skips
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Sequence

import pyarrow as pa

from engine.errors import BabelgridError
from engine.languages import language_key
from engine.stores import parts
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore, read_json
from engine.stores.parts import read_table, table_bytes
from engine.stores.records import csv_bytes
from engine.stores.similarity import check_name

MANIFEST = "align.json"
WORDS = "words.parquet"
SKIPPED = "skipped.csv"
WORD_SCHEMA = pa.schema(
    [
        pa.field("utterance", pa.int32(), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("recording", pa.int32(), nullable=False),
        pa.field("word_index", pa.int32(), nullable=False),
        pa.field("word", pa.string(), nullable=False),
        pa.field("start", pa.float32(), nullable=False),  # seconds from the start of the utterance
        pa.field("end", pa.float32(), nullable=False),
        pa.field("probability", pa.float32(), nullable=False),
    ]
)


class WordsError(BabelgridError, ValueError):
    """An align job's output is missing or incomplete."""


def part_key(lang: str, first: int) -> str:
    return f"{lang}/parts/{first:08d}.parquet"


def part_bytes(rows: dict, done: Sequence[int], skipped: Sequence[tuple[int, str, str]]) -> bytes:
    """One part of a language's words (``engine.stores.parts``)."""
    return parts.part_bytes(rows, WORD_SCHEMA, done, skipped)


def write_language(
    kv, out: str, lang: str, parts: Sequence[pa.Table], skipped: Sequence[tuple], subtitles: Sequence[str] = ()
) -> list[str]:
    """Writes ``<lang>/words.parquet`` (the parts' rows, in part order), ``<lang>/skipped.csv`` (sorted), one JSON per
    aligned utterance and, for each of ``subtitles`` (``srt``, ``vtt``), one subtitle file per utterance; returns
    the URLs of the first two."""
    words = pa.concat_tables(parts).replace_schema_metadata(None) if parts else WORD_SCHEMA.empty_table()
    files = {
        f"{lang}/{WORDS}": table_bytes(words),
        f"{lang}/{SKIPPED}": csv_bytes(["utterance", "id", "reason"], sorted(skipped)),
    }
    files |= per_utterance_files(lang, words, subtitles)
    write_outputs(kv, files, out)
    root = out.rstrip("/") + "/"
    return [root + f"{lang}/{WORDS}", root + f"{lang}/{SKIPPED}"]


SUBTITLE_FORMATS = ("srt", "vtt")
CUE_MAX_CHARS = 42  # a subtitle line's usual limit
CUE_MAX_SECONDS = 5.0


def per_utterance_files(lang: str, words: pa.Table, subtitles: Sequence[str] = ()) -> dict[str, bytes]:
    """``<lang>/json/<utterance>.json`` per aligned utterance: ``{"id", "recording", "language", "words": [{"word",
    "start", "end", "probability"}]}``, each word in faster-whisper's word-dict shape; and ``<lang>/<fmt>/<utterance>
    .<fmt>`` for each subtitle format, words grouped into cues of at most CUE_MAX_CHARS characters and
    CUE_MAX_SECONDS. Files are named by utterance index, never by id: ids come from datasets and may hold '/'."""
    for fmt in subtitles:
        if fmt not in SUBTITLE_FORMATS:
            raise ValueError(f"subtitle format must be one of {SUBTITLE_FORMATS}, got {fmt!r}")
    by_utterance: dict[int, list[dict]] = {}
    for row in words.to_pylist():
        by_utterance.setdefault(row["utterance"], []).append(row)
    files = {}
    for u, rows in by_utterance.items():
        listed = [
            {
                "word": r["word"],
                "start": round(r["start"], 3),
                "end": round(r["end"], 3),
                "probability": r["probability"],
            }
            for r in rows
        ]
        record = {"id": rows[0]["id"], "recording": rows[0]["recording"], "language": lang, "words": listed}
        files[f"{lang}/json/{u:08d}.json"] = (json.dumps(record, ensure_ascii=False, indent=1) + "\n").encode()
        for fmt in subtitles:
            files[f"{lang}/{fmt}/{u:08d}.{fmt}"] = _subtitles(listed, fmt).encode()
    return files


def _cues(words: list[dict]) -> list[tuple[float, float, str]]:
    cues, current = [], []
    for w in words:
        text = "".join(x["word"] for x in [*current, w]).strip()
        if current and (len(text) > CUE_MAX_CHARS or w["end"] - current[0]["start"] > CUE_MAX_SECONDS):
            cues.append((current[0]["start"], current[-1]["end"], "".join(x["word"] for x in current).strip()))
            current = []
        current.append(w)
    if current:
        cues.append((current[0]["start"], current[-1]["end"], "".join(x["word"] for x in current).strip()))
    return cues


def _timestamp(seconds: float, separator: str) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{separator}{ms % 1000:03d}"


def _subtitles(words: list[dict], fmt: str) -> str:
    """SubRip (``srt``: numbered cues, comma before milliseconds) or WebVTT (``vtt``: header, full stop)."""
    lines = ["WEBVTT", ""] if fmt == "vtt" else []
    separator = "." if fmt == "vtt" else ","
    for i, (start, end, text) in enumerate(_cues(words), 1):
        if fmt == "srt":
            lines.append(str(i))
        lines += [f"{_timestamp(start, separator)} --> {_timestamp(end, separator)}", text, ""]
    return "\n".join(lines)


def frame_span(start: float, end: float, n_frames: int, frame_rate: float = 50.0) -> tuple[int, int] | None:
    """Frame span [s, e) of a word timed start..end seconds, at least one frame, inside 0..n_frames, at
    ``frame_rate`` frames per second (the store's); None for missing or reversed times. Every reader of the words
    places them so (interp, the probes job's same-different and CCA tokens): probes floored 1.06 s, read back from
    float32 as 52.99 frames, to frame 52, and put 112 of 170 words a frame off interp's (a probe's)."""
    if not (math.isfinite(start) and math.isfinite(end)) or end < start or start < 0:
        return None
    # A small tolerance both ways: the align job's times lie on the 20 ms frame grid, and after float32 rounding
    # 0.3 s may read 14.99999 or 15.00001 frames; without it neighbouring words would share a frame.
    s = min(int(math.floor(start * frame_rate + 1e-3)), n_frames - 1)
    e = min(max(s + 1, int(math.ceil(end * frame_rate - 1e-3))), n_frames)
    return s, e


def audio_digest(reader, lang: str) -> str:
    """sha256 of a language's utterances as audio: (id, recording, duration to the millisecond) of every row of the
    layer store's table. Stores of other models over the same clips give the same digest (interp reads words aligned
    through Whisper on an OWSM or wav2vec2 store of the same clips); other clips under the same ids do not."""
    table = reader.utterances_table(lang)
    rows = zip(table.column("id").to_pylist(), table.column("recording").to_pylist(),
               table.column("duration_s").to_pylist(), strict=True)  # fmt: skip
    listed = sorted((str(i), int(r), round(float(d), 3)) for i, r, d in rows)
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def check_words_store(out: str, reader, langs, error: type[BabelgridError]) -> None:
    """Refuses (``error``) the words at ``out`` where ``align.json`` says they were aligned on other audio than the
    layer store ``reader``'s, language by language (``audio_digest``): words of other clips under the same ids gave
    one clip's words and times to another, without a word (mixing, a probe's). An align output that recorded no
    audio (older) is not compared."""
    _, kv = open_kvstore(out)
    audio = (read_json(kv, MANIFEST, out) or {}).get("audio")
    if not isinstance(audio, dict):
        return
    for lang in langs:
        try:
            theirs = audio.get(words_language(out, lang))
        except WordsError:  # no words of it: the job's own reading names that
            continue
        if theirs is not None and theirs != audio_digest(reader, lang):
            raise error(
                f"the words at {out!r} of {lang!r} were aligned on other audio than the layer store {reader.url!r} "
                "holds under those ids (other clips, or clips of other lengths): their times belong to that audio. "
                "Run jobs.align on this store"
            )


def words_language(out: str, lang: str) -> str:
    """The language folder of an align output holding ``lang``'s words: ``lang`` itself, else the one language of
    the output that names the same language in another code system (``engine.languages.language_key``: a Whisper
    store's ``en_us`` or ``en`` for an Omnilingual store's ``eng_Latn``); a WordsError when none or several do."""
    check_name("language", lang)
    _, kv = open_kvstore(out)
    if kv.read(f"{lang}/{WORDS}").result().state == "value":
        return lang
    listed = sorted({key.decode().split("/", 1)[0] for key in kv.list().result() if key.decode().endswith(f"/{WORDS}")})
    same = [other for other in listed if language_key(other) == language_key(lang)]
    if len(same) != 1:
        raise WordsError(
            f"no {lang}/{WORDS} under {out!r}" + (f", and {same} all name its language" if same else "")
            + f": it holds the words of {listed or 'no language'}; run jobs.align there on a store of {lang!r}"
        )  # fmt: skip
    return same[0]


def words_digest(out: str, lang: str) -> str:
    """sha256 of ``lang``'s words.parquet under ``out`` (found as ``words_language`` finds it): what a job that reads
    them records, so that a resume on words aligned again is refused."""
    _, kv = open_kvstore(out)
    found = kv.read(f"{words_language(out, lang)}/{WORDS}").result()
    return hashlib.sha256(bytes(found.value)).hexdigest()


def read_words(out: str, lang: str, *, skipped: bool = False):
    """An align job's ``<lang>/words.parquet`` as a pyarrow Table (``.to_pandas()`` for a DataFrame), from a local
    path or kvstore URL; with ``skipped=True`` also its ``skipped.csv`` rows as ``[(utterance, id, reason)]``."""
    check_name("language", lang)
    _, kv = open_kvstore(out)
    found = kv.read(f"{lang}/{WORDS}").result()
    if found.state != "value":
        raise WordsError(f"no {lang}/{WORDS} under {out!r}: {_why_no_words(kv, out)}")
    table = read_table(found.value, f"{lang}/{WORDS}", out, "align")
    if not skipped:
        return table
    data = read_output(kv, f"{lang}/{SKIPPED}", out, fix=repair_hint(out, "align")) or b""
    rows = list(csv.reader(io.StringIO(data.decode())))[1:]
    return table, [(int(u), uid, reason) for u, uid, reason in rows]


def _why_no_words(kv, out: str) -> str:
    """What the folder holds instead, for ``read_words``' refusal: a wrong folder, another language, a run in
    progress and a folder align never wrote all said the same before (analyst probe)."""
    import tensorstore as ts

    keys = [k.decode() for k in kv.list(ts.KvStore.KeyRange()).result()]
    has = sorted({k.split("/")[0] for k in keys if k.endswith(f"/{WORDS}") and k.count("/") == 1})
    manifest = kv.read("manifest.json").result()
    try:
        kind = str(json.loads(bytes(manifest.value)).get("format", "")) if manifest.state == "value" else ""
    except (ValueError, AttributeError):
        kind = ""  # damaged or foreign: not this message's business
    if kind.startswith("babelgrid-") and kind != "babelgrid-words":
        return f"it is a {kind} folder, not the align job's output: give read_words the align job's --out"
    if has:
        return f"it has words of {has} only: run jobs.align with this language"
    if "lease.json" in keys:
        return "a run writes it (its lease.json is there): the align job writes words.parquet when its run completes"
    return "run jobs.align there (it writes it when a run completes)"
