"""The short clip folders the new encoders' job tests encode (``folder:`` datasets): real FLEURS audio, clip i of a
language cut to 2 + i seconds so that a batch is ragged, one clip made of three joined past 30 s (two windows), and
each clip's FLEURS transcript beside it."""

from __future__ import annotations

import pathlib

import numpy as np

from engine.data.audio import load_audio


def write_clips(
    root: pathlib.Path,
    fleurs_dir: pathlib.Path,
    langs: tuple[str, ...],
    per_lang: int,
    long: tuple[str, int] = ("en", 1),
    long_seconds: int = 31,
) -> pathlib.Path:
    """``root/<lang>/s<i>.wav`` and ``s<i>.txt``; ``long``: the (language, position) of the clip over 30 s."""
    import soundfile

    for lang in langs:
        (root / lang).mkdir()
        for i in range(per_lang):
            if (lang, i) == long:
                audio = np.concatenate([load_audio(fleurs_dir / f"fleurs-{lang}-{k:03d}.ogg") for k in range(3)])
                audio = audio[: 16000 * long_seconds]
            else:
                audio = load_audio(fleurs_dir / f"fleurs-{lang}-{i:03d}.ogg")[: 16000 * (2 + i)]
            soundfile.write(root / lang / f"s{i}.wav", audio, 16000)
            (root / lang / f"s{i}.txt").symlink_to(fleurs_dir / f"fleurs-{lang}-{i:03d}.txt")
    return root
