"""Shared test fixtures: paths to real data that live outside the repository."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FLEURS_SAMPLE = pathlib.Path(
    os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample")
)


@pytest.fixture(scope="session")
def fleurs_dir() -> pathlib.Path:
    """The 50 real FLEURS clips (``fleurs-<lang>-<nnn>.ogg`` + ``.txt``) beside the checkout."""
    if not FLEURS_SAMPLE.is_dir():
        pytest.skip(f"real FLEURS clips not found at {FLEURS_SAMPLE} (set BABELGRID_FLEURS_SAMPLE)")
    return FLEURS_SAMPLE


@pytest.fixture(scope="session")
def fleurs_clips(fleurs_dir) -> list[pathlib.Path]:
    clips = sorted(p for p in fleurs_dir.iterdir() if p.suffix in (".opus", ".ogg", ".wav", ".flac"))
    assert len(clips) == 50, f"expected 50 clips in {fleurs_dir}, found {len(clips)}"
    return clips
