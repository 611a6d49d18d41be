"""Writes deterministic utterances into a layer store; run as a subprocess by tests/engine/test_store.py.

    python store_writer.py URL START STOP [--forever]

Creates (or opens) the store and language ``xx`` with ``rows()``, then writes utterances START..STOP-1 with
``utterance_states(u)``; with ``--forever`` it starts over once done, until killed. The test imports this file for
the same ``INFO``, ``rows`` and ``utterance_states``.
"""

import sys

import numpy as np

from engine.models.whisper.dims import ModelDimensions
from engine.stores.layers import LayerStore
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow

DIMS = ModelDimensions(80, 64, 32, 4, 2, 51865, 16, 32, 4, 1)
INFO = StoreInfo("tiny-random", "0" * 64, DIMS, (0, 2, 3), "float32")  # L = 2: layers 0..3
N_UTTERANCES = 600
LANG = "xx"


def n_frames(u: int) -> int:
    return 20 + (u * 37) % 180


def rows(n: int = N_UTTERANCES) -> list[UtteranceRow]:
    return [
        UtteranceRow(
            id=f"s{u // 2}",
            lang=LANG,
            path=f"/audio/{u}.ogg",
            duration_s=n_frames(u) / 50,
            n_frames=n_frames(u),
            n_windows=1,
        )
        for u in range(n)
    ]


def utterance_states(u: int) -> np.ndarray:
    """``f32[layer, n_frames(u), embed]``, a function of u only."""
    rng = np.random.default_rng(u)
    return rng.standard_normal((len(INFO.layers), n_frames(u), DIMS.n_audio_state), np.float32)


def main() -> None:
    url, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    arrays = LayerStore.create_or_open(url, INFO).language(LANG, rows())
    print("ready", flush=True)
    while True:
        for u in range(start, stop):
            arrays.write_utterance(u, utterance_states(u))
        arrays.flush()
        if "--forever" not in sys.argv:
            break
    arrays.close()


if __name__ == "__main__":
    main()
