"""The plan of an encode run (``--plan``): utterances, 30 s windows and frames from the dataset's headers, the
encoder's FLOPs (Whisper: ``engine.models.whisper.cost.encoder_flops_per_window``; other families: their
``Encoder.cost``, see ``family_plan``) and the model's encoder timed here on one window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.data.pairing import pairing_lines, shared_ids
from engine.data.revision import source_revision
from engine.errors import AudioError
from engine.models.family import detect_family, load_encoder
from engine.models.whisper.cost import N_FEATURE_FRAMES, encoder_block, encoder_flops_per_window, encoder_params
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.features import features_for_audio
from engine.models.whisper.loaded import load_whisper
from engine.pipelines.encode.family_plan import plan_family_encode
from engine.pipelines.encode.memory import whisper_step
from engine.pipelines.encode.run import dataset_source
from engine.pipelines.encode.windows import resampled_samples
from engine.pipelines.encode.writes import calibrate_write_rate, storage_lines
from engine.runtime.devices import Device
from engine.runtime.plan import (
    EFFICIENCY,
    Plan,
    Stage,
    size,
    timed,
)


def calibrate_encoder(whisper, layers: Sequence[int]) -> float:
    """Seconds of the loaded model's encoder (every stored layer out) on one window, on this machine."""
    mel = jnp.asarray(np.random.default_rng(0).standard_normal((1, whisper.dims.n_mels, N_FEATURE_FRAMES)), jnp.float32)
    return timed(lambda m: whisper.encode(m, layers=tuple(layers)), mel)


def calibrate_features(n_mels: int) -> float:
    """Seconds to turn 30 s of audio into log-mel features on this machine (one host thread)."""
    samples = np.random.default_rng(0).standard_normal(30 * SAMPLE_RATE).astype(np.float32) * 0.1
    features_for_audio(samples, n_mels, "window")
    t = time.perf_counter()
    features_for_audio(samples, n_mels, "window")
    return time.perf_counter() - t


def plan_encode(
    dims: ModelDimensions,
    windows: Mapping[str, Sequence[int]],
    frames: Mapping[str, Sequence[int]],
    seconds_of_audio: float,
    *,
    layers: Sequence[int],
    dtype: str,
    compute_dtype: str,
    batch_size: int,
    prefetch: int,
    device: Device | None,
    model: str,
    window_seconds: float | None = None,
    calibrated_for: float = 0.0,
    write_rate: float | None = None,
    hosts: Sequence[int] = (1,),
) -> Plan:
    """The plan of an encode run; ``windows[lang][i]`` and ``frames[lang][i]``: utterance i's 30 s windows and valid
    encoder frames. ``window_seconds``: the model's encoder measured on one window here (``calibrate_encoder``);
    without it (dimensions only, no weights) one block at the model's width is timed and scaled, which measured
    1.6x slower per FLOP than whisper-base's own encoder on this machine (so the estimate errs long)."""
    n_utt = sum(len(v) for v in windows.values())
    n_win = sum(int(np.sum(v)) for v in windows.values())
    n_frames = sum(int(np.sum(v)) for v in frames.values())
    d, cbytes, sbytes = dims.n_audio_state, jnp.dtype(compute_dtype).itemsize, jnp.dtype(dtype).itemsize
    stem, block = encoder_flops_per_window(dims)
    enc_flops = n_win * (stem + dims.n_audio_layer * block)

    t0 = time.perf_counter() - calibrated_for  # seconds the caller spent measuring window_seconds
    if window_seconds is None:
        t_block = timed(*encoder_block(dims, compute_dtype))
        rate = block / t_block
        measured = f"one encoder block on one window in {t_block * 1e3:.0f} ms"
    else:
        rate = (stem + dims.n_audio_layer * block) / window_seconds
        measured = f"the model's encoder on one window in {window_seconds * 1e3:.0f} ms"
    t_features = calibrate_features(dims.n_mels)
    rate_source = "given"
    if write_rate is None:  # compute or storage: engine.pipelines.encode.writes
        write_rate, rate_source = calibrate_write_rate(dims, layers, dtype), "LayerStore to a local folder, here"
    calib_s = time.perf_counter() - t0
    # On this machine the prefetch threads and the encoder share the same cores: their times add.
    here_enc = n_win * (stem + dims.n_audio_layer * block) / rate
    here_feat = n_win * t_features

    audio_bytes = seconds_of_audio * 16000 * 2  # 16 kHz 16-bit PCM as read; compressed sources read less
    states_bytes = float(n_frames) * len(layers) * d * sbytes
    weights = encoder_params(dims) * cbytes
    dev_enc = dev_feat = None
    if device is not None:
        dev_enc = max(
            enc_flops / (device.flops(compute_dtype) * EFFICIENCY), n_win * weights / batch_size / device.bandwidth
        )
        dev_feat = n_win * t_features / max(prefetch, 1)  # host threads of a machine like this one
    stages = [
        Stage("audio -> log-mel", 0.0, audio_bytes, 0.0, here_feat, dev_feat),
        Stage("encoder", enc_flops, float(weights), states_bytes, here_enc, dev_enc),
    ]
    # On a device: weights, a batch of mel windows, one block's activations and every stored layer of the batch until
    # it is copied to the host (engine.pipelines.encode.memory).
    peak = whisper_step(dims, layers, compute_dtype).peak(batch_size)
    per_layer = float(n_frames) * d * sbytes
    memory_lines = [
        f"one stored layer of every utterance: {size(per_layer)}; all {len(layers)} layers: {size(states_bytes)}",
        f"blocks: {batch_size} windows per encoder step (--batch_size), {prefetch} host threads ahead of it",
    ]
    if device is not None:
        memory_lines.append(f"fits on {device.name}: {'yes' if peak < 0.9 * device.memory else 'NO'} (90% usable)")
    where = "this machine" if device is None else device.name
    memory_lines += storage_lines(states_bytes, here_enc if device is None else dev_enc, write_rate,
                                  n_layers=len(layers), dtype=dtype, where=where, hosts=hosts,
                                  rate_source=rate_source)  # fmt: skip
    counts = [
        (
            "model",
            f"{model} (L={dims.n_audio_layer}, d={d}, {dims.n_mels} mels, {encoder_params(dims) / 1e6:.0f} M "
            f"encoder parameters), compute {compute_dtype}, storage {dtype}",
        ),
        ("languages", str(len(windows))),
        ("utterances", str(n_utt)),
        ("audio", f"{seconds_of_audio:.0f} s ({seconds_of_audio / max(n_utt, 1):.1f} s per utterance)"),
        ("windows", f"{n_win} x 30 s (each costs a full window: Whisper pads to 30 s)"),
        ("frames", f"{n_frames} valid encoder frames stored, layers {list(layers)}"),
    ]
    calibration = (
        f"{jax.devices()[0].platform} x {jax.local_device_count()}: {measured} = {rate / 1e9:.1f} GFLOP/s, "
        f"log-mel of 30 s in {t_features * 1e3:.0f} ms (calibration took {calib_s:.1f} s)"
    )
    assumptions = [
        "store writes overlap with compute; audio as 16-bit PCM; a device estimate uses this machine's log-mel "
        f"rate on {prefetch} host threads"
    ]
    return Plan("encode", counts, stages, peak, memory_lines, device, calibration, assumptions)


def plan_encode_run(config, device: Device | None) -> Plan:
    """The plan of an ``EncodeConfig``: the dataset's headers (no audio decoded) and the model. Whisper's counts whole
    30 s windows (``plan_encode``); every other family's counts each window's own length through the family
    interface (``engine.pipelines.encode.family_plan``)."""
    family = detect_family(config.model)
    whisper = encoder = None
    if family.name == "whisper":  # its plan predates the interface and times its log-mel path: kept as it was
        whisper = load_whisper(config.model, dtype=jnp.dtype(config.compute_dtype))
        model = WhisperEncoder(whisper)
    else:
        model = encoder = load_encoder(config.model, adapter=config.adapter, dtype=jnp.dtype(config.compute_dtype))
    source = dataset_source(config)
    langs = list(config.langs) if config.langs else source.languages()
    listing = {lang: source.utterances(lang, config.split) for lang in langs}
    shared = shared_ids(listing)
    samples, windows, frames, seconds = {}, {}, {}, 0.0
    for lang in langs:
        s, w, f = [], [], []
        for utt in listing[lang]:
            try:
                info = utt.probe()
            except AudioError:
                continue
            s.append(resampled_samples(info.frames, info.sample_rate))
            n, n_windows = model.expected_frames(s[-1], config.long_audio)
            w.append(n_windows)
            f.append(n)
            seconds += info.duration_s
        samples[lang], windows[lang], frames[lang] = s, w, f
    layers = config.layers if config.layers is not None else tuple(range(model.n_layers_out))
    if encoder is not None:
        plan = plan_family_encode(
            encoder,
            samples,
            seconds,
            layers=layers,
            long_audio=config.long_audio,
            dtype=config.dtype,
            compute_dtype=config.compute_dtype,
            batch_size=config.batch_size,
            prefetch=config.prefetch,
            device=device,
            model=config.model,
        )
    else:
        t0 = time.perf_counter()
        window_seconds = calibrate_encoder(whisper, layers)
        plan = plan_encode(
            whisper.dims,
            windows,
            frames,
            seconds,
            layers=layers,
            dtype=config.dtype,
            compute_dtype=config.compute_dtype,
            batch_size=config.batch_size,
            prefetch=config.prefetch,
            device=device,
            model=config.model or "packaged whisper-base",
            window_seconds=window_seconds,
            calibrated_for=time.perf_counter() - t0,
        )
    plan.counts[1:1] = dataset_lines(source, listing, config.split)
    for line in pairing_lines(shared):  # what the run would refuse (no id shared) is visible in the plan too
        name, _, value = line.partition(": ")
        plan.counts.append((name, value))
    return plan


def dataset_lines(source, listing: Mapping[str, Sequence], split: str) -> list[tuple[str, str]]:
    """The plan's dry listing of the dataset: what it is, its revision, how its columns map (hf:), and per language
    the utterances, the transcribed ones and the first ids."""
    lines = [("dataset", f"{source.name} split {split if source.splits() else '(none: all of it)'}")]
    lines.append(("revision", source_revision(source) or "(none stated)"))
    mapping = getattr(source, "column_mapping", None)
    if callable(mapping):
        named = {k: v or ("(row number)" if k == "id" else "(none)") for k, v in mapping().items()}
        lines.append(("columns", ", ".join(f"{k}={v}" for k, v in named.items())))
    for lang, utts in listing.items():
        texts = sum(1 for u in utts if u.transcription)
        first = ", ".join(u.id for u in utts[:3]) + (" ..." if len(utts) > 3 else "")
        lines.append((f"  {lang}", f"{len(utts)} utterances, {texts} transcribed; ids {first or '(none)'}"))
    return lines
