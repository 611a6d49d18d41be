"""The plan of decoding a layer store's layers with its model's text decoder (the decode job's ``--plan``, the sae
job's early exit): windows and seconds of speech from the layer store's utterance tables,
the encoder recomputed from the audio up to each layer and the decoder's steps, priced by the cost model the store's
family declares (``Family.decode_cost``, an ``engine.models.interface.DecoderCost``: Whisper's), with an assumed
number of tokens per second of speech."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.family import FAMILIES
from engine.pipelines.stages.errors import DecodeError
from engine.runtime.devices import Device
from engine.runtime.plan import (
    DECODE_EFFICIENCY,
    Plan,
    Stage,
    size,
    timed,
)
from engine.stores.reader import open_store

TOKENS_PER_SECOND = 4.0  # assumed tokens per second of speech (Whisper's BPE, mixed languages), plus the prompt


def plan_decode_run(config, device: Device | None) -> Plan:
    """``config``: a ``DecodeConfig``, or anything with the fields of it read here (the sae job's early exit)."""
    reader = open_store(config.store)
    info = reader.info
    cost_of = FAMILIES[info.family].decode_cost
    if cost_of is None:
        # A family declares the cost model of its decoder (``Family.decode_cost``); a head without one (a CTC head, a
        # decoder not modelled yet) gets no plan: a plan of another model would be a number nobody measured.
        raise DecodeError(
            f"decode --plan has no cost model of a {info.family} store's decoding head; '{config.store}' is one. "
            "Time the decode on one language (--langs) and scale it instead"
        )
    cost = cost_of(info.dims.to_dict())
    langs = list(config.langs) if config.langs else reader.languages()
    layers = config.layers if config.layers is not None else info.layers
    top = cost.top
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
    tokens = min(config.max_new_tokens, cost.prompt_tokens + TOKENS_PER_SECOND * seconds / max(windows, 1))
    # the cross-attention keys and values of the encoder states once per window, then every token of every beam
    work = runs * windows * (cost.cross_kv * len(beams) + sum(beams) * tokens * cost.per_token)
    dtype = config.compute_dtype
    t0 = time.perf_counter()
    step, x, step_flops = cost.decoder_step(config.batch_size * max(beams), dtype)
    rate = step_flops / timed(step, x)
    weights = cost.weight_count * jnp.dtype(dtype).itemsize
    dev = None
    if device is not None:
        steps = runs * -(-windows // config.batch_size) * sum(tokens * 1 for _ in beams)
        dev = max(work / (device.flops(dtype) * DECODE_EFFICIENCY), steps * weights / device.bandwidth)
    # engine.pipelines.decode.run recomputes the encoder from the audio up to each (layer, ln_post) variant's layer,
    # once per
    # window batch of a language for every task and decoding: the costly half of early exit on CPU.
    stem, block = cost.stem, cost.block
    depths = [
        min(layer, cost.n_blocks)
        for layer in layers
        for _ in range(2 if config.ln_post == "both" and layer != top else 1)
    ]
    encoder_work = batched * sum(stem + depth * block for depth in depths)
    block_s = timed(*cost.encoder_block(dtype))
    encoder_s = encoder_work / (block / block_s)
    encoder_dev = None if device is None else encoder_work / (device.flops(dtype) * device.encoder_efficiency)
    calib_s = time.perf_counter() - t0
    stages = [
        # The states come from the audio (16-bit PCM assumed), not from the layer store.
        Stage("encoder (from audio)", encoder_work, float(seconds * 16000 * 2), 0.0, encoder_s, encoder_dev),
        Stage("decoder", work, 0.0, float(n_utt * runs * len(beams) * 200), work / rate, dev),
    ]
    kv_cache = config.batch_size * max(beams) * cost.cache_per_row * 4
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
        f"{TOKENS_PER_SECOND:.0f} tokens per second of speech plus {cost.prompt_tokens} prompt tokens; "
        f"{DECODE_EFFICIENCY:.0%} of peak on a device (small matmuls); the encoder timed as a hand-written block "
        "(no weights loaded), which errs long"
    ]
    return Plan("decode", counts, stages, peak, memory_lines, device, calibration, assumptions)
