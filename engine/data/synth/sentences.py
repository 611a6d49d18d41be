"""The demo set: 30 everyday sentences in 8 languages, synthesised with espeak-ng on first use.

It exists so that a fresh checkout can run every job end to end with no download: the sentences are parallel (the
i-th sentence of every language is a translation of the same English sentence, id ``demo-NNN``), so cross-lingual
comparisons have something to find. Synthetic speech is not a benchmark; use FLEURS for numbers you report.

Clips are cached as ``<cache>/demo/<version>/<lang>/<id>.wav`` (22.05 kHz mono 16-bit, espeak-ng's own format;
``load_audio`` resamples to 16 kHz). ``<cache>`` is the ``cache_dir`` argument, else ``$BABELGRID_CACHE``, else
``$XDG_CACHE_HOME/babelgrid``, else ``~/.cache/babelgrid``. ``<version>`` hashes the sentences and voice settings,
so editing them starts a fresh cache instead of mixing old clips with new text.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.resources
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import soundfile

from engine.data.utterance import DatasetError, Utterance, check_language

ESPEAK = "espeak-ng"
DEMO_LANGUAGES = ("en", "de", "es", "it", "pl", "sv", "tr", "ru")  # voices espeak-ng 1.51 speaks well
BASE_SPEED = 150  # words per minute; espeak-ng's default, 175, runs words together at sentence ends
BASE_PITCH = 50  # espeak-ng's 0-99 pitch scale; 50 is its default
SYNTH_WORKERS = 4  # espeak-ng is single-threaded and each clip takes tens of ms

# Per sentence (the same in every language, so a sentence keeps its rhythm across translations): speed 150-170 wpm,
# pitch 42-58. Deterministic, so every machine synthesises the same durations from the same espeak-ng version.
_SPEED_STEPS = (0, 10, 5, 20, 15)
_PITCH_STEPS = (0, 8, -8, 4, -4, 6, -6)

# One entry per sentence id, a data file beside this module; every entry translates the English one. Numbers are
# partly digits, partly words, so the set exercises both.
SENTENCES: tuple[dict[str, str], ...] = tuple(
    json.loads(importlib.resources.files("engine.data.synth").joinpath("demo_sentences.json").read_text("utf-8"))
)

DEMO_IDS = tuple(f"demo-{i:03d}" for i in range(len(SENTENCES)))


def voice_settings(index: int) -> tuple[int, int]:
    """(speed in words per minute, pitch 0-99) of sentence ``index``, the same in every language."""
    return BASE_SPEED + _SPEED_STEPS[index % len(_SPEED_STEPS)], BASE_PITCH + _PITCH_STEPS[index % len(_PITCH_STEPS)]


def demo_version() -> str:
    """The cache folder name: a hash of everything that shapes the audio except espeak-ng's own version."""
    payload = json.dumps(
        [SENTENCES, DEMO_LANGUAGES, [voice_settings(i) for i in range(len(SENTENCES))]], ensure_ascii=False
    )
    return "v1-" + hashlib.sha256(payload.encode()).hexdigest()[:10]


def default_cache_dir() -> pathlib.Path:
    """babelgrid's cache root: ``$BABELGRID_CACHE``, else ``$XDG_CACHE_HOME/babelgrid``, else ``~/.cache/babelgrid``."""
    if os.environ.get("BABELGRID_CACHE"):
        return pathlib.Path(os.environ["BABELGRID_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "babelgrid"


def find_espeak() -> str:
    """Path of the espeak-ng executable; raises ``DatasetError`` with install instructions when it is missing."""
    path = shutil.which(ESPEAK)
    if path is None:
        raise DatasetError(
            "espeak-ng is not installed (not found on PATH); the demo set is synthesised with it on first use. "
            "Install it with `apt-get install espeak-ng` (Debian/Ubuntu) or `brew install espeak-ng` (macOS), or "
            "use a recorded dataset instead (fleurs, folder:/path, manifest:/path)"
        )
    return path


def speak(espeak: str, lang: str, text: str, speed: int, pitch: int, target: pathlib.Path, what: str) -> None:
    """espeak-ng's voice ``lang`` saying ``text`` into the WAV ``target``, atomically; ``what`` names the clip in
    errors."""
    # espeak-ng writes as it speaks: into a temp file in the same folder, renamed only once complete, so that an
    # interrupted run never leaves a half clip under the final name (os.replace is atomic on one filesystem).
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".wav.tmp", dir=target.parent)
    os.close(fd)
    try:
        # -b 1: the text is UTF-8 whatever the locale says.
        cmd = [espeak, "-b", "1", "-v", lang, "-s", str(speed), "-p", str(pitch), "-w", tmp, text]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=60)
        except subprocess.TimeoutExpired:
            raise DatasetError(f"espeak-ng hung on {what} (over 60 s); retry") from None
        if result.returncode != 0 or os.path.getsize(tmp) <= 44:  # 44 bytes: a WAV header with no samples
            raise DatasetError(
                f"espeak-ng failed to synthesise {what} (exit {result.returncode}): "
                f"{result.stderr.strip() or 'no audio written'}; check that `espeak-ng -v {lang} hello` works"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_jobs(fn, jobs: list, workers: int) -> None:
    """``fn`` over ``jobs`` on up to ``workers`` threads (espeak-ng is single-threaded); the first failure raises."""
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        list(pool.map(fn, jobs))  # list() re-raises the first failure here


class DemoSource:
    """The demo set as a ``Source``: ``languages()`` are ``DEMO_LANGUAGES``, ids ``demo-000`` ..., no splits.

    ``utterances(lang)`` synthesises that language's missing clips first; ``synthesize()`` makes them all at once.
    """

    name = "demo"

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, workers: int = SYNTH_WORKERS):
        root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.dir = root.resolve() / "demo" / demo_version()
        self.workers = max(1, int(workers))

    def languages(self) -> list[str]:
        return list(DEMO_LANGUAGES)

    def splits(self) -> list[str]:
        return []

    def clip_path(self, lang: str, index: int) -> pathlib.Path:
        return self.dir / lang / f"{DEMO_IDS[index]}.wav"

    def synthesize(self, languages: list[str] | None = None) -> int:
        """Synthesises every missing clip of ``languages`` (default: all); returns how many were written."""
        languages = self.languages() if languages is None else list(languages)
        for lang in languages:
            check_language(lang, self.languages(), "the demo set")
        todo = [(lang, i) for lang in languages for i in range(len(SENTENCES)) if not self.clip_path(lang, i).is_file()]
        if not todo:
            return 0
        espeak = find_espeak()
        for lang in languages:
            (self.dir / lang).mkdir(parents=True, exist_ok=True)
        run_jobs(lambda job: self._synthesize_one(espeak, *job), todo, self.workers)
        return len(todo)

    def _synthesize_one(self, espeak: str, lang: str, index: int) -> None:
        speed, pitch = voice_settings(index)
        speak(
            espeak,
            lang,
            SENTENCES[index][lang],
            speed,
            pitch,
            self.clip_path(lang, index),
            f"demo clip {lang}/{DEMO_IDS[index]}",
        )

    def utterances(self, lang: str, split: str | None = None) -> list[Utterance]:
        check_language(lang, self.languages(), "the demo set")
        self.synthesize([lang])
        out = []
        for i, sentence_id in enumerate(DEMO_IDS):
            path = self.clip_path(lang, i)
            out.append(
                Utterance(
                    id=sentence_id,
                    lang=lang,
                    audio=str(path),
                    path=str(path),
                    transcription=SENTENCES[i][lang],
                    speaker=f"espeak-ng:{lang}",
                    duration_s=soundfile.info(str(path)).duration,  # header read only
                )
            )
        return out
