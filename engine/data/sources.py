"""Speech datasets as lists of utterances: FLEURS (Hub Parquet or a local copy), manifests, plain folders.

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

import collections
import csv
import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from engine.data.demo import DemoSource
from engine.data.utterance import DatasetError, Source, Utterance, check_language
from engine.whisper.languages import FLEURS_LANGUAGES

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")

FLEURS_SPLITS = ("train", "validation", "test")  # the Hub's split names; the original archives call validation "dev"
FLEURS_SAMPLE_RATE = 16000  # Hz: FLEURS's num_samples count samples at this rate
FLEURS_GENDERS = ("male", "female", "other")  # the Hub dataset's ClassLabel order for the int gender column
# datasets >= 4 refuses google/fleurs itself (a script dataset), but the Hub keeps an automatic Parquet export of it.
FLEURS_PARQUET_URL = "hf://datasets/google/fleurs@refs/convert/parquet/{lang}/{split}/*.parquet"
_FLEURS_ARCHIVE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}

SPEC_FORMS = (
    "demo",
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
    if kind == "demo":
        if arg:
            kwargs.setdefault("cache_dir", arg)
        return DemoSource(**kwargs)
    if kind == "fleurs":
        return FleursSource(arg or None, **kwargs)
    if kind in ("manifest", "folder"):
        if not arg:
            raise DatasetError(f"dataset spec {spec!r} names no path; write {kind}:/path (accepted: {forms})")
        return ManifestSource(arg, **kwargs) if kind == "manifest" else FolderSource(arg, **kwargs)
    raise DatasetError(f"unknown dataset spec {spec!r}; accepted forms: {forms}")


# --- helpers shared by the sources --------------------------------------------------------------------------------


def _number_recordings(rows: Iterable[dict[str, Any]]) -> list[Utterance]:
    """Utterances from keyword dicts in file order, with ``recording`` counting earlier rows of the same (lang, id)."""
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    out = []
    for row in rows:
        key = (row["lang"], row["id"])
        out.append(Utterance(recording=seen[key], **row))
        seen[key] += 1
    return out


def _text_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _is_audio(path: pathlib.Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


# --- FLEURS ---------------------------------------------------------------------------------------------------------


def _fleurs_split(split: str | None) -> str:
    if split is None:
        raise DatasetError(f"FLEURS has splits: pass one of {', '.join(FLEURS_SPLITS)}")
    name = {"dev": "validation"}.get(split, split)
    if name not in FLEURS_SPLITS:
        raise DatasetError(f"FLEURS has no split {split!r}; use one of {', '.join(FLEURS_SPLITS)}")
    return name


class FleursSource:
    """FLEURS (google/fleurs) from the Hub's Parquet export, a local copy of that export, or the original layout.

    Args:
      root: None reads the Hub (needs ``datasets`` and network; files are cached by ``datasets``). A path is a
        local copy, detected as one of:
        - the Parquet export: ``<root>/<lang>/<split>/*.parquet`` (e.g. ``hf download google/fleurs --repo-type
          dataset --revision refs/convert/parquet --include 'en_us/test/*' --local-dir ROOT``); ``root`` may also
          be one ``<lang>/<split>`` folder or one ``.parquet`` file in it;
        - the original archives, extracted: ``<root>/[data/]<lang>/<split>.tsv`` and
          ``<root>/[data/]<lang>/audio/<split>/*.wav``, with ``dev`` for validation.
      cache_dir: the ``datasets`` cache for Parquet sources (default: its own, ``~/.cache/huggingface/datasets``).
    """

    def __init__(self, root: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.root = None if root is None else pathlib.Path(root).expanduser().resolve()
        self._parquet: dict[tuple[str, str], list[str]] = {}  # (lang, split) -> local Parquet files, sorted
        self._tsv_root: pathlib.Path | None = None
        if self.root is None:
            self.name = "fleurs"
            return
        self.name = f"fleurs:{self.root}"
        if not self.root.exists():
            raise DatasetError(f"FLEURS path {str(self.root)!r} does not exist; pass the folder of a local copy")
        self._parquet = _find_parquet(self.root)
        if not self._parquet:
            self._tsv_root = _find_tsv_root(self.root)

    def languages(self) -> list[str]:
        if self.root is None:
            return list(FLEURS_LANGUAGES)
        if self._parquet:
            return sorted({lang for lang, _ in self._parquet})
        return sorted(p.name for p in self._tsv_root.iterdir() if p.is_dir() and any(p.glob("*.tsv")))

    def splits(self) -> list[str]:
        if self.root is None:
            return list(FLEURS_SPLITS)
        if self._parquet:
            present = {split for _, split in self._parquet}
        else:
            tsv_names = {p.stem for lang in self.languages() for p in (self._tsv_root / lang).glob("*.tsv")}
            present = {split for split, archive in _FLEURS_ARCHIVE_SPLIT.items() if {split, archive} & tsv_names}
        return [s for s in FLEURS_SPLITS if s in present]

    def utterances(self, lang: str, split: str | None = "test") -> list[Utterance]:
        split = _fleurs_split(split)
        check_language(lang, self.languages(), f"FLEURS source {self.name!r}")
        if self.root is None:
            url = FLEURS_PARQUET_URL.format(lang=lang, split=split)
            return _read_fleurs_parquet(url, lang=lang, split=split, cache_dir=self.cache_dir)
        if self._parquet:
            files = self._parquet.get((lang, split))
            if not files:
                raise DatasetError(f"{self.name!r} has no {lang}/{split} Parquet files; it has splits {self.splits()}")
            return _read_fleurs_parquet(files, lang=lang, split=split, cache_dir=self.cache_dir)
        return _read_fleurs_tsv(self._tsv_root / lang, lang, split)


def _find_parquet(root: pathlib.Path) -> dict[tuple[str, str], list[str]]:
    """(lang, split) -> sorted Parquet files under ``root`` in the export's ``<lang>/<split>/*.parquet`` layout."""
    if root.is_file():
        if root.suffix != ".parquet":
            raise DatasetError(f"FLEURS path {str(root)!r} is a file but not .parquet; pass a Parquet file or a folder")
        groups = {(root.parent.parent.name, root.parent.name): [root]}
    elif any(root.glob("*.parquet")):
        groups = {(root.parent.name, root.name): sorted(root.glob("*.parquet"))}
    else:
        groups = collections.defaultdict(list)
        for f in sorted(root.glob("*/*/*.parquet")):
            groups[(f.parent.parent.name, f.parent.name)].append(f)
    out = {}
    for (lang, split), files in groups.items():
        if split not in FLEURS_SPLITS:
            raise DatasetError(
                f"cannot tell the FLEURS language and split of {str(files[0])!r}: keep Parquet files as "
                f"<root>/<lang>/<split>/NAME.parquet with split one of {', '.join(FLEURS_SPLITS)} (the Hub export's "
                "layout)"
            )
        out[(lang, split)] = [str(f) for f in sorted(files)]
    return out


def _find_tsv_root(root: pathlib.Path) -> pathlib.Path:
    """The folder holding ``<lang>/<split>.tsv`` folders: ``root`` or ``root/data`` (a clone of the Hub repo)."""
    for candidate in (root, root / "data"):
        if candidate.is_dir() and any(candidate.glob("*/*.tsv")):
            return candidate
    raise DatasetError(
        f"{str(root)!r} is not a FLEURS copy: found neither <lang>/<split>/*.parquet (the Hub's Parquet export) nor "
        "<lang>/<split>.tsv with <lang>/audio/<split>/*.wav (the original archives, extracted)"
    )


def _read_fleurs_tsv(lang_dir: pathlib.Path, lang: str, split: str) -> list[Utterance]:
    """Utterances of the original ``<split>.tsv`` (no header): id, file name, raw transcription, transcription, ...,
    num_samples, gender. Only the first four and the last two columns are used, so extra middle columns are fine."""
    names = [_FLEURS_ARCHIVE_SPLIT[split], split]
    tsv = next((lang_dir / f"{n}.tsv" for n in names if (lang_dir / f"{n}.tsv").is_file()), None)
    if tsv is None:
        raise DatasetError(f"FLEURS copy {str(lang_dir)!r} has no {names[0]}.tsv for split {split!r}")
    audio_dir = next((lang_dir / "audio" / n for n in names if (lang_dir / "audio" / n).is_dir()), None)
    if audio_dir is None:
        archive = lang_dir / "audio" / f"{tsv.stem}.tar.gz"
        fix = (
            f"extract it first: tar -xzf {archive} -C {archive.parent}"
            if archive.is_file()
            else f"put the clips in {lang_dir / 'audio' / tsv.stem}/"
        )
        raise DatasetError(f"FLEURS copy {str(lang_dir)!r} has {tsv.name} but no audio/{tsv.stem}/ folder; {fix}")
    rows = []
    # Not the csv module: transcriptions hold quotes that csv would treat as field quoting.
    for line_no, line in enumerate(tsv.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 6:
            raise DatasetError(
                f"{tsv}:{line_no} has {len(fields)} tab-separated fields, expected at least 6 (id, file name, raw "
                "transcription, transcription, ..., num_samples, gender); is it a FLEURS TSV?"
            )
        sentence_id, file_name, raw, text = fields[:4]
        rows.append(
            dict(
                id=sentence_id.strip(),
                lang=lang,
                audio=str(audio_dir / file_name.strip()),
                path=str(audio_dir / file_name.strip()),
                transcription=_text_or_none(text),
                raw_transcription=_text_or_none(raw),
                gender=_text_or_none(fields[-1].lower()),
                duration_s=_fleurs_duration(fields[-2]),
            )
        )
    return _number_recordings(rows)


def _fleurs_duration(num_samples: Any) -> float | None:
    try:
        n = int(num_samples)
    except (TypeError, ValueError):
        return None
    return n / FLEURS_SAMPLE_RATE if n > 0 else None


def _fleurs_gender(value: Any) -> str | None:
    if isinstance(value, int) and 0 <= value < len(FLEURS_GENDERS):
        return FLEURS_GENDERS[value]
    return _text_or_none(value.lower() if isinstance(value, str) else None)


def _read_fleurs_parquet(
    data_files: str | list[str], *, lang: str, split: str, cache_dir: str | None
) -> list[Utterance]:
    """Utterances of FLEURS Parquet files (a Hub ``hf://`` glob, or local paths), in file then row order."""
    where = data_files if isinstance(data_files, str) else f"{data_files[0]} (+{len(data_files) - 1} more files)"
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            "reading FLEURS Parquet needs the `datasets` package: pip install 'datasets>=3'; or pass a local copy "
            "in the original layout (fleurs:/path with <lang>/<split>.tsv)"
        ) from None
    try:
        ds = datasets.load_dataset("parquet", data_files=data_files, split="train", cache_dir=cache_dir)
    except Exception as e:
        # datasets raises whatever its HTTP stack raises (httpx errors, OSError, OfflineModeIsEnabled, ...).
        if isinstance(data_files, str) and data_files.startswith("hf://"):
            raise DatasetError(
                f"cannot load FLEURS {lang}/{split} from the Hugging Face Hub ({type(e).__name__}: {e}). Without "
                "network access, use a local copy: where the Hub is reachable run `hf download google/fleurs "
                f"--repo-type dataset --revision refs/convert/parquet --include '{lang}/{split}/*' --local-dir DIR`, "
                "copy DIR here and pass fleurs:DIR (the original <lang>/<split>.tsv + audio/<split>/ layout works too)"
            ) from e
        raise DatasetError(f"cannot read FLEURS Parquet {where}: {type(e).__name__}: {e}") from e
    audio_type = ds.data.schema.field("audio").type if "audio" in ds.column_names else pa.null()
    if "id" not in ds.column_names or not (pa.types.is_struct(audio_type) and audio_type.get_field_index("bytes") >= 0):
        raise DatasetError(
            f"FLEURS Parquet {where} has columns {ds.column_names}; expected FLEURS's id (int), audio ({{bytes, "
            "path}}), transcription, raw_transcription, gender, num_samples, ..."
        )
    # Arrow format: datasets >= 4 would decode an Audio column through torchcodec (which we do not use); the Arrow
    # table hands over the encoded bytes untouched, as views into the memory-mapped cache file.
    table = ds.with_format("arrow")[:]

    def column(name: str) -> list[Any]:
        return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows

    ids, paths, genders, num_samples = column("id"), column("path"), column("gender"), column("num_samples")
    texts, raws = column("transcription"), column("raw_transcription")
    audio_bytes, audio_paths = [], []
    for chunk in table.column("audio").chunks:
        # flatten() (not .field()) honours the chunk's slice offset.
        names = [chunk.type.field(k).name for k in range(chunk.type.num_fields)]
        fields = dict(zip(names, chunk.flatten(), strict=True))
        audio_bytes += _binary_views(fields["bytes"])
        audio_paths += fields["path"].to_pylist() if "path" in fields else [None] * len(chunk)
    rows = []
    for i in range(table.num_rows):
        name = os.path.basename(audio_paths[i] or paths[i] or f"{ids[i]}.wav")
        audio = audio_bytes[i] if audio_bytes[i] is not None else (audio_paths[i] or paths[i])
        if audio is None:
            raise DatasetError(f"FLEURS Parquet {where} row {i} (id {ids[i]}) has neither audio bytes nor a path")
        rows.append(
            dict(
                id=str(ids[i]),
                lang=lang,
                audio=audio,
                path=name,
                transcription=_text_or_none(texts[i]),
                raw_transcription=_text_or_none(raws[i]),
                gender=_fleurs_gender(genders[i]),
                duration_s=_fleurs_duration(num_samples[i]),
            )
        )
    return _number_recordings(rows)


def _binary_views(array: pa.Array) -> list[memoryview | None]:
    """Zero-copy views of a (large) binary array's values; ``array[i].as_buffer()`` would copy each one."""
    if not (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
        raise DatasetError(f"FLEURS Parquet audio.bytes has type {array.type}, expected binary")
    _, offsets, values = array.buffers()
    values = values if values is not None else pa.py_buffer(b"")  # arrow may omit the buffer when all are empty
    dtype = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    offsets = np.frombuffer(offsets, dtype)[array.offset : array.offset + len(array) + 1]
    valid = array.is_valid().to_numpy(zero_copy_only=False)
    return [
        memoryview(values.slice(int(offsets[i]), int(offsets[i + 1] - offsets[i]))) if valid[i] else None
        for i in range(len(array))
    ]


# --- manifests ------------------------------------------------------------------------------------------------------

MANIFEST_REQUIRED = ("id", "lang", "path")
MANIFEST_OPTIONAL = ("transcription", "speaker", "gender", "split", "duration_s")


class ManifestSource:
    """A JSONL (one object per line) or CSV/TSV (with a header) list of utterances.

    Columns: ``id``, ``lang``, ``path`` (required); ``transcription``, ``speaker``, ``gender``, ``split``,
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
        missing = [c for c in MANIFEST_REQUIRED if _text_or_none(record.get(c)) is None]
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
            transcription=_text_or_none(record.get("transcription")),
            speaker=_text_or_none(record.get("speaker")),
            gender=_text_or_none(record.get("gender")),
            duration_s=duration,
            split=_text_or_none(record.get("split")),
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
        return _number_recordings({k: v for k, v in r.items() if k != "split"} for r in rows)


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
        subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(map(_is_audio, p.iterdir())))
        flat = any(map(_is_audio, self.root.iterdir()))
        if subdirs and flat:
            raise DatasetError(
                f"audio folder {str(self.root)!r} mixes audio files with language subfolders {subdirs}; move the "
                "top-level files into a <lang>/ subfolder"
            )
        if subdirs:
            if lang is not None:
                raise DatasetError(
                    f"audio folder {str(self.root)!r} has language subfolders {subdirs}; drop lang={lang!r} (each "
                    "subfolder's name is its language)"
                )
            self._dirs = {name: self.root / name for name in subdirs}
        elif lang is None:
            raise DatasetError(
                f"audio folder {str(self.root)!r} has no <lang>/ subfolders; pass its language, e.g. lang='en', or "
                "sort the files into <lang>/ subfolders"
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
        for f in sorted(filter(_is_audio, self._dirs[lang].iterdir()), key=lambda p: p.name):
            txt = f.with_suffix(".txt")
            text = _text_or_none(txt.read_text(encoding="utf-8")) if txt.is_file() else None
            rows.append(dict(id=f.stem, lang=lang, audio=str(f), path=str(f), transcription=text))
        return _number_recordings(rows)
