"""Any Hugging Face ``datasets`` dataset as a source of utterances, by column mapping: ``hf:<hub id or local
path>[:config[,config...]]``.

What it reads:

- a ``save_to_disk`` folder: a Dataset (``state.json`` + ``*.arrow``: no splits) or a DatasetDict
  (``dataset_dict.json`` and a folder per split), memory-mapped;
- Parquet files: one ``.parquet`` file (no splits), a folder (split names inferred by ``datasets``:
  ``data/train-*.parquet``, ``test/*.parquet``, ...; a config names a subfolder, as in the Hub's Parquet export
  ``<config>/<split>/*.parquet``), or a Hub dataset whose files are Parquet. The listing reads the columns it needs
  but the audio (on the Hub: range requests on the Parquet files, so a large corpus is never downloaded to list it);
  each clip's bytes are read when the utterance is loaded (``ParquetAudio``);
- any other Hub dataset ``datasets`` builds without a script (audiofolder, WebDataset, ...): downloaded and prepared
  by ``datasets`` into its cache, then read memory-mapped.

Columns (``Columns``): ``audio`` (default ``audio``): an ``Audio`` feature's ``{bytes, path}``, binary, or a string
path (relative to a local dataset's folder); ``text``: the transcription (default: the first of ``TEXT_COLUMNS``
present, else none); ``id``: the parallel id (default ``id`` when present, else the row number, which pairs nothing
across languages); ``lang``: a column of language codes, or else each config is one language
(``hf:google/fleurs:en_us,de_de``), or else ``lang=`` names the one language of the whole dataset. A column named but
absent is a ``DatasetError`` listing the columns that exist.

Audio is never decoded by ``datasets`` (its decoding needs torchcodec, which babelgrid does not use): the encoded
bytes go to ``engine.data.audio``. Revision (``revision``): the Hub commit, or a digest of the local files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

from engine.data.parquet_audio import ArrowTable, ParquetTable
from engine.data.revision import files_revision
from engine.data.utterance import DatasetError, Utterance, check_language, number_recordings, text_or_none

AUDIO_COLUMN = "audio"
TEXT_COLUMNS = ("transcription", "sentence", "text", "normalized_text")  # the first present is the text by default
ID_COLUMN = "id"
_COMMIT = re.compile(r"@([0-9a-f]{40})/")  # datasets resolves a Hub revision to its commit in every data file URL


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which column holds what; None takes the default (see the module docstring)."""

    audio: str | None = None
    text: str | None = None
    id: str | None = None
    lang: str | None = None


# --- the source -------------------------------------------------------------------------------------------------------


class HFSource:
    """A ``datasets`` dataset: ``target`` is a Hub id or a local path, ``configs`` its configs (one language each
    unless a language column is named). See the module docstring for the forms and the column defaults."""

    def __init__(
        self,
        target: str,
        configs: tuple[str, ...] = (),
        *,
        columns: Columns = Columns(),
        lang: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        if not target or target.startswith("//"):
            raise DatasetError(
                f"hf dataset {target!r}: write hf:<hub id or local path>[:config], e.g. hf:google/fleurs:en_us or "
                "hf:/data/my_saved_dataset (no // after hf:)"
            )
        if lang is not None and (columns.lang or configs):
            raise DatasetError(
                f"hf:{target}: --lang {lang} names the one language of a dataset; drop it when the languages come "
                f"from {'--lang_column' if columns.lang else 'the configs'}"
            )
        self.columns, self.lang, self.configs = columns, lang, tuple(configs)
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        local = pathlib.Path(target).expanduser()
        self.local = local.resolve() if local.exists() else None
        self.target = str(self.local) if self.local else target
        self.name = f"hf:{self.target}" + (f":{','.join(self.configs)}" if self.configs else "")
        self._files: list[str] = []  # local files the listing reads (the revision's digest)
        self._commit: str | None = None
        # config (None: the dataset's only one) -> split (None: no splits) -> opener of its table
        self._parts = {config: self._resolve(config) for config in (self.configs or (None,))}
        self._tables: dict[tuple[str | None, str | None], Any] = {}
        if not (columns.lang or configs or lang):
            raise DatasetError(
                f"{self.name} names no language: give its language column (--lang_column; columns: "
                f"{self._any_table().column_names}), one config per language (hf:ID:en,de), or the one language of "
                "the whole dataset (--lang en)"
            )

    # -- layout ----------------------------------------------------------------------------------------------------

    def _resolve(self, config: str | None) -> dict[str | None, Callable[[], Any]]:
        if self.local is not None:
            root = self.local / config if config else self.local
            if not root.exists():
                raise DatasetError(f"{self.name}: config {config!r} is no subfolder of {self.local}")
            if root.is_file():
                if root.suffix != ".parquet":
                    raise DatasetError(
                        f"{self.name}: {root} is a file but not .parquet; pass a Parquet file or a folder"
                    )
                self._files.append(str(root))
                return {None: lambda: ParquetTable([str(root)], _where(self.name, None))}
            if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
                return self._saved(root)
        return self._built(config)

    def _saved(self, root: pathlib.Path) -> dict[str | None, Callable[[], Any]]:
        """A ``save_to_disk`` folder: one Dataset, or a DatasetDict's splits."""
        datasets = _datasets()
        self._files += _saved_files(root)

        def load(split: str | None):
            folder = root if split is None else root / split  # a DatasetDict keeps each split in its own folder
            state = json.loads((folder / "state.json").read_text()) if (folder / "state.json").is_file() else {}
            if state.get("_data_files") == []:  # no rows: datasets cannot load it (IndexError), read as 0 rows
                info = json.loads((folder / "dataset_info.json").read_text())
                empty = datasets.Features.from_dict(info["features"]).arrow_schema.empty_table()
                return ArrowTable(empty, _where(self.name, split), root)
            try:
                ds = datasets.load_from_disk(str(folder))
            except Exception as e:
                raise DatasetError(f"cannot load the save_to_disk folder {folder}: {type(e).__name__}: {e}") from e
            return ArrowTable(ds.with_format("arrow")[:], _where(self.name, split), root)

        if (root / "dataset_dict.json").is_file():
            splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
            return {s: (lambda s=s: load(s)) for s in splits}
        return {None: lambda: load(None)}

    def _built(self, config: str | None) -> dict[str | None, Callable[[], Any]]:
        """A Hub dataset, or a local folder of data files: the data files ``datasets`` resolves for it."""
        datasets = _datasets()
        where = str(self.local / config) if self.local and config else self.target
        try:
            if self.local is not None:
                builder = datasets.load_dataset_builder(where, cache_dir=self.cache_dir)
            else:
                builder = datasets.load_dataset_builder(self.target, config, cache_dir=self.cache_dir)
        except Exception as e:  # the Hub client's errors, datasets' own (DatasetNotFoundError, ...)
            hint = (
                ""
                if self.local
                else f". Without network, use a local copy: where the Hub is reachable run `hf download {self.target} "
                "--repo-type dataset --local-dir DIR` (or datasets' save_to_disk), copy DIR here and pass hf:DIR"
            )
            raise DatasetError(f"cannot resolve the dataset {self.name}: {type(e).__name__}: {e}{hint}") from e
        files = {str(split): [str(f) for f in fs] for split, fs in (builder.config.data_files or {}).items()}
        if not files:
            raise DatasetError(f"{self.name}: datasets finds no data files in {where}")
        every = [f for fs in files.values() for f in fs]
        commits = {m.group(1) for f in every if (m := _COMMIT.search(f))}
        self._commit = next(iter(commits)) if len(commits) == 1 else None
        if self.local is not None:
            self._files += every
        if all(f.endswith(".parquet") for f in every):
            return {s: (lambda fs=fs, s=s: ParquetTable(fs, _where(self.name, s))) for s, fs in files.items()}

        def prepared(split: str):
            try:
                builder.download_and_prepare()
                ds = builder.as_dataset(split=split)
            except Exception as e:
                raise DatasetError(f"cannot prepare {self.name} split {split}: {type(e).__name__}: {e}") from e
            return ArrowTable(ds.with_format("arrow")[:], _where(self.name, split), self.local)

        return {s: (lambda s=s: prepared(s)) for s in files}

    def _table(self, config: str | None, split: str | None):
        key = (config, split)
        if key not in self._tables:
            self._tables[key] = self._parts[config][split]()
        return self._tables[key]

    def _any_table(self):
        config = next(iter(self._parts))
        return self._table(config, next(iter(self._parts[config])))

    # -- the Source protocol ---------------------------------------------------------------------------------------

    def splits(self) -> list[str]:
        return sorted({s for part in self._parts.values() for s in part if s is not None})

    def languages(self) -> list[str]:
        if self.columns.lang is None:
            return list(self.configs) if self.configs else [self.lang]
        langs = set()
        for config, part in self._parts.items():
            for split in part:
                table = self._table(config, split)
                self._check(table, self.columns.lang, "--lang_column")
                langs.update(str(v).strip() for v in table.column(self.columns.lang) if text_or_none(v))
        return sorted(langs)

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), f"dataset {self.name!r}")
        configs = [lang] if self.configs and self.columns.lang is None else list(self._parts)
        rows = []
        for config in configs:
            part = self._parts[config]
            if None not in part and split not in part:
                raise DatasetError(f"{self.name} has no split {split!r}; it has {sorted(part)}: pass --split")
            rows += self._rows(self._table(config, None if None in part else split), lang)
        return number_recordings(rows)

    def revision(self) -> str | None:
        """The Hub commit the data files resolved to, or a digest of the local files read."""
        if self.local is None:
            return f"hub:{self._commit}" if self._commit else None
        return files_revision(self.local, self._files)

    # -- rows ------------------------------------------------------------------------------------------------------

    def _check(self, table, column: str, flag: str) -> str:
        if column not in table.column_names:
            raise DatasetError(
                f"{table.where} has no column {column!r} ({flag}); its columns: {', '.join(table.column_names)}"
            )
        return column

    def column_mapping(self, table=None) -> dict[str, str | None]:
        """What each column is taken from: ``{"audio", "text", "id", "lang"}`` -> column (None: none / row number)."""
        table = table or self._any_table()
        names = table.column_names
        c = self.columns
        return {
            "audio": self._check(table, c.audio or AUDIO_COLUMN, "--audio_column"),
            "text": self._check(table, c.text, "--text_column")
            if c.text
            else next((n for n in TEXT_COLUMNS if n in names), None),
            "id": self._check(table, c.id, "--id_column") if c.id else (ID_COLUMN if ID_COLUMN in names else None),
            "lang": self._check(table, c.lang, "--lang_column") if c.lang else None,
        }

    def _rows(self, table, lang: str) -> list[dict[str, Any]]:
        mapping = self.column_mapping(table)
        n = table.num_rows
        langs = table.column(mapping["lang"]) if mapping["lang"] else None
        keep = [i for i in range(n) if langs is None or str(langs[i]).strip() == lang]
        ids = table.column(mapping["id"]) if mapping["id"] else list(range(n))
        texts = table.column(mapping["text"]) if mapping["text"] else [None] * n
        audio, names = table.audio(mapping["audio"])
        first = next((a for a in audio if a is not None), None)
        if isinstance(first, str) and not os.path.isfile(first):
            raise DatasetError(
                f"{table.where}: column {mapping['audio']!r} holds strings that name no audio file here (first: "
                f"{first[:80]!r}); pass the audio column with --audio_column (its columns: "
                f"{', '.join(table.column_names)})"
            )
        rows = []
        for i in keep:
            if audio[i] is None:
                raise DatasetError(f"{table.where} row {i} (id {ids[i]}) has neither audio bytes nor a path")
            uid = text_or_none(ids[i])
            if uid is None:
                raise DatasetError(f"{table.where} row {i} has an empty id in column {mapping['id']!r}")
            rows.append(
                dict(
                    id=uid,
                    lang=lang,
                    audio=audio[i],
                    path=names[i] or f"row-{i}",
                    transcription=text_or_none(texts[i]),
                )
            )
        return rows


def parse_hf_spec(arg: str) -> tuple[str, tuple[str, ...]]:
    """``"<target>[:cfg[,cfg...]]"`` -> (target, configs); a target that exists as a local path is taken whole."""
    if not arg or pathlib.Path(arg).expanduser().exists():
        return arg, ()
    target, sep, configs = arg.rpartition(":")
    if not sep or "/" in configs:
        return arg, ()
    return target, tuple(c.strip() for c in configs.split(",") if c.strip())


def _saved_files(root: pathlib.Path) -> list[str]:
    """The files of a ``save_to_disk`` folder: its JSON and the Arrow files its ``state.json`` lists (not the
    ``cache-*.arrow`` that ``map`` or ``filter`` on the loaded dataset leave beside them)."""
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text())["splits"]
        return [str(root / "dataset_dict.json"), *(f for split in splits for f in _saved_files(root / split))]
    state = json.loads((root / "state.json").read_text())
    data = [str(root / f["filename"]) for f in state.get("_data_files", [])]
    return [
        str(root / "state.json"),
        *([str(root / "dataset_info.json")] if (root / "dataset_info.json").exists() else []),
        *data,
    ]


def _where(name: str, split: str | None) -> str:
    return name if split is None else f"{name} split {split}"


def _datasets():
    try:
        import datasets  # lazy: datasets is slow to import and only the hf: and fleurs sources need it
    except ImportError:
        raise DatasetError("hf: datasets need the `datasets` package: pip install 'datasets>=3'") from None
    return datasets
