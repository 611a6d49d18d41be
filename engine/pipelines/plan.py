"""``--plan`` of a job's config: reads what the run would read (the dataset's headers, the layer store's lengths and
tables, a few real states to time dtw and ot on) and prices it with ``engine.runtime.plan``'s formulas and
calibrations. It reads the jobs' configs and helpers, so it lives beside them and not in ``engine.runtime``."""

from __future__ import annotations

import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from engine.data import audio as audio_lib
from engine.data.sources import get_source
from engine.errors import AudioError
from engine.models.whisper.loaded import load_whisper
from engine.pipelines.encode.run import expected_frames
from engine.pipelines.similarity.run import resolve_pairs
from engine.runtime.plan import (
    CALIBRATION_UTTERANCES,
    CELL_MEASURES,
    DECODE_EFFICIENCY,
    EFFICIENCY,
    N_CTX,
    PROMPT_TOKENS,
    TOKENS_PER_SECOND,
    Device,
    Plan,
    Stage,
    calibrate_decoder,
    calibrate_encoder,
    calibrate_encoder_block,
    decoder_flops_per_token,
    encoder_flops_per_window,
    get_device,
    plan_encode,
    plan_seqsim,
    size,
)
from engine.stores.reader import open_store


def plan_encode_run(config, device: Device | None) -> Plan:
    """``plan_encode`` for an ``EncodeConfig``: the dataset's headers (no audio decoded) and the model's dimensions."""
    whisper = load_whisper(config.model, dtype=jnp.dtype(config.compute_dtype))
    dims = whisper.dims
    source = get_source(config.dataset)
    langs = list(config.langs) if config.langs else source.languages()
    windows, frames, seconds = {}, {}, 0.0
    for lang in langs:
        w, f = [], []
        for utt in source.utterances(lang, config.split):
            try:
                info = utt.probe()
            except AudioError:
                continue
            n = expected_frames(info.frames, info.sample_rate, config.long_audio)
            w.append(max(1, -(-n // audio_lib.N_ENCODER_FRAMES)))
            f.append(n)
            seconds += info.duration_s
        windows[lang], frames[lang] = w, f
    layers = config.layers if config.layers is not None else tuple(range(dims.n_encoder_layers_out))
    t0 = time.perf_counter()
    window_seconds = calibrate_encoder(whisper, layers)
    return plan_encode(
        dims,
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


def plan_seqsim_run(config, device: Device | None) -> Plan:
    reader = open_store(config.store)
    info = reader.info
    langs = list(config.langs) if config.langs else reader.languages()
    pairs = resolve_pairs(config.pairs, langs, reader.languages())
    layers = config.layers if config.layers is not None else info.layers
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in langs}
    sample = None
    if any(m in CELL_MEASURES for m in config.measures):
        a, b = max(pairs, key=lambda p: int((lengths[p[0]] > 0).sum()) * int((lengths[p[1]] > 0).sum()))
        sample = _sample_states(reader, (a, b), lengths, layers[len(layers) // 2], config.dtype)
    return plan_seqsim(
        lengths,
        pairs,
        d=info.dims.n_audio_state,
        n_layers=len(layers),
        storage_dtype=info.dtype,
        dtype=config.dtype,
        device=device,
        store=config.store,
        measures=tuple(dict.fromkeys(config.measures)),
        sample=sample,
        ot_config=config.ot,
    )


def _sample_states(reader, pair: tuple[str, str], lengths: Mapping[str, np.ndarray], layer: int, dtype: str):
    """``(A, len_A, B, len_B)``: ``CALIBRATION_UTTERANCES`` done utterances of each language of ``pair``, evenly
    spread, at ``layer`` (the middle one planned), read from the store as the job reads them."""
    out = []
    for lang in pair:
        done = np.flatnonzero(lengths[lang] > 0)
        index = done[np.unique(np.linspace(0, len(done) - 1, CALIBRATION_UTTERANCES).astype(int))]
        n = lengths[lang][index].astype(np.int32)
        states, _ = reader.language_layer(
            lang, layer, utterances=index, dtype=jnp.dtype(dtype), frames=int(n.max()), zero_padding=False
        )
        out += [jnp.asarray(states), jnp.asarray(n)]
    return tuple(out)


def plan_decode_run(config, device: Device | None) -> Plan:
    reader = open_store(config.store)
    info, dims = reader.info, reader.info.dims
    langs = list(config.langs) if config.langs else reader.languages()
    layers = config.layers if config.layers is not None else info.layers
    top = dims.n_encoder_layers_out - 1
    variants = sum((2 if config.ln_post == "both" and layer != top else 1) for layer in layers)
    beams = [int(x.split(":")[1]) if x.startswith("beam") else 1 for x in config.decodings]
    windows, seconds, n_utt, batched = 0, 0.0, 0, 0
    for lang in langs:
        table = reader.utterances_table(lang)
        done = np.asarray(reader.lengths(lang)) > 0
        lang_windows = int(np.asarray(table.column("n_windows"))[done].sum())
        windows += lang_windows
        batched += -(-lang_windows // config.batch_size) * config.batch_size  # the last batch padded with copies
        seconds += float(np.asarray(table.column("duration_s"))[done].sum())
        n_utt += int(done.sum())
    runs = variants * len(config.tasks)
    tokens = min(config.max_new_tokens, PROMPT_TOKENS + TOKENS_PER_SECOND * seconds / max(windows, 1))
    per_token = decoder_flops_per_token(dims, N_CTX)
    d = dims.n_text_state
    cross_kv = 2.0 * 2 * N_CTX * d * d * dims.n_text_layer  # keys and values of the encoder states, once per window
    work = runs * windows * (cross_kv * len(beams) + sum(beams) * tokens * per_token)
    dtype = config.compute_dtype
    t0 = time.perf_counter()
    rate = calibrate_decoder(dims, config.batch_size * max(beams), dtype)
    weights = (dims.n_text_layer * 16 * d * d + dims.n_vocab * d) * jnp.dtype(dtype).itemsize
    dev = None
    if device is not None:
        steps = runs * -(-windows // config.batch_size) * sum(tokens * 1 for _ in beams)
        dev = max(work / (device.flops(dtype) * DECODE_EFFICIENCY), steps * weights / device.bandwidth)
    # engine.pipelines.decode.run recomputes the encoder from the audio up to each (layer, ln_post) variant's layer,
    # once per
    # window batch of a language for every task and decoding: the costly half of early exit on CPU.
    stem, block = encoder_flops_per_window(dims)
    depths = [
        min(layer, dims.n_audio_layer)
        for layer in layers
        for _ in range(2 if config.ln_post == "both" and layer != top else 1)
    ]
    encoder_work = batched * sum(stem + depth * block for depth in depths)
    block_s = calibrate_encoder_block(dims, dtype)
    encoder_s = encoder_work / (block / block_s)
    encoder_dev = None if device is None else encoder_work / (device.flops(dtype) * EFFICIENCY)
    calib_s = time.perf_counter() - t0
    stages = [
        # The states come from the audio (16-bit PCM assumed), not from the layer store.
        Stage("encoder (from audio)", encoder_work, float(seconds * 16000 * 2), 0.0, encoder_s, encoder_dev),
        Stage("decoder", work, 0.0, float(n_utt * runs * len(beams) * 200), work / rate, dev),
    ]
    kv_cache = config.batch_size * max(beams) * dims.n_text_layer * 2 * (N_CTX + dims.n_text_ctx) * d * 4
    peak = weights + kv_cache
    counts = [
        ("store", config.store),
        ("utterances", f"{n_utt} in {len(langs)} languages, {windows} windows, {seconds:.0f} s of audio"),
        (
            "grid",
            f"{len(layers)} layers ({variants} with ln_post variants) x tasks {list(config.tasks)} x "
            f"decodings {list(config.decodings)}: {runs * len(beams)} decodes per window",
        ),
        ("tokens", f"~{tokens:.0f} per window (max {config.max_new_tokens})"),
    ]
    memory_lines = [
        f"blocks: {config.batch_size} windows per decoder call x {max(beams)} beams; kv caches {size(kv_cache)}"
    ]
    calibration = (
        f"{jax.devices()[0].platform}: one encoder block on one window in {block_s * 1e3:.0f} ms, decoder-step "
        f"matmuls at {rate / 1e9:.1f} GFLOP/s on {config.batch_size * max(beams)} rows "
        f"(calibration took {calib_s:.1f} s)"
    )
    assumptions = [
        f"{TOKENS_PER_SECOND:.0f} tokens per second of speech plus {PROMPT_TOKENS} prompt tokens; "
        f"{DECODE_EFFICIENCY:.0%} of peak on a device (small matmuls); the encoder timed as a hand-written block "
        "(no weights loaded), which errs long"
    ]
    return Plan("decode", counts, stages, peak, memory_lines, device, calibration, assumptions)


def plan_for(config, device_name: str | None) -> Plan:
    """The plan of the run ``config`` (an EncodeConfig, SimilarityConfig or DecodeConfig) would make."""
    device = get_device(device_name)
    name = type(config).__name__
    planners = {"EncodeConfig": plan_encode_run, "SimilarityConfig": plan_seqsim_run, "DecodeConfig": plan_decode_run}
    if name not in planners:
        raise ValueError(f"--plan is for encode, seqsim and decode runs, not {name}")
    return planners[name](config, device)
