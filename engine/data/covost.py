"""CoVoST 2 (Wang et al. 2020; facebookresearch/covost) from its official layout, as a source of utterances:
``covost2:<root>[:<src>_<tgt>]``.

Both parts are local, in or under ``root``:

- CoVoST 2's TSVs: ``covost_v2.<src>_<tgt>.tsv`` as released (``covost_v2.en_zh-CN.tsv.tar.gz``, extracted; columns
  ``path``, ``translation``, ``split`` with ``train``, ``dev``, ``test`` and ``train_covost``, which counts as train),
  or the per-split ``covost_v2.<src>_<tgt>.<split>.tsv`` its ``get_covost_splits.py`` writes (``path``,
  ``sentence``, ``translation``, ``client_id``); the per-split files are read where they exist;
- the Common Voice release of the source language: ``clips/`` and ``validated.tsv`` (``path``, ``sentence``,
  ``client_id``: the source transcript), in ``root`` itself (fairseq's and torchaudio's layout), ``root/<src>`` or
  ``root/<release>/<src>`` (a ``cv-corpus-*.tar.gz`` extracted in ``root``).

One language, the source (CoVoST's code: ``en``, ``fr``, ``zh-CN``); the id is the clip's file name without its
extension (``common_voice_en_19664034``), unique, so the same id is never in two languages. ``transcription`` is the
source sentence, ``translation`` the target text (``translation_lang``): ``jobs.finetune --target_dataset`` trains
X -> Y on it. Splits ``train``, ``dev`` (``validation`` is taken for it) and ``test``. TSVs are read as CoVoST's own
scripts read them: tab-separated, no quoting, backslash escapes.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import re

from engine.data.revision import files_revision
from engine.data.utterance import (
    DatasetError,
    Utterance,
    check_language,
    number_recordings,
    read_text,
    text_or_none,
)

COVOST_SPLITS = ("train", "dev", "test")
_SPLIT_NAMES = {"validation": "dev", "train_covost": "train"}  # CoVoST's extra train rows; the Hub's dev name
_TSV = re.compile(r"^covost_v2\.(?P<pair>[A-Za-z-]+_[A-Za-z-]+)(?:\.(?P<split>train|dev|test))?\.tsv$")


def _read_tsv(path: pathlib.Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    with io.StringIO(read_text(path, "CoVoST 2 table"), newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        header = list(reader.fieldnames or [])
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(
                f"{path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(header) or '(none)'}"
            )
        return list(reader)


class CovostSource:
    """CoVoST 2 pairs of one direction ``<src>_<tgt>`` from ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, pair: str | None = None):
        self.root = pathlib.Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetError(f"CoVoST 2 folder {str(self.root)!r} does not exist or is not a folder")
        found: dict[str, dict[str | None, pathlib.Path]] = {}  # pair -> split (None: the full TSV) -> file
        for path in sorted(self.root.glob("covost_v2.*.tsv")):
            m = _TSV.match(path.name)
            if m:
                found.setdefault(m["pair"], {})[m["split"]] = path
        if pair is None:
            if len(found) != 1:
                raise DatasetError(
                    f"CoVoST 2 folder {str(self.root)!r} holds "
                    + (
                        f"the pairs {sorted(found)}: name one, covost2:{self.root}:<src>_<tgt>"
                        if found
                        else "no covost_v2.<src>_<tgt>.tsv: extract covost_v2.<src>_<tgt>.tsv.tar.gz into it"
                    )  # fmt: skip
                )
            pair = next(iter(found))
        if pair not in found:
            raise DatasetError(
                f"CoVoST 2 folder {str(self.root)!r} has no covost_v2.{pair}.tsv (nor its .<split>.tsv files); it has "
                f"the pairs {sorted(found) or '(none)'}"
            )
        self.pair = pair
        self.source_lang, _, self.translation_lang = pair.partition("_")
        self.name = f"covost2:{self.root}:{pair}"
        self._tsvs = found[pair]
        self._cv = self._common_voice()
        self._rows: dict[str, list[dict]] | None = None

    def _common_voice(self) -> pathlib.Path:
        """The Common Voice language folder holding ``clips/`` and ``validated.tsv``."""
        candidates = [self.root, self.root / self.source_lang, *sorted(self.root.glob(f"*/{self.source_lang}"))]
        for folder in candidates:
            if (folder / "clips").is_dir() and (folder / "validated.tsv").is_file():
                return folder
        looked = ", ".join(str(c) for c in candidates[:3])
        raise DatasetError(
            f"CoVoST 2 {self.pair}: no Common Voice release of {self.source_lang!r} (clips/ and validated.tsv) in "
            f"{looked}; extract the release's {self.source_lang} folder there, or link it: ln -s "
            f"/path/cv-corpus-*/{self.source_lang} {self.root / self.source_lang}"
        )

    def _listing(self) -> dict[str, list[dict]]:
        if self._rows is not None:
            return self._rows
        rows: dict[str, list[dict]] = {s: [] for s in COVOST_SPLITS}
        if all(s in self._tsvs for s in COVOST_SPLITS):  # get_covost_splits.py's output: transcripts included
            for split in COVOST_SPLITS:
                for r in _read_tsv(self._tsvs[split], ("path", "sentence", "translation")):
                    rows[split].append(self._row(r["path"], r["sentence"], r["translation"], r.get("client_id")))
        else:
            if None not in self._tsvs:
                raise DatasetError(f"CoVoST 2 {self.pair}: {self.root} has only some of the split TSVs and no full "
                                   f"covost_v2.{self.pair}.tsv")  # fmt: skip
            cv = {r["path"]: r for r in _read_tsv(self._cv / "validated.tsv", ("path", "sentence"))}
            for r in _read_tsv(self._tsvs[None], ("path", "translation", "split")):
                split = _SPLIT_NAMES.get(r["split"], r["split"])
                source = cv.get(r["path"])
                if split not in rows or source is None:  # CoVoST keeps the clips of validated.tsv only
                    continue
                rows[split].append(self._row(r["path"], source["sentence"], r["translation"], source.get("client_id")))
        self._rows = rows
        return rows

    def _row(self, clip: str, sentence: str, translation: str, speaker: str | None) -> dict:
        audio = self._cv / "clips" / clip
        return dict(
            id=pathlib.PurePath(clip).stem,
            lang=self.source_lang,
            audio=str(audio),
            path=str(audio),
            transcription=text_or_none(sentence),
            translation=text_or_none(translation),
            speaker=text_or_none(speaker),
        )

    def languages(self) -> list[str]:
        return [self.source_lang]

    def splits(self) -> list[str]:
        return list(COVOST_SPLITS)

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), f"CoVoST 2 {self.pair}")
        name = _SPLIT_NAMES.get(split, split)
        if name not in COVOST_SPLITS:
            raise DatasetError(f"CoVoST 2 has no split {split!r}; use one of {', '.join(COVOST_SPLITS)}")
        return number_recordings(self._listing()[name])

    def revision(self) -> str:
        """A digest of the TSVs read (the CoVoST ones and Common Voice's ``validated.tsv``)."""
        return files_revision(self.root, [*self._tsvs.values(), self._cv / "validated.tsv"])
