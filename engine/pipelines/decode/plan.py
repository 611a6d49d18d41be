"""The plan of a decode run (``--plan``): windows and seconds of speech from the layer store's utterance tables,
the encoder recomputed from the audio up to each layer (``engine.models.whisper.cost.encoder_flops_per_window``) and the
decoder's steps, with an assumed number of tokens per second of speech."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.family import FAMILIES
from engine.models.whisper.cost import N_CTX, encoder_block, encoder_flops_per_window
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.loaded import load_whisper
from engine.pipelines.decode.config import DecodeError
from engine.runtime.devices import Device
from engine.runtime.plan import (
    DECODE_EFFICIENCY,
    EFFICIENCY,
    Plan,
    Stage,
    size,
    timed,
)
from engine.stores.reader import open_store

TOKENS_PER_SECOND = 4.0  # assumed tokens per second of speech (Whisper's BPE, mixed languages), plus the prompt
PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>


def decoder_flops_per_token(dims: ModelDimensions, ctx: int) -> float:
    """One token of one beam: self-attention and MLP projections, cross-attention queries/outputs and scores over
    ``ctx`` encoder frames, and the logits."""
    d = dims.n_text_state
    per_layer = 2 * (4 * d * d + 2 * d * d + 8 * d * d) + 4 * ctx * d + 4 * dims.n_text_ctx // 2 * d
    return float(dims.n_text_layer * per_layer + 2 * d * dims.n_vocab)


def calibrate_decoder(dims: ModelDimensions, rows: int, dtype: str) -> float:
    """FLOP/s of a decoder step's matmuls (``rows`` = batch x beams) on this machine."""
    d = dims.n_text_state
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (rows, d), jnp.dtype(dtype))
    w = jax.random.normal(k[1], (d, 4 * d), jnp.dtype(dtype))
    emb = jax.random.normal(k[2], (dims.n_vocab, d), jnp.dtype(dtype))
    step = jax.jit(lambda x: (jax.nn.gelu(x @ w) @ w.T) @ emb.T)
    return 2.0 * rows * (8 * d * d + d * dims.n_vocab) / timed(step, x)


def plan_decode_run(config, device: Device | None) -> Plan:
    reader = open_store(config.store)
    info = reader.info
    if FAMILIES[info.family].decoder is not load_whisper:
        # The cost model below is Whisper's decoder over 1500 frames; another family's head (OWSM's decoder, a CTC
        # head) is not modelled, and a plan of the wrong model would be a number nobody measured.
        raise DecodeError(
            f"decode --plan models Whisper's decoder only; '{config.store}' is a {info.family} store. Time the "
            "decode on one language (--langs) and scale it instead"
        )
    dims = ModelDimensions.from_dict(info.dims.to_dict())
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
    block_s = timed(*encoder_block(dims, dtype))
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
