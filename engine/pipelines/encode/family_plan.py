"""The plan of an encode run on a family other than Whisper: counted through the family interface alone.

Whisper pads every window to 30 s, so its plan counts whole windows (``engine.pipelines.encode.plan``). wav2vec2 and
w2v-BERT take each window as it is: a window of S samples costs ``Encoder.cost(S)`` (each family counts its own
matmuls and convolutions in its ``cost.py``), so the plan sums the cost of every window of every utterance, cut as
``engine.models.interface.split_windows`` cuts it. OWSM pads every window to its model's full window
(``pads_windows``): its ``cost(S)`` is the full window's whatever S, its windows are cut at its own
``window_samples`` (30 s for published models) and dropped as ``split_windows`` drops them (``min_samples``), and
the plan says so. Time here is the loaded encoder timed on the dataset's longest window (rounded up as a batch pads
it; OWSM's full window) and its FLOP rate applied to the whole count; the front end (raw waveform normalisation, or
the log-mel of w2v-BERT and OWSM) is timed on 30 s of audio.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.common.parallel import data_mesh
from engine.models.interface import WINDOW_SECONDS, Encoder, EncoderCost
from engine.pipelines.encode.memory import WINDOW_SAMPLES, family_step
from engine.runtime.devices import Device
from engine.runtime.plan import EFFICIENCY, Plan, Stage, size, timed


def window_samples(samples: int, long_audio: str, window: int = WINDOW_SAMPLES, min_samples: int = 0) -> list[int]:
    """Samples of each window of an utterance of ``samples`` 16 kHz samples, cut as ``split_windows`` cuts it at
    ``window`` samples. A last window under ``min_samples`` (the encoder's, where it has one: OWSM) is dropped as
    ``split_windows`` drops it; with the default 0, a last window too short for a frame is counted with its zero
    frames (``Encoder.cost`` of it is nearly nothing for the families that do not pad)."""
    n = min(int(samples), window) if long_audio == "truncate" else int(samples)
    full, rest = divmod(n, window)
    if full and rest < min_samples:
        rest = 0
    return [window] * full + ([rest] if rest or not full else [])


def calibrate(encoder: Encoder, samples: int, layers: Sequence[int], dtype: str) -> tuple[float, int]:
    """(seconds, windows) of the encoder on one batch of random windows of ``samples`` samples, one per device."""
    mesh = data_mesh(jax.local_devices())
    step = encoder.sharded(mesh, layers, jnp.dtype(dtype))
    audio = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    inputs, _ = encoder.windows(audio, "truncate")
    rows = step.local_multiple
    return timed(step, *encoder.collate([inputs[0]] * rows, rows)), rows


def calibrate_front_end(encoder: Encoder) -> float:
    """Seconds to turn 30 s of audio into the model's input on this machine (one host thread)."""
    audio = np.random.default_rng(0).standard_normal(WINDOW_SAMPLES).astype(np.float32) * 0.1
    encoder.windows(audio, "truncate")
    t = time.perf_counter()
    encoder.windows(audio, "truncate")
    return time.perf_counter() - t


def plan_family_encode(
    encoder: Encoder,
    samples: Mapping[str, Sequence[int]],
    seconds_of_audio: float,
    *,
    layers: Sequence[int],
    long_audio: str,
    dtype: str,
    compute_dtype: str,
    batch_size: int,
    prefetch: int,
    device: Device | None,
    model: str,
) -> Plan:
    """The plan of an encode run; ``samples[lang][i]``: utterance i's length in 16 kHz samples."""
    n_utt = sum(len(v) for v in samples.values())
    costs: dict[int, EncoderCost] = {}
    # Optional Encoder attributes, OWSM's only: its own window, the last-window cut, and full-window costs.
    window = getattr(encoder, "window_samples", WINDOW_SAMPLES)
    pads = getattr(encoder, "pads_windows", False)
    cut = getattr(encoder, "min_samples", 0)
    windows = [w for v in samples.values() for s in v for w in window_samples(s, long_audio, window, cut)]
    for w in windows:
        if w not in costs:
            costs[w] = encoder.cost(w)
    n_win, n_frames = len(windows), sum(encoder.expected_frames(s, long_audio)[0] for v in samples.values() for s in v)
    enc_flops = float(sum(costs[w].flops for w in windows))
    longest = max(windows, default=16000)
    padded = window if pads else min(-(-longest // 16000) * 16000, window)  # batches pad to whole seconds
    big = encoder.cost(padded)
    d, cbytes, sbytes = encoder.embed, jnp.dtype(compute_dtype).itemsize, jnp.dtype(dtype).itemsize

    t0 = time.perf_counter()
    t_step, rows = calibrate(encoder, padded, layers, dtype)
    rate = big.flops * rows / t_step
    t_front = calibrate_front_end(encoder)
    calib_s = time.perf_counter() - t0
    here_enc = enc_flops / rate
    here_feat = seconds_of_audio / WINDOW_SECONDS * t_front

    audio_bytes = seconds_of_audio * 16000 * 2  # 16 kHz 16-bit PCM as read; compressed sources read less
    states_bytes = float(n_frames) * len(layers) * d * sbytes
    weights = big.params * cbytes
    dev_enc = dev_feat = None
    if device is not None:
        dev_enc = max(
            enc_flops / (device.flops(compute_dtype) * EFFICIENCY), n_win * weights / batch_size / device.bandwidth
        )
        dev_feat = here_feat / max(prefetch, 1)  # host threads of a machine like this one
    stages = [
        Stage("audio -> input", 0.0, audio_bytes, 0.0, here_feat, dev_feat),
        Stage("encoder", enc_flops, float(weights), states_bytes, here_enc, dev_enc),
    ]
    # On a device: weights, a batch of the longest (padded) window, one block's activations and every stored layer
    # of the batch until it is copied to the host (engine.pipelines.encode.memory).
    peak = family_step(big, padded, d, layers, compute_dtype).peak(batch_size)
    memory_lines = [
        f"one stored layer of every utterance: {size(float(n_frames) * d * sbytes)}; all {len(layers)} layers: "
        f"{size(states_bytes)}",
        f"blocks: {batch_size} windows per encoder step (--batch_size), {prefetch} host threads ahead of it",
    ]
    if device is not None:
        memory_lines.append(f"fits on {device.name}: {'yes' if peak < 0.9 * device.memory else 'NO'} (90% usable)")
    counts = [
        (
            "model",
            f"{model} ({encoder.family}, L={big.n_layers}, d={d}, {big.params:,} encoder parameters), "
            f"compute {compute_dtype}, storage {dtype}",
        ),
        ("languages", str(len(samples))),
        ("utterances", str(n_utt)),
        ("audio", f"{seconds_of_audio:.0f} s ({seconds_of_audio / max(n_utt, 1):.1f} s per utterance)"),
        (
            "windows",
            f"{n_win} of at most {window / 16000:.0f} s, each padded to the model's full {window / 16000:.0f} s "
            f"window and costing it (longest {longest / 16000:.1f} s; {encoder.family} pads as it was trained)"
            if pads
            else f"{n_win} of at most {window / 16000:.0f} s, each costing its own length (longest "
            f"{longest / 16000:.1f} s; {encoder.family} is not padded to 30 s)",
        ),
        ("frames", f"{n_frames} valid encoder frames stored, layers {list(layers)}"),
        (
            "encoder FLOPs",
            f"{enc_flops:.6g} ({big.n_layers} layers; one padded {padded / 16000:.0f} s window: {big.flops:.4g})",
        ),
    ]
    calibration = (
        f"{jax.devices()[0].platform} x {jax.local_device_count()}: the model's encoder on {rows} window(s) of "
        f"{padded / 16000:.0f} s in {t_step * 1e3:.0f} ms = {rate / 1e9:.1f} GFLOP/s, its input of 30 s in "
        f"{t_front * 1e3:.0f} ms (calibration took {calib_s:.1f} s)"
    )
    counted = (
        "on each window padded to the model's full window"
        if pads
        else "on each window's own length (batch padding to whole seconds left out)"
    )
    assumptions = [
        "store writes overlap with compute; audio as 16-bit PCM; FLOPs of matmuls and convolutions only (norms, "
        f"activations, softmax left out) {counted}"
    ]
    return Plan("encode", counts, stages, peak, memory_lines, device, calibration, assumptions)
