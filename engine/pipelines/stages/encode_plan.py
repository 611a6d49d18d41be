"""The plan of an encoder's pass over audio (the encode job's ``--plan``, and the neurons job's passes), one for every
family: utterances, windows and frames from the dataset's
headers, the encoder's FLOPs from the family's ``Encoder.cost``, and the model's own encoder step timed here.

Every family's windows are cut as its encoder cuts them, from what the ``Encoder`` declares: at ``window_samples``,
a last one under ``min_samples`` dropped. Families that pad every window to a full one (``pads_windows``: Whisper and
the speech-LLM towers to 30 s, OWSM to its model's window) cost a full window each; wav2vec2, w2v-BERT and
FastConformer take each window as it is: a window of S samples costs ``Encoder.cost(S)`` (each family counts its own
matmuls and convolutions in its ``cost.py``). Time here is the loaded
encoder timed on the dataset's longest window (rounded up as a batch pads it; a padding family's full window) and its
FLOP rate applied to the whole count; the front end (the log-mel, or the raw waveform's normalisation) is timed on
30 s of audio; the write rate through ``LayerStore`` says whether the run is bound by compute or by writing
(``engine.pipelines.stages.writes``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.common.parallel import data_mesh
from engine.models.interface import WINDOW_SECONDS, Encoder, EncoderCost
from engine.pipelines.stages.memory import WINDOW_SAMPLES, family_step
from engine.pipelines.stages.writes import calibrate_write_rate, storage_lines
from engine.runtime.devices import Device
from engine.runtime.plan import Plan, Stage, flops, size, timed


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


def calibrate(encoder: Encoder, samples: int, layers: Sequence[int], dtype: str) -> tuple[float, int, float]:
    """(seconds, windows, compile seconds) of the loaded encoder's sharded step (the job's own) on one batch of
    random windows of ``samples`` samples, one per device; the compile is the first call's time less a step's."""
    mesh = data_mesh(jax.local_devices())
    step = encoder.sharded(mesh, layers, jnp.dtype(dtype))
    audio = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    inputs, _ = encoder.windows(audio, "truncate")
    rows = step.local_multiple
    batch = encoder.collate([inputs[0]] * rows, rows)
    started = time.perf_counter()
    jax.block_until_ready(step(*batch))
    first = time.perf_counter() - started
    seconds = timed(step, *batch)
    return seconds, rows, max(first - seconds, 0.0)


def calibrate_front_end(encoder: Encoder) -> float:
    """Seconds to turn 30 s of audio into the model's input on this machine (one host thread)."""
    audio = np.random.default_rng(0).standard_normal(WINDOW_SAMPLES).astype(np.float32) * 0.1
    encoder.windows(audio, "truncate")
    t = time.perf_counter()
    encoder.windows(audio, "truncate")
    return time.perf_counter() - t


def plan_encode(
    encoder,
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
    rate: tuple[float, str] | None = None,
    write_rate: float | None = None,
    hosts: Sequence[int] = (1,),
    load_seconds: float = 0.0,
) -> Plan:
    """The plan of an encode run on any family; ``samples[lang][i]``: utterance i's length in 16 kHz samples.

    ``encoder``: a loaded ``Encoder``, or anything with its windows, frames and cost (``WhisperShape``: a plan
    without weights). ``rate``: (FLOP/s, what was timed) for such a plan; by default the loaded encoder's own step is
    timed here on the run's longest (padded) window. ``write_rate``: bytes/s one process writes (default: measured
    here through ``LayerStore``); ``hosts``: the host counts to say compute or storage for. ``load_seconds``: how long
    loading the model took; with the step's compile time measured here it is the plan's "load + compile" stage,
    which a small run is mostly made of (12 FLEURS clips: 5.5 s of 10.7 s)."""
    n_utt = sum(len(v) for v in samples.values())
    costs: dict[int, EncoderCost] = {}
    # How the family cuts audio (the Encoder's window, whether it pads each to a full one, and its last-window cut)
    window, pads, cut = encoder.window_samples, encoder.pads_windows, encoder.min_samples
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
    compile_s = None
    if rate is None:
        t_step, rows, compile_s = calibrate(encoder, padded, layers, dtype)
        timed_what = f"the model's encoder on {rows} window(s) of {padded / 16000:.0f} s in {t_step * 1e3:.0f} ms"
        rate = (big.flops * rows / t_step, timed_what)
    flop_rate, measured = rate
    t_front = calibrate_front_end(encoder)
    rate_source = "given"
    if write_rate is None:  # compute or storage: engine.pipelines.stages.writes
        write_rate, rate_source = calibrate_write_rate(encoder, layers, dtype), "LayerStore to a local folder, here"
    calib_s = time.perf_counter() - t0
    here_enc = enc_flops / flop_rate
    # A padded window's input is made for the full window; the others' for their own length.
    here_feat = (n_win if pads else seconds_of_audio / WINDOW_SECONDS) * t_front

    audio_bytes = seconds_of_audio * 16000 * 2  # 16 kHz 16-bit PCM as read; compressed sources read less
    states_bytes = float(n_frames) * len(layers) * d * sbytes
    weights = big.params * cbytes
    dev_enc = dev_feat = None
    if device is not None:
        dev_enc = max(
            enc_flops / (device.flops(compute_dtype) * device.encoder_efficiency),
            n_win * weights / batch_size / device.bandwidth,
            0.0 if device.host_link is None else states_bytes / device.host_link,  # every stored layer leaves it
        )
        dev_feat = here_feat / max(prefetch, 1)  # host threads of a machine like this one
    stages = [] if compile_s is None else [Stage("load + compile", 0.0, 0.0, 0.0, load_seconds + compile_s, None)]
    stages += [
        Stage("audio -> input", 0.0, audio_bytes, 0.0, here_feat, dev_feat),
        Stage("encoder", enc_flops, float(weights), states_bytes, here_enc, dev_enc),
    ]
    # On a device: weights, a batch of the longest (padded) window, one block's activations and every stored layer
    # of the batch until it is copied to the host (engine.pipelines.stages.memory).
    peak = family_step(big, padded, d, layers, compute_dtype).peak(batch_size)
    memory_lines = [
        f"one stored layer of every utterance: {size(float(n_frames) * d * sbytes)}; all {len(layers)} layers: "
        f"{size(states_bytes)}",
        f"blocks: {batch_size} windows per encoder step (--batch_size), {prefetch} host threads ahead of it",
    ]
    if device is not None:
        memory_lines.append(f"fits on {device.name}: {'yes' if peak < 0.9 * device.memory else 'NO'} (90% usable)")
    memory_lines += storage_lines(states_bytes, here_enc if device is None else dev_enc, write_rate,
                                  n_layers=len(layers), dtype=dtype, where=device.name if device else "this machine",
                                  hosts=hosts, rate_source=rate_source)  # fmt: skip
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
            f"{round(enc_flops):,} ({flops(enc_flops)}; {big.n_layers} layers; one padded {padded / 16000:.0f} s "
            f"window: {round(big.flops):,})",
        ),
    ]
    calibration = (
        f"{jax.devices()[0].platform} x {jax.local_device_count()}: {measured} = {flop_rate / 1e9:.1f} GFLOP/s, its "
        f"input of 30 s in {t_front * 1e3:.0f} ms (calibration took {calib_s:.1f} s)"
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
