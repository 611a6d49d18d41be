"""Encode at scale, compute or storage: whether an encode run is bound by its encoder or by writing its states.

Every stored layer of every valid frame is written (``states_bytes``: frames x layers x embed x the storage dtype's
itemsize; all 34 layers of FLEURS test with large-v3 in bfloat16 are about 2 TiB). A process writes through
``LayerStore`` (zstd-1 then crc32c on the host's CPU, then the kvstore) while its device encodes the next batches, so
a run takes about the longer of the two; both split over the hosts of a multi-host run (each host encodes and
writes its own claimed utterances). ``calibrate_write_rate`` measures one process's writing rate here, through the
same store path into a temporary local folder; an object store's rate is measured by ``bench/encode_writes.py``
(against the moto S3 server) and can be passed to ``plan_encode`` instead.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from engine.dtypes import DTYPES
from engine.runtime.plan import duration, size
from engine.stores.layers import LayerStore
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow

CALIBRATION_BYTES = 96 * 2**20  # valid states written by the calibration: under a second on a local disk
# Utterances of 200-1000 frames (mean 600, FLEURS test's ~12 s) in shards padded to one 30 s window, as a language of
# such clips is stored: zstd passes over the padding too, so unpadded shards would overstate the rate.
CALIBRATION_FRAMES = (200, 1000)
CALIBRATION_MAX_FRAMES = 1500


def calibrate_write_rate(encoder, layers: Sequence[int], dtype: str) -> float:
    """Bytes per second of valid states one process writes through ``LayerStore`` here (a temporary local
    folder, deleted after): utterances of ``CALIBRATION_FRAMES`` random frames of every stored layer, already in the
    storage dtype (as the encoder hands them over), padded to ``CALIBRATION_MAX_FRAMES``, after one untimed one.
    ``encoder``: its ``family``, ``store_dims`` and ``embed`` (a loaded ``Encoder`` or a ``WhisperShape``)."""
    itemsize = DTYPES[dtype].itemsize
    mean = sum(CALIBRATION_FRAMES) // 2
    count = max(2, CALIBRATION_BYTES // (len(layers) * mean * encoder.embed * itemsize))
    frames = np.linspace(*CALIBRATION_FRAMES, count + 1).astype(int)
    frames[0] = CALIBRATION_MAX_FRAMES  # the untimed one sets the language's padded length
    rng = np.random.default_rng(0)
    shape = (len(layers), CALIBRATION_MAX_FRAMES, encoder.embed)
    states = rng.standard_normal(shape, dtype=np.float32).astype(DTYPES[dtype])
    info = StoreInfo("write-rate calibration", "0" * 64, encoder.store_dims, tuple(layers), dtype,
                     family=encoder.family)  # fmt: skip
    rows = [UtteranceRow(id=f"u{i}", lang="xx", path=f"u{i}.wav", transcription=None, duration_s=n / 50,
                         n_frames=int(n), n_windows=1) for i, n in enumerate(frames)]  # fmt: skip
    folder = tempfile.mkdtemp(prefix="babelgrid-write-rate-")
    try:
        store = LayerStore.create_or_open(folder, info)
        with store.language("xx", rows) as arrays:
            arrays.write_utterance(0, states).result()  # thread pools and buffers started
            t = time.perf_counter()
            for i in range(1, count + 1):
                arrays.write_utterance(i, states[:, : frames[i]])
            arrays.flush()
            seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return float(frames[1:].sum()) * len(layers) * encoder.embed * itemsize / seconds


def storage_lines(
    states_bytes: float,
    encoder_seconds: float | None,
    write_rate: float,
    *,
    n_layers: int,
    dtype: str,
    where: str,
    hosts: Sequence[int] = (1,),
    rate_source: str = "measured here",
) -> list[str]:
    """The plan's lines on compute against storage: for each host count, the encoder's seconds per host
    (``encoder_seconds``: the whole run on one host of ``where``, None when not estimated) against writing
    ``states_bytes`` at ``write_rate`` bytes/s per process, which bounds the run, and what would change it."""
    write_s = states_bytes / write_rate
    lines = [f"writes: {size(states_bytes)} of states at {size(write_rate)}/s per process ({rate_source})"]
    if encoder_seconds is None:
        return lines
    for count in hosts:
        enc, wr = encoder_seconds / count, write_s / count
        bound = "writing" if wr > enc else "the encoder"
        lines.append(
            f"on {count} host{'s' if count > 1 else ''} of {where}: encoder {duration(enc)}, writes {duration(wr)} per "
            f"host: bound by {bound} ({max(enc, wr) / max(min(enc, wr), 1e-9):.1f}x)"
        )
    if write_s > encoder_seconds:
        needed = write_s / encoder_seconds
        lines.append(
            f"writing bounds it: to meet the encoder, write {needed:.1f}x less or faster: fewer layers (--layers: "
            f"each of the {n_layers} is 1/{n_layers} of the bytes), "
            + ("--dtype bfloat16 (half of float32), " if dtype == "float32" else "")
            + "a faster store (local disk first, then copy), or more hosts (each writes its own share)"
        )
    return lines
