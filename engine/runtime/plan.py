"""Dry runs (``--plan``): what an encode, seqsim or decode run will do and cost, printed before anything runs.

A plan counts the work from the dataset's headers or the layer store's lengths (utterances, 30 s windows, frames),
turns it into FLOPs and bytes per stage with the formulas below, and into seconds twice:

- **here**: from a calibration of a few seconds on this machine, running the stage's own computation at the run's
  sizes (an encoder block on one window of the model's width, the seqsim kernel on a block of random states, a
  decoder step's matmuls) and scaling its measured FLOP/s;
- **on a named device** (``DEVICES``): FLOPs over the device's peak FLOP/s times ``EFFICIENCY``, or bytes over its
  memory bandwidth when that is slower; the peak figures used are printed with the estimate.

FLOPs count a multiply-add as 2. Encoder, per 30 s window (T = 1500 positions, width d, L blocks, M mel bins):
stem ``2*3*(2T*M*d + T*d*d)``, each block ``24*T*d^2 + 4*T^2*d`` (projections, MLP, scores and weighted values).
Every window costs the full T: Whisper pads audio to 30 s. SeqSim, per language pair and layer: ``2*N*M*m*n*d``
for N x M utterances cropped to m and n frames (``kernels.seqsim`` crops to the longest utterance). DTW and OT cost
``N*M*m*n`` cells per pair and layer as well, but their time is set by the wavefront and by the Sinkhorn iterations,
which depend on the states: both are timed here on a sample of the store's own utterances (``calibrate_pair_measure``)
and scaled by cells; their FLOPs count the cosine cost matrix only (``2*d`` a cell).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.whisper.dims import ModelDimensions

N_CTX = 1500  # encoder positions per 30 s window
N_FEATURE_FRAMES = 3000  # mel frames per window (10 ms hop)
EFFICIENCY = 0.4  # assumed fraction of a device's peak FLOP/s that the encoder's matmuls reach (batch 8 windows)
DECODE_EFFICIENCY = 0.1  # a decoder step is a few rows per matmul: far from peak on any accelerator
TOKENS_PER_SECOND = 4.0  # assumed tokens per second of speech (Whisper's BPE, mixed languages), plus the prompt
PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's published peak figures (dense, no sparsity)."""

    name: str
    flops_bf16: float  # FLOP/s, bfloat16/float16 matmuls
    flops_f32: float  # FLOP/s, float32 matmuls at JAX's default precision (TF32 on NVIDIA, bf16 passes on TPU)
    bandwidth: float  # bytes/s of device memory
    memory: float  # bytes of device memory

    def flops(self, dtype: str) -> float:
        return self.flops_f32 if dtype == "float32" else self.flops_bf16

    def describe(self) -> str:
        return (
            f"{self.name}: {self.flops_bf16 / 1e12:.0f} TFLOP/s bf16, {self.flops_f32 / 1e12:.0f} TFLOP/s f32 "
            f"(JAX default precision), {self.bandwidth / 1e12:.2f} TB/s, {self.memory / 2**30:.0f} GiB"
        )


DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM", 989e12, 494e12, 3.35e12, 80 * 2**30),
    "h200": Device("NVIDIA H200", 989e12, 494e12, 4.8e12, 141 * 2**30),
    "a100": Device("NVIDIA A100 80GB", 312e12, 156e12, 2.04e12, 80 * 2**30),
    "l4": Device("NVIDIA L4", 121e12, 60e12, 0.3e12, 24 * 2**30),
    "tpu-v4": Device("TPU v4 (one chip)", 275e12, 275e12, 1.2e12, 32 * 2**30),
    "tpu-v5e": Device("TPU v5e (one chip)", 197e12, 197e12, 0.82e12, 16 * 2**30),
    "tpu-v5p": Device("TPU v5p (one chip)", 459e12, 459e12, 2.76e12, 95 * 2**30),
    "tpu-v6e": Device("TPU v6e (one chip)", 918e12, 918e12, 1.64e12, 32 * 2**30),
}


def get_device(name: str | None) -> Device | None:
    if name is None or name == "":
        return None
    if name.lower() not in DEVICES:
        raise ValueError(f"--plan_device must be one of {', '.join(DEVICES)}, got {name!r}")
    return DEVICES[name.lower()]


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    flops: float
    bytes_read: float
    bytes_written: float
    seconds_here: float
    seconds_device: float | None = None


@dataclasses.dataclass
class Plan:
    """What a run will do: counts, stages, memory, block sizes and the assumptions behind the numbers."""

    job: str
    counts: list[tuple[str, str]]
    stages: list[Stage]
    peak_memory: float  # bytes per device
    memory_lines: list[str]
    device: Device | None
    calibration: str
    assumptions: list[str]

    @property
    def seconds_here(self) -> float:
        return sum(s.seconds_here for s in self.stages)

    @property
    def seconds_device(self) -> float | None:
        return None if self.device is None else sum(s.seconds_device or 0.0 for s in self.stages)

    def render(self) -> str:
        lines = [f"plan: {self.job} (dry run; nothing was read from or written to the output)"]
        lines += [f"  {name}: {value}" for name, value in self.counts]
        head = f"  {'stage':<22}{'FLOPs':>11}{'read':>11}{'written':>11}{'here':>11}"
        lines += ["", head + (f"{'device':>11}" if self.device else "")]
        for s in self.stages:
            row = f"  {s.name:<22}{flops(s.flops):>11}{size(s.bytes_read):>11}{size(s.bytes_written):>11}"
            row += f"{duration(s.seconds_here):>11}"
            if self.device:
                # A stage the device model cannot estimate (dtw, ot) says so instead of showing 0.
                row += f"{'n/a' if s.seconds_device is None else duration(s.seconds_device):>11}"
            lines.append(row)
        total = Stage("total", *(sum(getattr(s, f) for s in self.stages) for f in ("flops", "bytes_read")), 0, 0)
        row = f"  {'total':<22}{flops(total.flops):>11}{size(total.bytes_read):>11}"
        row += f"{size(sum(s.bytes_written for s in self.stages)):>11}{duration(self.seconds_here):>11}"
        if self.device:
            row += f"{duration(self.seconds_device):>11}"
        lines += [row, "", f"  peak memory per device: {size(self.peak_memory)}"]
        lines += [f"  {line}" for line in self.memory_lines]
        lines += ["", f"  here: {self.calibration}"]
        if self.device:
            lines.append(
                f"  device: {self.device.describe()}; {EFFICIENCY:.0%} of peak FLOP/s assumed for encoder and seqsim, "
                f"{DECODE_EFFICIENCY:.0%} for decoder steps"
            )
        lines += [f"  assumes: {a}" for a in self.assumptions]
        return "\n".join(lines)


def flops(x: float) -> str:
    return _scaled(x, ("", "K", "M", "G", "T", "P", "E"), 1000.0)


def size(x: float) -> str:
    return _scaled(x, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 1024.0)


def _scaled(x: float, units, base: float) -> str:
    i = 0
    while abs(x) >= base and i < len(units) - 1:
        x, i = x / base, i + 1
    return f"{x:.3g} {units[i]}".strip()


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 10_000 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / (365.25 * 86400):,.1f} y"  # CPU estimates of a whole-FLEURS grid: hours overflow the column


def _timed(fn, *args, repeats: int = 2) -> float:
    """Best wall time of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------------------------------------------
# Encode


def encoder_flops_per_window(dims: ModelDimensions) -> tuple[float, float]:
    """(stem, one block) FLOPs of one 30 s window."""
    d, t = dims.n_audio_state, dims.n_audio_ctx
    stem = 2 * 3 * (N_FEATURE_FRAMES * dims.n_mels * d + t * d * d)
    block = 24 * t * d * d + 4 * t * t * d
    return float(stem), float(block)


def encoder_params(dims: ModelDimensions) -> int:
    d = dims.n_audio_state
    return 3 * dims.n_mels * d + 3 * d * d + dims.n_audio_layer * 12 * d * d


def calibrate_encoder_block(dims: ModelDimensions, compute_dtype: str) -> float:
    """Seconds of one encoder block (pre-LN attention + GELU MLP, as Whisper's) on one window, on this machine."""
    d, t, h = dims.n_audio_state, dims.n_audio_ctx, dims.n_audio_head
    dt = jnp.dtype(compute_dtype)
    keys = jax.random.split(jax.random.key(0), 5)
    w_qkv, w_o = (jax.random.normal(keys[0], (d, 3 * d), dt) * 0.02, jax.random.normal(keys[1], (d, d), dt) * 0.02)
    w_1, w_2 = (jax.random.normal(keys[2], (d, 4 * d), dt) * 0.02, jax.random.normal(keys[3], (4 * d, d), dt) * 0.02)
    x = jax.random.normal(keys[4], (1, t, d), dt)

    @jax.jit
    def block(x):
        def norm(y):
            y32 = y.astype(jnp.float32)
            return ((y32 - y32.mean(-1, keepdims=True)) * jax.lax.rsqrt(y32.var(-1, keepdims=True) + 1e-5)).astype(dt)

        q, k, v = jnp.split(norm(x) @ w_qkv, 3, axis=-1)
        q, k, v = (z.reshape(1, t, h, d // h) for z in (q, k, v))
        att = jax.nn.softmax(jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32), axis=-1).astype(dt)
        x = x + jnp.einsum("bhqk,bkhc->bqhc", att, v).reshape(1, t, d) @ w_o
        return x + jax.nn.gelu(norm(x) @ w_1, approximate=False) @ w_2

    return _timed(block, x)


def calibrate_encoder(whisper, layers: Sequence[int]) -> float:
    """Seconds of the loaded model's encoder (every stored layer out) on one window, on this machine."""
    mel = jnp.asarray(np.random.default_rng(0).standard_normal((1, whisper.dims.n_mels, N_FEATURE_FRAMES)), jnp.float32)
    return _timed(lambda m: whisper.encode(m, layers=tuple(layers)), mel)


def calibrate_features(n_mels: int) -> float:
    """Seconds to turn 30 s of audio into log-mel features on this machine (one host thread)."""
    from engine.data.audio import SAMPLE_RATE
    from engine.data.features import features_for_audio

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
        t_block = calibrate_encoder_block(dims, compute_dtype)
        rate = block / t_block
        measured = f"one encoder block on one window in {t_block * 1e3:.0f} ms"
    else:
        rate = (stem + dims.n_audio_layer * block) / window_seconds
        measured = f"the model's encoder on one window in {window_seconds * 1e3:.0f} ms"
    t_features = calibrate_features(dims.n_mels)
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
    # On a device: weights, a batch of mel windows, one block's activations (qkv, MLP hidden, f32 scores of every
    # head) and every stored layer of the batch until it is copied to the host.
    act = batch_size * (N_CTX * d * 8 * cbytes + dims.n_audio_head * N_CTX * N_CTX * 4)
    peak = weights + batch_size * dims.n_mels * N_FEATURE_FRAMES * 4 + act + batch_size * len(layers) * N_CTX * d * 4
    per_layer = float(n_frames) * d * sbytes
    memory_lines = [
        f"one stored layer of every utterance: {size(per_layer)}; all {len(layers)} layers: {size(states_bytes)}",
        f"blocks: {batch_size} windows per encoder step (--batch_size), {prefetch} host threads ahead of it",
    ]
    if device is not None:
        memory_lines.append(f"fits on {device.name}: {'yes' if peak < 0.9 * device.memory else 'NO'} (90% usable)")
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
    """``plan_encode`` for an ``EncodeConfig``: the dataset's headers (no audio decoded) and the model's dimensions."""
    from engine.data import audio as audio_lib
    from engine.data.sources import get_source
    from engine.errors import AudioError
    from engine.models.whisper.loaded import load_whisper
    from engine.pipelines.encode.run import expected_frames

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


# ----------------------------------------------------------------------------------------------------------------
# SeqSim


def calibrate_seqsim(d: int, dtype: str, n: int = 8, frames: int = 256) -> float:
    """FLOP/s of ``kernels.seqsim.seqsim_matrix`` on this machine, on n x n random utterances of ``frames``."""
    from kernels.seqsim import seqsim_matrix

    x = jax.random.normal(jax.random.key(0), (2, n, frames, d), jnp.dtype(dtype))
    lengths = jnp.full((n,), frames, jnp.int32)
    seconds = _timed(lambda a, b: seqsim_matrix(a, lengths, b, lengths), x[0], x[1])
    return 2.0 * n * n * frames * frames * d / seconds


CELL_MEASURES = ("dtw", "ot")  # timed per cell on the store's own states
CALIBRATION_UTTERANCES = 16  # per language, spread over its utterances, for the dtw and ot calibration


def calibrate_pair_measure(measure: str, sample, ot_config=None) -> tuple[float, float]:
    """(cells per second, seconds of compilation) of ``measure`` ("dtw" or "ot") on this machine, cells counted as
    ``N*M*m*n`` with frames cropped to the longest; on ``sample = (A, len_A, B, len_B)``: real states of two
    languages (``f[N, m, embed]``, ``i32[N]``). Sinkhorn's iterations depend on the states: random ones would not do."""
    from kernels.dtw import dtw_similarity_matrix
    from kernels.ot import OtConfig, ot_similarity_matrix

    A, len_A, B, len_B = sample
    A, B = A[:, : int(len_A.max())], B[:, : int(len_B.max())]
    if measure == "dtw":
        fn = lambda: dtw_similarity_matrix(A, len_A, B, len_B)  # noqa: E731
    elif measure == "ot":
        fn = lambda: ot_similarity_matrix(A, len_A, B, len_B, ot_config or OtConfig()).score  # noqa: E731
    else:
        raise ValueError(f"calibrate_pair_measure times {CELL_MEASURES}, not {measure!r}")
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    seconds = _timed(fn, repeats=1)
    return float(A.shape[0] * B.shape[0] * A.shape[1] * B.shape[1]) / seconds, max(first - seconds, 0.0)


def plan_seqsim(
    lengths: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    *,
    d: int,
    n_layers: int,
    storage_dtype: str,
    dtype: str,
    device: Device | None,
    store: str,
    measures: Sequence[str] = ("seqsim",),
    sample=None,
    ot_config=None,
) -> Plan:
    """The plan of a seqsim run of ``measures`` over ``pairs`` of languages at ``n_layers`` layers; ``lengths[lang]``:
    each utterance's frames (0 = not encoded). ``sample``: real states ``(A, len_A, B, len_B)`` to time dtw and ot
    on (``calibrate_pair_measure``); needed when ``measures`` has either."""
    from kernels.seqsim import choose_blocks, default_memory_budget

    done = {lang: np.asarray(v)[np.asarray(v) > 0] for lang, v in lengths.items()}
    # The job reads each language up to its longest utterance, so seqsim_matrix's crop to a FRAME_QUANTUM multiple
    # never pads further: a language's frames as computed are its longest length.
    padded = {lang: int(v.max(initial=1)) for lang, v in done.items()}
    itemsize, sbytes = jnp.dtype(dtype).itemsize, jnp.dtype(storage_dtype).itemsize
    useful = sum(2.0 * done[a].sum() * done[b].sum() * d for a, b in pairs) * n_layers
    work = sum(2.0 * len(done[a]) * len(done[b]) * padded[a] * padded[b] * d for a, b in pairs) * n_layers
    # Per layer, each language of a pair is read once (the job caches a layer's languages), padded to its longest.
    langs = sorted({lang for pair in pairs for lang in pair})
    read = sum(len(done[lang]) * padded[lang] * d * sbytes for lang in langs) * n_layers
    written = sum(len(lengths[a]) * len(lengths[b]) * 4 for a, b in pairs) * n_layers

    t0 = time.perf_counter()
    rate = calibrate_seqsim(d, dtype)
    dev = None
    if device is not None:
        dev = max(work / (device.flops(dtype) * EFFICIENCY), work / (2 * d) * 4 * 2 / device.bandwidth)
    seqsim_measures = [m for m in measures if m.startswith("seqsim")]
    pooled = [m for m in measures if m not in seqsim_measures and m not in CELL_MEASURES]
    stages = []
    if seqsim_measures:
        stages.append(Stage("seqsim", work, float(read), float(written) * len(seqsim_measures), work / rate, dev))
    # dtw and ot crop to each language's longest utterance too.
    longest = {lang: int(v.max(initial=1)) for lang, v in done.items()}
    cells = sum(float(len(done[a]) * len(done[b]) * longest[a] * longest[b]) for a, b in pairs) * n_layers
    cell_rates = {}
    for m in (m for m in CELL_MEASURES if m in measures):
        if sample is None:
            raise ValueError(f"planning the {m} measure needs a sample of real states to time it on")
        cell_rates[m], compile_s = calibrate_pair_measure(m, sample, ot_config)
        read_here = 0.0 if stages else float(read)  # one read of a layer's states serves every measure
        # The run compiles as the calibration did (once per tile shape; counted once).
        stages.append(Stage(m, 2.0 * d * cells, read_here, float(written), cells / cell_rates[m] + compile_s, None))
    if pooled:
        pooled_read = 0.0 if stages else float(read)
        no_time = None if device is None else 0.0
        stages.append(Stage(",".join(pooled), 0.0, pooled_read, float(written) * len(pooled), 0.0, no_time))
    calib_s = time.perf_counter() - t0

    platform = jax.devices()[0].platform
    largest = max(pairs, key=lambda p: len(done[p[0]]) * len(done[p[1]]) * padded[p[0]] * padded[p[1]])
    a, b = largest
    n_a, n_b, m, n = len(done[a]), len(done[b]), padded[a], padded[b]

    def blocks(budget: int, on: str) -> str:
        ba, bb = choose_blocks(n_a, n_b, m, n, d, jnp.dtype(dtype), budget, platform=on)
        working = 2 * 4 * ba * m * bb * n + itemsize * (d + 2) * (ba * m + bb * n)
        return f"blocks of {ba} x {bb} utterances ({size(working)} working set, budget {size(budget)})", working

    here_blocks, working = blocks(default_memory_budget(), platform)
    # The job keeps every language of the layer it is scoring loaded (on the device) until the layer is done.
    layer_states = sum(len(done[lang]) * padded[lang] * d * itemsize for lang in langs)
    peak = layer_states + working + n_a * n_b * 4 * 3
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    memory_lines = [
        f"largest pair {a}:{b}: {n_a} x {n_b} utterances of <= {m} x {n} frames",
        f"here ({platform}): {here_blocks}",
        f"one layer of every language in {dtype}, held while that layer's pairs are scored: {size(layer_states)}; "
        f"fits here ({size(host)} RAM): {'yes' if layer_states < 0.8 * host else 'NO'}",
    ]
    if device is not None:
        on = "tpu" if device.name.startswith("TPU") else "gpu"
        device_blocks, _ = blocks(int(device.memory // 4), on)  # kernels.seqsim uses a quarter of free memory
        fits = layer_states < 0.9 * device.memory
        memory_lines += [
            f"on {device.name}: {device_blocks}",
            f"one layer of every language fits on {device.name}: "
            + ("yes" if fits else "NO: split the languages over runs (--pairs, --langs)"),
        ]
    counts = [
        ("store", store),
        ("languages", f"{len(langs)}, {len(pairs)} pairs, {n_layers} layers, d={d}"),
        ("utterances", str(sum(len(done[lang]) for lang in langs))),
        ("frames", str(int(sum(done[lang].sum() for lang in langs)))),
        ("measures", f"{', '.join(measures)}: {len(measures)} matrices per pair and layer"),
        ("seqsim FLOPs", f"{flops(useful)} on valid frames, {flops(work)} as computed (frames padded per pair)"),
    ]
    calibration = (
        f"{platform} x {jax.local_device_count()}: seqsim kernel at {rate / 1e9:.1f} GFLOP/s on 8 x 8 utterances "
        f"of 256 frames"
    )
    calibration += "".join(
        f"; {m} at {r / 1e6:.1f} M cells/s on a sample of {CALIBRATION_UTTERANCES} x {CALIBRATION_UTTERANCES} "
        "utterances"
        for m, r in cell_rates.items()
    )
    calibration += f" (calibration took {calib_s:.1f} s)"
    assumptions = ["mean, centre and duration are negligible beside the others"]
    if cell_rates:
        assumptions.append(
            "dtw and ot take as long per cell as on the calibration sample (ot: as many Sinkhorn iterations); their "
            "FLOPs are the cosine cost matrix only, and they are not estimated on --plan_device"
        )
    return Plan("seqsim", counts, stages, peak, memory_lines, device, calibration, assumptions)


def plan_seqsim_run(config, device: Device | None) -> Plan:
    from engine.pipelines.similarity.run import resolve_pairs
    from engine.stores.reader import open_store

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


# ----------------------------------------------------------------------------------------------------------------
# Decode


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
    return 2.0 * rows * (8 * d * d + d * dims.n_vocab) / _timed(step, x)


def plan_decode_run(config, device: Device | None) -> Plan:
    from engine.stores.reader import open_store

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


PLANNERS = {"EncodeConfig": plan_encode_run, "SimilarityConfig": plan_seqsim_run, "DecodeConfig": plan_decode_run}


def register_planner(config_name: str, planner) -> None:
    """Adds the planner of a job's config class (by class name): ``planner(config, device) -> Plan``. A job whose
    library lives above ``engine.runtime`` registers its own from its entry point, so that this module imports no
    pipeline."""
    PLANNERS[config_name] = planner


def plan_for(config, device_name: str | None) -> Plan:
    """The plan of the run ``config`` would make (a config class of ``PLANNERS``)."""
    device = get_device(device_name)
    name = type(config).__name__
    if name not in PLANNERS:
        raise ValueError(f"--plan has no planner for {name}; it plans {', '.join(PLANNERS)} runs")
    return PLANNERS[name](config, device)
