"""MaSS (Zanon Boito et al. 2020; getalp/mass-dataset), the New Testament read in 8 languages and cut into verses,
as a source of utterances: ``mass:<root>``.

The published layout, once its pipeline has sliced the audio: ``<root>/<language>/`` (``english``, ``french``, ...,
or ``<language>_corpus`` as its ``check-verses.py`` expects) with the verse clips in ``wav/`` and their texts in
``txt/``. File names are either the slicer's, from the bible.is chapter files
(``B01___01_Matthew_____ENGESVN1DA_verse_1_one_channel.wav`` and ``..._verse_1.txt``), or those its
``fetch_audio.py`` / ``fetch_data.py`` give (``01_Matthew_verse_1.wav``, ``01_Matthew_verse_1.en``).

The parallel id is MaSS's own verse id, ``<chapter>_<book in English>_verse_<n>`` (``01_Matthew_verse_1``), as its
``fetch_data.py`` makes it: the book's number is not shared (the Russian Bible orders the epistles differently) and
the French, Spanish and Basque files name books in their language (``Matthieu``, ``San_Mateo``), mapped here. Verse 0
is the chapter's title. Languages are MaSS's codes (``LANGUAGE_CODES``); a folder of another name is a language of
that name. No splits.
"""

from __future__ import annotations

import os
import pathlib
import re

from engine.data.revision import files_revision
from engine.data.utterance import (
    DatasetError,
    Utterance,
    check_language,
    is_audio,
    number_recordings,
    read_text,
    text_or_none,
)

LANGUAGE_CODES = {"basque": "eu", "english": "en", "finnish": "fi", "french": "fr", "hungarian": "hu",
                  "romanian": "ro", "russian": "ru", "spanish": "es"}  # fmt: skip
# Book names of the French, Spanish and Basque (and Portuguese) files -> the English ones of MaSS's ids; a numbered
# book keeps its number (1Corintios -> 1Corinthians).
BOOKS_IN_ENGLISH = {
    "Matthieu": "Matthew", "San_Mateo": "Matthew", "S_Mateus": "Matthew", "Marc": "Mark", "San_Marcos": "Mark",
    "S_Marcos": "Mark", "Luc": "Luke", "San_Lucas": "Luke", "S_Lucas": "Luke", "Jean": "John", "San_Juan": "John",
    "S_Joao": "John", "Actes": "Acts", "Hechos": "Acts", "Atos": "Acts", "Romains": "Romans", "Romanos": "Romans",
    "Corinthiens": "Corinthians", "Corintios": "Corinthians", "Galates": "Galatians", "Galatas": "Galatians",
    "Ephesiens": "Ephesians", "Efesios": "Ephesians", "Philippiens": "Philippians", "Filipenses": "Philippians",
    "Colossiens": "Colossians", "Colosenses": "Colossians", "Colossenses": "Colossians", "Tes": "Thess",
    "Tess": "Thess", "Timothee": "Timothy", "Timoteo": "Timothy", "Tite": "Titus", "Tito": "Titus",
    "Filemon": "Philemon", "Hebreux": "Hebrews", "Hebreos": "Hebrews", "Hebreus": "Hebrews", "Jacques": "James",
    "Santiago": "James", "S_Tiago": "James", "Pierre": "Peter", "San_Pedro": "Peter", "Pedro": "Peter",
    "Judas": "Jude", "S_Judas": "Jude", "Apocalypse": "Revelation", "Apocalipsis": "Revelation",
    "Apocalipse": "Revelation",
}  # fmt: skip
# B<book>___<chapter>_<book name>_<padding><bible.is DAM id, 10 characters>_verse_<n>[_one_channel]
_SLICED = re.compile(
    r"^B\d+_+(?P<chapter>\d+)_(?P<book>.+?)_*(?P<dam>[A-Z0-9]{10})_verse_(?P<verse>\d+)(?:_one_channel)?$"
)
_FETCHED = re.compile(r"^(?P<chapter>\d+)_(?P<book>\w+?)_verse_(?P<verse>\d+)$")


def verse_id(stem: str) -> str | None:
    """MaSS's verse id of a clip or text file stem (either naming), or None when it is neither."""
    m = _SLICED.match(stem)
    if m:
        book = m["book"]
        number, name = (book[0], book[1:]) if book[0].isdigit() else ("", book)
        return f"{m['chapter']}_{number}{BOOKS_IN_ENGLISH.get(name, name)}_verse_{m['verse']}"
    m = _FETCHED.match(stem)
    return stem if m else None


class MassSource:
    """MaSS verses from ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root).expanduser().resolve()
        self.name = f"mass:{self.root}"
        if not self.root.is_dir():
            raise DatasetError(f"MaSS folder {str(self.root)!r} does not exist or is not a folder")
        self._dirs: dict[str, pathlib.Path] = {}
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if self._audio_dir(folder) is not None:
                name = folder.name.removesuffix("_corpus")
                self._dirs[LANGUAGE_CODES.get(name, name)] = folder
        if not self._dirs:
            raise DatasetError(
                f"MaSS folder {str(self.root)!r} has no <language>/wav/ with verse clips (english/wav/"
                "B01___01_Matthew_____ENGESVN1DA_verse_1_one_channel.wav, ...); slice the chapters with MaSS's "
                "scripts/alignment/coupe_verset.py into <language>/wav/ first"
            )

    @staticmethod
    def _audio_dir(folder: pathlib.Path) -> pathlib.Path | None:
        for candidate in (folder / "wav", folder):
            if candidate.is_dir() and any(map(is_audio, candidate.iterdir())):
                return candidate
        return None

    def languages(self) -> list[str]:
        return sorted(self._dirs)

    def splits(self) -> list[str]:
        return []

    def _texts(self, lang: str) -> dict[str, pathlib.Path]:
        """Verse id -> its text file: ``txt/<stem>.txt``, or ``<id>.<lang>`` beside the clips (fetch_data.py)."""
        folder = self._dirs[lang]
        files = sorted((folder / "txt").glob("*.txt")) if (folder / "txt").is_dir() else []
        files += sorted(p for d in {folder, folder / "wav"} if d.is_dir() for p in d.glob(f"*.{lang}"))
        return {vid: p for p in files if (vid := verse_id(p.stem)) is not None}

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), f"MaSS folder {str(self.root)!r}")
        texts = self._texts(lang)
        rows, strays = [], []
        for clip in sorted(filter(is_audio, self._audio_dir(self._dirs[lang]).iterdir()), key=lambda p: p.name):
            vid = verse_id(clip.stem)
            if vid is None:
                strays.append(clip.name)
                continue
            text = texts.get(vid)
            rows.append(
                dict(
                    id=vid,
                    lang=lang,
                    audio=str(clip),
                    path=str(clip),
                    transcription=text_or_none(read_text(text, "transcript")) if text else None,
                )
            )
        if strays:
            raise DatasetError(
                f"MaSS {lang}: {len(strays)} clips are not named as verses ({', '.join(strays[:3])}); expected "
                "B01___01_Matthew_____ENGESVN1DA_verse_1_one_channel.wav or 01_Matthew_verse_1.wav"
            )
        return number_recordings(rows)

    def revision(self) -> str:
        """A digest of the verse texts and the clips' names and sizes."""
        texts, clips = [], []
        for lang, folder in self._dirs.items():
            texts += self._texts(lang).values()
            clips += filter(is_audio, self._audio_dir(folder).iterdir())
        return files_revision(self.root, texts, clips)
