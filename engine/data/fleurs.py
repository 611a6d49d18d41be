"""FLEURS as a source of utterances: the Hub's Parquet export, or a local copy (Parquet export or the original
``<lang>/<split>.tsv`` + ``<lang>/audio/<split>/*.wav`` layout). ``engine.data.sources.get_source("fleurs...")``
returns a ``FleursSource``.
"""

from __future__ import annotations

import collections
import os
import pathlib
from typing import Any

import pyarrow as pa

from engine.data.tables import binary_views, struct_fields
from engine.data.utterance import (
    DatasetError,
    Utterance,
    check_language,
    number_recordings,
    read_text,
    text_or_none,
)
from engine.languages import FLEURS_LANGUAGES

FLEURS_SPLITS = ("train", "validation", "test")  # the Hub's split names; the original archives call validation "dev"
FLEURS_SAMPLE_RATE = 16000  # Hz: FLEURS's num_samples count samples at this rate
FLEURS_GENDERS = ("male", "female", "other")  # the Hub dataset's ClassLabel order for the int gender column
# datasets >= 4 refuses google/fleurs itself (a script dataset), but the Hub keeps an automatic Parquet export of it.
FLEURS_PARQUET_URL = "hf://datasets/google/fleurs@refs/convert/parquet/{lang}/{split}/*.parquet"
_FLEURS_ARCHIVE_SPLIT = {"train": "train", "validation": "dev", "test": "test"}


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
    for line_no, line in enumerate(read_text(tsv, "FLEURS table").splitlines(), start=1):
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
                transcription=text_or_none(text),
                raw_transcription=text_or_none(raw),
                gender=text_or_none(fields[-1].lower()),
                duration_s=_fleurs_duration(fields[-2]),
            )
        )
    return number_recordings(rows)


def _fleurs_duration(num_samples: Any) -> float | None:
    try:
        n = int(num_samples)
    except (TypeError, ValueError):
        return None
    return n / FLEURS_SAMPLE_RATE if n > 0 else None


def _fleurs_gender(value: Any) -> str | None:
    if isinstance(value, int) and 0 <= value < len(FLEURS_GENDERS):
        return FLEURS_GENDERS[value]
    return text_or_none(value.lower() if isinstance(value, str) else None)


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
        fields = struct_fields(chunk)
        audio_bytes += binary_views(fields["bytes"])
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
                transcription=text_or_none(texts[i]),
                raw_transcription=text_or_none(raws[i]),
                gender=_fleurs_gender(genders[i]),
                duration_s=_fleurs_duration(num_samples[i]),
            )
        )
    return number_recordings(rows)
