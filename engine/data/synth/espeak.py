"""espeak-ng as babelgrid's voice: where synthesised clips are cached, how one clip is spoken, atomically.

The bundled synthetic sets (``engine.data.synth.sentences``: the demo set; ``engine.data.synth.words``: the word set)
are spoken by espeak-ng on first use and cached under ``default_cache_dir()``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import tempfile

from engine.data.utterance import DatasetError

ESPEAK = "espeak-ng"
BASE_PITCH = 50  # espeak-ng's 0-99 pitch scale; 50 is its default
SYNTH_WORKERS = 4  # espeak-ng is single-threaded and each clip takes tens of ms


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
