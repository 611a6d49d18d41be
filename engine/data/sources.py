"""Speech datasets as lists of utterances: manifests and plain folders here, FLEURS in ``engine.data.fleurs``, the
demo set in ``engine.data.synth.sentences``, and ``get_source``, which picks one from a job's ``--dataset`` spec.

Every source lists ``Utterance`` records; none decodes audio while listing. ``Utterance.load`` decodes one clip
with ``engine.data.audio.load_audio`` and raises its ``AudioError`` subclasses with the clip named, so that a job can
skip and count broken clips (FLEURS has a few) instead of failing.

Glossary:

- id: the utterance's sentence id. Translations share it (FLEURS's sentence id, the demo set's ``demo-NNN``), so
  the same id across languages is a parallel pair.
- recording: FLEURS has several readings of one sentence id in one language; all are kept, numbered 0, 1, ... in
  file order, so ``(lang, id, recording)`` is unique within a split.
- lang: the dataset's own language code (FLEURS ``en_us``, a manifest's ``en``); ``Utterance.whisper_lang`` maps it
  to Whisper's code when it can.
- split: FLEURS's ``train`` / ``validation`` / ``test``. Sources without splits (demo, folder, a manifest without a
  ``split`` column) ignore the argument: the whole set is one split.

``get_source(spec)`` turns the string a job's ``--dataset`` flag holds into a source; ``source.name`` is that spec
with absolute paths, so a store can record it and reopen the same source.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any

from engine.data.fleurs import FleursSource
from engine.data.synth.sentences import DemoSource
from engine.data.synth.words import WordsDemoSource
from engine.data.utterance import (
    DatasetError,
    Source,
    Utterance,
    check_language,
    is_audio,
    number_recordings,
    text_or_none,
)

SPEC_FORMS = (
    "demo",
    "words-demo (the bundled word set of the probe)",
    "fleurs",
    "fleurs:/path/to/fleurs (original layout or Parquet export)",
    "manifest:/path/to/list.jsonl (or .csv / .tsv)",
    "folder:/path/to/audio",
)


def get_source(spec: str, **kwargs: Any) -> Source:
    """The source a dataset spec names: ``demo``, ``fleurs``, ``fleurs:PATH``, ``manifest:PATH``, ``folder:PATH``.

    ``kwargs`` go to the source's constructor (``cache_dir=`` for demo and fleurs, ``lang=`` for a flat folder).
    """
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.lower()
    forms = "; ".join(SPEC_FORMS)
    if kwargs.get("lang") is not None and kind != "folder":
        raise DatasetError(f"a language (--lang {kwargs['lang']}) is given only to a flat folder dataset, not {spec!r}")
    kwargs = {k: v for k, v in kwargs.items() if not (k == "lang" and v is None)}
    if kind == "demo":
        if arg:
            kwargs.setdefault("cache_dir", arg)
        return DemoSource(**kwargs)
    if kind == "words-demo":
        if arg:
            kwargs.setdefault("cache_dir", arg)
        return WordsDemoSource(**kwargs)
    if kind == "fleurs":
        return FleursSource(arg or None, **kwargs)
    if kind in ("manifest", "folder"):
        if not arg:
            raise DatasetError(f"dataset spec {spec!r} names no path; write {kind}:/path (accepted: {forms})")
        return ManifestSource(arg, **kwargs) if kind == "manifest" else FolderSource(arg, **kwargs)
    raise DatasetError(f"unknown dataset spec {spec!r}; accepted forms: {forms}")


# --- manifests ------------------------------------------------------------------------------------------------------

MANIFEST_REQUIRED = ("id", "lang", "path")
MANIFEST_OPTIONAL = ("transcription", "raw_transcription", "speaker", "gender", "split", "duration_s")


class ManifestSource:
    """A JSONL (one object per line) or CSV/TSV (with a header) list of utterances.

    Columns: ``id``, ``lang``, ``path`` (required); ``transcription``, ``raw_transcription`` (the text as read,
    cased and punctuated), ``speaker``, ``gender``, ``split``,
    ``duration_s`` (optional; other columns are ignored). Relative paths resolve against the manifest's folder.
    Audio files are not checked here: a missing one fails that utterance's ``load`` alone.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path).expanduser().resolve()
        self.name = f"manifest:{self.path}"
        if not self.path.is_file():
            raise DatasetError(f"manifest {str(self.path)!r} does not exist or is not a file")
        suffix = self.path.suffix.lower()
        if suffix in (".jsonl", ".json", ".ndjson"):
            records = self._read_jsonl()
        elif suffix in (".csv", ".tsv"):
            records = self._read_csv(delimiter="\t" if suffix == ".tsv" else ",")
        else:
            raise DatasetError(f"manifest {str(self.path)!r}: unknown format {suffix!r}; use .jsonl, .csv or .tsv")
        self._rows = [self._row(where, r) for where, r in records]
        self._has_splits = any(r["split"] for r in self._rows)
        if self._has_splits:
            unsplit = [where for (where, _), r in zip(records, self._rows, strict=True) if not r["split"]]
            if unsplit:
                raise DatasetError(
                    f"manifest {unsplit[0]} has no split while other rows have one; give every row a split or none"
                )

    def _read_jsonl(self) -> list[tuple[str, dict]]:
        records = []
        for line_no, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"manifest {self.path}:{line_no} is not valid JSON ({e.msg}); one object per line"
                ) from None
            if not isinstance(record, dict):
                raise DatasetError(f"manifest {self.path}:{line_no} holds a {type(record).__name__}, not a JSON object")
            records.append((f"{self.path}:{line_no}", record))
        return records

    def _read_csv(self, delimiter: str) -> list[tuple[str, dict]]:
        with self.path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in MANIFEST_REQUIRED if c not in header]
            if missing:
                raise DatasetError(
                    f"manifest {str(self.path)!r} has no column {', '.join(map(repr, missing))} in its header "
                    f"{header}; required: {', '.join(MANIFEST_REQUIRED)}"
                )
            reader.fieldnames = header
            # Line numbers count the header as line 1.
            return [(f"{self.path}:{n}", row) for n, row in enumerate(reader, start=2)]

    def _row(self, where: str, record: dict) -> dict[str, Any]:
        missing = [c for c in MANIFEST_REQUIRED if text_or_none(record.get(c)) is None]
        if missing:
            raise DatasetError(
                f"manifest {where} has no {', '.join(map(repr, missing))}; every row needs id, lang, path"
            )
        audio = pathlib.Path(str(record["path"]).strip()).expanduser()
        audio = audio if audio.is_absolute() else self.path.parent / audio
        duration = record.get("duration_s")
        try:
            duration = float(duration) if duration not in (None, "") else None
        except ValueError:
            raise DatasetError(f"manifest {where}: duration_s {duration!r} is not a number of seconds") from None
        return dict(
            id=str(record["id"]).strip(),
            lang=str(record["lang"]).strip(),
            audio=str(audio),
            path=str(audio),
            transcription=text_or_none(record.get("transcription")),
            raw_transcription=text_or_none(record.get("raw_transcription")),
            speaker=text_or_none(record.get("speaker")),
            gender=text_or_none(record.get("gender")),
            duration_s=duration,
            split=text_or_none(record.get("split")),
        )

    def languages(self) -> list[str]:
        return sorted({r["lang"] for r in self._rows})

    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self._rows if r["split"]}) if self._has_splits else []

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), f"manifest {str(self.path)!r}")
        rows = [r for r in self._rows if r["lang"] == lang]
        if self._has_splits:
            if split not in self.splits():
                raise DatasetError(f"manifest {str(self.path)!r} has no split {split!r}; it has {self.splits()}")
            rows = [r for r in rows if r["split"] == split]
        return number_recordings({k: v for k, v in r.items() if k != "split"} for r in rows)


# --- plain folders --------------------------------------------------------------------------------------------------


class FolderSource:
    """A folder of audio files (``AUDIO_EXTENSIONS``): ``<root>/<lang>/*.ext``, or ``<root>/*.ext`` with ``lang``.

    The id is the file stem (so the same stem in two language folders is a parallel pair); a sibling ``<stem>.txt``
    is the transcription. Files are listed in name order, non-recursively; hidden files are skipped.
    """

    def __init__(self, root: str | os.PathLike, *, lang: str | None = None):
        self.root = pathlib.Path(root).expanduser().resolve()
        self.name = f"folder:{self.root}"
        if not self.root.is_dir():
            raise DatasetError(f"audio folder {str(self.root)!r} does not exist or is not a folder")
        subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(map(is_audio, p.iterdir())))
        flat = any(map(is_audio, self.root.iterdir()))
        if subdirs and flat:
            raise DatasetError(
                f"audio folder {str(self.root)!r} mixes audio files with language subfolders {subdirs}; move the "
                "top-level files into a <lang>/ subfolder"
            )
        if subdirs:
            if lang is not None:
                raise DatasetError(
                    f"audio folder {str(self.root)!r} has language subfolders {subdirs}; drop --lang {lang} (each "
                    "subfolder's name is its language)"
                )
            self._dirs = {name: self.root / name for name in subdirs}
        elif lang is None:
            raise DatasetError(
                f"audio folder {str(self.root)!r} has no <lang>/ subfolders; give its language (--lang en; "
                "lang='en' in Python), or sort the files into <lang>/ subfolders"
            )
        else:
            self._dirs = {lang: self.root}

    def languages(self) -> list[str]:
        return list(self._dirs)

    def splits(self) -> list[str]:
        return []

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), f"audio folder {str(self.root)!r}")
        rows = []
        for f in sorted(filter(is_audio, self._dirs[lang].iterdir()), key=lambda p: p.name):
            txt = f.with_suffix(".txt")
            text = text_or_none(txt.read_text(encoding="utf-8")) if txt.is_file() else None
            rows.append(dict(id=f.stem, lang=lang, audio=str(f), path=str(f), transcription=text))
        return number_recordings(rows)
