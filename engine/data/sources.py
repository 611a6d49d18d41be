"""Speech datasets as lists of utterances: manifests and plain folders here, FLEURS in ``engine.data.fleurs``, any
``datasets`` dataset by column mapping in ``engine.data.hf``, CoVoST 2 in ``engine.data.covost``, MaSS in
``engine.data.mass``, the demo set in ``engine.data.synth.sentences``; and ``get_source``, which picks one from a
job's ``--dataset`` spec through the registry ``SOURCES`` (a new form is one entry there).

Every source lists ``Utterance`` records; none decodes audio while listing. ``Utterance.load`` decodes one clip
with ``engine.data.audio.load_audio`` and raises its ``AudioError`` subclasses with the clip named, so that a job can
skip and count broken clips (FLEURS has a few) instead of failing.

Glossary:

- id: the utterance's sentence id. Translations share it (FLEURS's sentence id, the demo set's ``demo-NNN``, MaSS's
  verse id, an hf: dataset's ``--id_column``), so the same id across languages is a parallel pair.
- recording: FLEURS has several readings of one sentence id in one language; all are kept, numbered 0, 1, ... in
  file order, so ``(lang, id, recording)`` is unique within a split.
- lang: the dataset's own language code (FLEURS ``en_us``, a manifest's ``en``); ``Utterance.whisper_lang`` maps it
  to Whisper's code when it can.
- split: FLEURS's ``train`` / ``validation`` / ``test``. Sources without splits (demo, folder, a manifest without a
  ``split`` column) ignore the argument: the whole set is one split.

``get_source(spec)`` turns the string a job's ``--dataset`` flag holds into a source; ``source.name`` is that spec
with absolute paths, so a store can record it and reopen the same source. A source that can say which version of
its data it lists has ``revision()`` (``engine.data.revision``): the store records it and a resume against another
is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

from engine.data.covost import CovostSource
from engine.data.fleurs import FleursSource
from engine.data.hf import Columns, HFSource, parse_hf_spec
from engine.data.mass import MassSource
from engine.data.revision import files_revision
from engine.data.synth.sentences import DemoSource
from engine.data.synth.words import WordsDemoSource
from engine.data.utterance import (
    AUDIO_EXTENSIONS,
    DatasetError,
    Source,
    Utterance,
    check_language,
    is_audio,
    number_recordings,
    read_text,
    text_or_none,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """One form of ``--dataset``: ``make(arg, **options)`` builds the source from the text after ``kind:``."""

    form: str  # as a user writes it, for help and errors
    make: Callable[..., Source]
    path: bool = False  # the text after ``kind:`` is required (a path)
    options: tuple[str, ...] = ()  # the keyword options of get_source it takes (``OPTION_FLAGS``)


def _hf(arg: str, *, audio_column=None, text_column=None, id_column=None, lang_column=None, **kwargs) -> Source:
    target, configs = parse_hf_spec(arg)
    columns = Columns(audio=audio_column, text=text_column, id=id_column, lang=lang_column)
    return HFSource(target, configs, columns=columns, **kwargs)


def _covost_parts(arg: str) -> tuple[str, str | None]:
    """``covost2:``'s text as (root, pair): ``/dir[:<src>_<tgt>]``, a folder that exists taken whole."""
    root, _, pair = arg.rpartition(":") if not pathlib.Path(arg).expanduser().exists() else (arg, "", "")
    return root or arg, pair or None


def _covost(arg: str) -> Source:
    return CovostSource(*_covost_parts(arg))


def _with_cache(cls):
    return lambda arg, **kwargs: cls(**({"cache_dir": arg} if arg else {}), **kwargs)


SOURCES: dict[str, SourceKind] = {
    "demo": SourceKind("demo", _with_cache(DemoSource), options=("cache_dir",)),
    "words-demo": SourceKind(
        "words-demo (the bundled word set of the probe)", _with_cache(WordsDemoSource), options=("cache_dir",)
    ),  # fmt: skip
    "fleurs": SourceKind(
        "fleurs; fleurs:/path/to/fleurs (original layout or Parquet export)",
        lambda arg, **kw: FleursSource(arg or None, **kw),
        options=("cache_dir",),
    ),
    "manifest": SourceKind("manifest:/path/to/list.jsonl (or .csv / .tsv)", lambda arg: ManifestSource(arg), path=True),
    "folder": SourceKind(
        "folder:/path/to/audio", lambda arg, **kw: FolderSource(arg, **kw), path=True, options=("lang",)
    ),  # fmt: skip
    "hf": SourceKind(
        "hf:<hub id or local path>[:config[,config]] (a datasets dataset: save_to_disk folder, Parquet, Hub; "
        "--audio_column, --text_column, --id_column, --lang_column)",
        _hf,
        path=True,
        options=("lang", "cache_dir", "audio_column", "text_column", "id_column", "lang_column"),
    ),
    "covost2": SourceKind(
        "covost2:/path/to/covost[:<src>_<tgt>] (CoVoST 2 TSVs + Common Voice clips)", _covost, path=True
    ),  # fmt: skip
    "mass": SourceKind(
        "mass:/path/to/mass (<language>/wav/ verse clips, <language>/txt/)", lambda arg: MassSource(arg), path=True
    ),  # fmt: skip
}
SPEC_FORMS = tuple(kind.form for kind in SOURCES.values())
# How each option reads on a job's command line, for the errors that name one.
OPTION_FLAGS = {"lang": "--lang", "audio_column": "--audio_column", "text_column": "--text_column",
                "id_column": "--id_column", "lang_column": "--lang_column", "cache_dir": "cache_dir="}  # fmt: skip


def dataset_locations(spec: str) -> tuple[str, ...]:
    """The local folder a dataset spec reads its audio from (``folder:``, ``mass:``, ``covost2:``, and ``fleurs:`` or
    ``hf:`` naming a local copy), for a job to keep its output apart from it; () for the rest (the bundled sets, a
    hub id, a manifest whose files lie anywhere)."""
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.lower()
    if not arg or kind not in SOURCES or kind == "manifest":
        return ()
    if kind == "covost2":
        arg = _covost_parts(arg)[0]
    elif kind == "hf":
        arg = parse_hf_spec(arg)[0]
    path = pathlib.Path(arg).expanduser()
    if kind in ("fleurs", "hf") and not path.exists():
        return ()  # a hub id
    return (str(path),)


def get_source(spec: str, **options: Any) -> Source:
    """The source a dataset spec names (``SOURCES``: ``demo``, ``fleurs[:PATH]``, ``manifest:PATH``,
    ``folder:PATH``, ``hf:ID_OR_PATH[:CONFIG]``, ``covost2:PATH[:PAIR]``, ``mass:PATH``, ...).

    ``options`` go to the source (``cache_dir=`` for demo and fleurs, ``lang=`` for a flat folder or a one-language
    hf: dataset, the ``*_column`` mapping for hf:); None means not given. One a source does not take is refused.
    """
    kind, _, arg = str(spec).strip().partition(":")
    entry = SOURCES.get(kind.lower())
    forms = "; ".join(SPEC_FORMS)
    if entry is None:
        raise DatasetError(f"unknown dataset spec {spec!r}; accepted forms: {forms}")
    if entry.path and not arg:
        raise DatasetError(f"dataset spec {spec!r} names no path; write {kind.lower()}:/path (accepted: {forms})")
    given = {k: v for k, v in options.items() if v is not None}
    refused = [k for k in given if k in OPTION_FLAGS and k not in entry.options]
    if refused:
        takers = {k: [n for n, e in SOURCES.items() if k in e.options] for k in refused}
        said = "; ".join(f"{OPTION_FLAGS[k]} {given[k]} is given only to {' and '.join(takers[k])} datasets"
                         for k in refused)  # fmt: skip
        if refused == ["lang"]:
            said += " (a flat folder dataset, or an hf: dataset of one language)"
        raise DatasetError(f"{said}, not {spec!r}")
    return entry.make(arg, **given)


def dataset_translations(spec: str, **options: Any) -> tuple[str, dict[str, str]]:
    """(target language, id -> translation) over every language and split of a dataset whose utterances carry a
    translation (CoVoST 2): the targets of X -> Y fine-tuning. The first text of an id is kept."""
    source = get_source(spec, **options)
    target = getattr(source, "translation_lang", None)
    if target is None:
        raise DatasetError(f"dataset {spec!r} holds no translations (CoVoST 2 does: covost2:/path[:<src>_<tgt>])")
    out: dict[str, str] = {}
    for lang in source.languages():
        for split in source.splits() or [None]:
            for utt in source.utterances(lang, split):
                if utt.translation:
                    out.setdefault(utt.id, utt.translation)
    return target, out


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
        for line_no, line in enumerate(read_text(self.path, "manifest").splitlines(), start=1):
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
        with io.StringIO(read_text(self.path, "manifest", encoding="utf-8-sig"), newline="") as f:
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

    def revision(self) -> str:
        """A digest of the manifest and the names and sizes of the clips it lists that exist."""
        clips = {r["audio"] for r in self._rows if os.path.isfile(r["audio"])}
        return files_revision(self.path.parent, [self.path], clips)

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
    is the transcription. Files are listed in name order, non-recursively; hidden files and folders (a copied
    ``.ipynb_checkpoints``) are skipped.
    """

    def __init__(self, root: str | os.PathLike, *, lang: str | None = None):
        self.root = pathlib.Path(root).expanduser().resolve()
        self.name = f"folder:{self.root}"
        if not self.root.is_dir():
            raise DatasetError(f"audio folder {str(self.root)!r} does not exist or is not a folder")
        subdirs = sorted(p.name for p in self.root.iterdir()
                         if p.is_dir() and not p.name.startswith(".") and any(map(is_audio, p.iterdir())))  # fmt: skip
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
        elif lang is None and flat:
            raise DatasetError(
                f"audio folder {str(self.root)!r} has no <lang>/ subfolders; give its language (--lang en; "
                "lang='en' in Python), or sort the files into <lang>/ subfolders"
            )
        elif lang is None:
            bare = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DatasetError(
                f"audio folder {str(self.root)!r} has no audio, in it or in a subfolder"
                + (f" (its subfolders {bare[:10]} hold no {', '.join(AUDIO_EXTENSIONS)} files)" if bare else "")
                + f"; a dataset folder holds <lang>/<id>.<ext> clips ({', '.join(AUDIO_EXTENSIONS)})"
            )
        else:
            self._dirs = {lang: self.root}
        # Subfolders without audio are not languages; named when asked for (``utterances``), never silently absent.
        self._bare = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name not in self._dirs
                            and not p.name.startswith("."))  # fmt: skip
        if self._bare and subdirs:
            log.warning("audio folder %s: subfolders %s hold no audio files, so they are not languages of it",
                        self.root, self._bare[:10])  # fmt: skip

    def languages(self) -> list[str]:
        return list(self._dirs)

    def revision(self) -> str:
        """A digest of the transcripts and the clips' names and sizes."""
        clips = [f for d in self._dirs.values() for f in d.iterdir() if is_audio(f)]
        return files_revision(
            self.root, [f.with_suffix(".txt") for f in clips if f.with_suffix(".txt").is_file()], clips
        )

    def splits(self) -> list[str]:
        return []

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        if lang in self._bare:
            raise DatasetError(
                f"audio folder {str(self.root)!r} has a subfolder {lang}/ but no audio in it (no "
                f"{', '.join(AUDIO_EXTENSIONS)} files); add its clips, or leave {lang} out of --langs"
            )
        check_language(lang, self.languages(), f"audio folder {str(self.root)!r}")
        rows = []
        for f in sorted(filter(is_audio, self._dirs[lang].iterdir()), key=lambda p: p.name):
            txt = f.with_suffix(".txt")
            text = text_or_none(read_text(txt, "transcript")) if txt.is_file() else None
            rows.append(dict(id=f.stem, lang=lang, audio=str(f), path=str(f), transcription=text))
        return number_recordings(rows)
