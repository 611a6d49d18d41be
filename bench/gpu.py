"""Benchmark on an NVIDIA GPU (issue 69): the encoder, SeqSim, greedy decoding and DTW against the same run's bf16
matmul and against their GPU peers, in one process, each section after the last, so that what finished is kept
when the time runs out.

    python bench/gpu.py --out DIR                     # on the GPU: every section, DIR/gpu.md and DIR/gpu.json
    python bench/gpu.py --out /tmp/g --smoke          # on any machine: tiny shapes, to check the program runs

Sections (``--sections``, in this order):

- ``info``: the device, driver, JAX / Flax / torch versions, the load.
- ``matmul``: the bf16 rate, 8192-cube products jitted (the ceiling the others are set against), and float32 at
  JAX's default precision (TF32 on NVIDIA) and at HIGHEST.
- ``encoder``: Whisper large-v3's encoder at its real shapes (128 mels, d 1280, 20 heads, 32 blocks) with random
  weights, bf16 weights and compute, every layer (0 .. 33) returned in bf16, ``--batch`` 30 s windows a call:
  windows/s and model FLOP utilisation (``engine.models.whisper.cost``'s count over the same run's bf16 matmul
  rate) with the states kept on the device; the same with every layer copied to the host, one batch dispatched
  ahead of the copy (as the encode job does); and attention through ``jax.nn.dot_product_attention`` (cuDNN's
  fused kernel where it applies, ``GPU_FUSED_ATTENTION``) against babelgrid's einsum-softmax-einsum form.
- ``seqsim``: ``kernels.seqsim.seqsim_matrix`` at d 1280, 400 x 400 utterances of 400-500 frames, bf16, against a
  square bf16 matmul of the same FLOPs timed in interleaved rounds (``bench/seqsim.py``'s contenders), and the
  fused Pallas kernel (``pallas=True``) on the same inputs (``bench/seqsim_pallas.py`` sweeps its block sizes).
- ``decode``: greedy decoding of ``--decode_batch`` windows (random audio, language and task forced, ``--tokens``
  new tokens: random weights never say end-of-text) against transformers' ``generate`` on CUDA, a random
  large-v3-turbo folder with ``--decode_layers`` encoder blocks, float32 on both sides with TF32 off (JAX HIGHEST,
  torch's matmul and cuDNN TF32 flags off), so that the tokens can be checked equal.
- ``dtw``: ``kernels.dtw.dtw_batch`` (float32 accumulator, on the device) against openai-whisper's Triton
  ``dtw_cuda`` called matrix by matrix as ``find_alignment`` does, on the same cost matrices; paths checked equal.

Every time is a median of interleaved rounds after a warm-up call of each contender; every result is fetched
(``block_until_ready`` or a copy to the host) inside the timed region.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import interleaved, load_average  # noqa: E402
from bench.gpu_peers import section_decode, section_dtw  # noqa: E402

SECTIONS = ("info", "matmul", "encoder", "seqsim", "dtw", "decode")


class Report:
    """The markdown and JSON results, rewritten after every section (a run cut short keeps what it measured)."""

    def __init__(self, out: pathlib.Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        self.data: dict = {}

    def add(self, section: str, lines: list[str], data: dict) -> None:
        self.lines += [f"### {section}", "", *lines, ""]
        self.data[section] = data
        print("\n".join([f"### {section}", *lines]), flush=True)
        (self.out / "gpu.md").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")


def ready(x):
    return jax.block_until_ready(x)


# ---------------------------------------------------------------------------------------------------------------


def section_info(args) -> tuple[list[str], dict]:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
    smi = subprocess.run(query if shutil.which("nvidia-smi") else ["true"], capture_output=True, text=True)
    versions = {"jax": jax.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("flax", "jaxlib", "torch", "transformers", "triton", "tensorstore"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - informational only
            versions[name] = "absent"
    devices = [str(d) for d in jax.devices()]
    data = {"nvidia-smi": smi.stdout.strip() or smi.stderr.strip(), "devices": devices, "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
            "load": load_average(), "cpus": os.cpu_count(), "smoke": args.smoke}  # fmt: skip
    lines = [
        f"- device: {data['nvidia-smi']} (jax: {', '.join(devices)})",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- date: {data['date']}; host: {os.cpu_count()} CPUs; load average {data['load']}",
    ]
    return lines, data


def section_matmul(args) -> tuple[list[str], dict]:
    side = 512 if args.smoke else 8192
    repeats = 2 if args.smoke else 10
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((side, side), np.float32))
    rates = {}
    for name, dtype, precision in (("bf16", jnp.bfloat16, None), ("f32 default (TF32)", jnp.float32, None),
                                   ("f32 HIGHEST", jnp.float32, jax.lax.Precision.HIGHEST)):  # fmt: skip
        a = x.astype(dtype)

        @jax.jit
        def run(a, precision=precision):
            def body(i, acc):
                y = a * (i + 1).astype(a.dtype)  # keeps XLA from hoisting the product out of the loop
                return acc + jnp.dot(y, a, precision=precision, preferred_element_type=jnp.float32)[0, 0]

            return jax.lax.fori_loop(0, repeats, body, jnp.float32(0))

        ready(run(a))
        t = statistics.median(_times(lambda a=a, run=run: ready(run(a)), 5))
        rates[name] = repeats * 2.0 * side**3 / t
    args.bf16_rate = rates["bf16"]
    lines = [f"- {name}: {rate / 1e12:.0f} TFLOP/s ({side}-cube products, {repeats} a call, median of 5 calls)"
             for name, rate in rates.items()]  # fmt: skip
    return lines, {k: v / 1e12 for k, v in rates.items()}


def _copy_rates(x, rounds: int) -> dict[str, float]:
    """Bytes a second of one device array reaching NumPy: ``np.asarray`` (a fresh pageable buffer) against a
    ``device_put`` into pinned host memory then a view. Each round copies a fresh array (JAX caches a copied
    array's NumPy value), made and waited for outside the timed part."""
    from engine.pipelines.encode.transfers import has_host_memory, start_to_host

    fresh = jax.jit(lambda x: x + jnp.zeros((), x.dtype))
    ways = {"np.asarray (pageable)": np.asarray}
    if has_host_memory(x.sharding.device_set):
        ways["device_put to pinned_host, then a view"] = lambda y: np.asarray(jax.block_until_ready(start_to_host(y)))
    times = {name: [] for name in ways}
    for _ in range(rounds + 1):  # the first round warms up
        for name, way in ways.items():
            y = ready(fresh(x))
            start = time.perf_counter()
            way(y)
            times[name].append(time.perf_counter() - start)
    return {name: x.nbytes / statistics.median(t[1:]) for name, t in times.items()}


def _times(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ---------------------------------------------------------------------------------------------------------------


def _random_encoder(dims, dtype):
    """A Whisper encoder at ``dims`` with random weights (``random_state_dict`` with one decoder block), split."""
    import dataclasses

    from flax import nnx

    from engine.models.whisper.model import AudioEncoder
    from engine.models.whisper.random_weights import random_state_dict

    sd = random_state_dict(dataclasses.replace(dims, n_text_layer=1), scale=0.02)  # one small decoder block, unread
    return nnx.split(AudioEncoder(dims, sd, dtype))


def section_encoder(args) -> tuple[list[str], dict]:

    from flax import nnx

    from engine.models.common import attention
    from engine.models.whisper.cost import encoder_flops_per_window
    from engine.models.whisper.dims import _dims, preset

    dims = _dims(80, 64, 4, 2) if args.smoke else preset("large-v3")
    batch = 2 if args.smoke else args.batch
    layers = tuple(range(dims.n_audio_layer + 2))
    graphdef, state = _random_encoder(dims, jnp.bfloat16)
    stem, block = encoder_flops_per_window(dims)
    flops = stem + dims.n_audio_layer * block
    mel = jnp.asarray(np.random.default_rng(1).standard_normal((batch, dims.n_mels, 2 * dims.n_audio_ctx), np.float32))
    host_batches = 2 if args.smoke else args.host_batches

    def compiled(fused: bool, wanted=layers, as_tuple=False):
        attention.GPU_FUSED_ATTENTION = fused  # read while tracing: each jit below keeps its own form

        def encode(state, mel):
            model = nnx.merge(graphdef, state)
            if not as_tuple:
                return model(mel, wanted, jnp.bfloat16)
            x, kept = model._stem(mel), []  # every layer as its own output: no stacked copy of them
            kept.append(x.astype(jnp.bfloat16))
            for block in model.blocks:
                x = block.encoder_block(x)
                kept.append(x.astype(jnp.bfloat16))
            kept.append(model.ln_post(x).astype(jnp.bfloat16))
            return tuple(kept)

        encode = jax.jit(encode)
        ready(encode(state, mel))
        return encode

    einsum = compiled(False)
    notes = []
    try:
        fused = compiled(True)
        a, b = np.asarray(fused(state, mel)[-1], np.float32), np.asarray(einsum(state, mel)[-1], np.float32)
        gap = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
    except Exception as e:  # noqa: BLE001 - cuDNN refused at compile time: measured without it
        fused, gap = None, float("nan")
        notes.append(f"- fused attention failed ({type(e).__name__}: {str(e)[:300]}); measured without it")
    last = (len(layers) - 1,)
    variants = {
        "einsum attention, every layer stacked, on device": einsum,
        "einsum attention, last layer only, on device": compiled(False, last),
        "einsum attention, every layer as its own output, on device": compiled(False, as_tuple=True),
    }
    if fused is not None:
        variants |= {"fused attention, every layer stacked, on device": fused,
                     "fused attention, last layer only, on device": compiled(True, last)}  # fmt: skip
    attention.GPU_FUSED_ATTENTION = False

    def on_device(fn):
        return lambda: ready(fn(state, mel))

    from engine.pipelines.encode.transfers import start_to_host

    def to_host(fn, early: bool, pinned: bool = False):
        def run():  # host_batches calls, each copied to the host while the next one computes
            pending, kept = None, 0
            for _ in range(host_batches):
                result = fn(state, mel)
                if pinned:  # one DMA into pinned host memory, queued at dispatch (the encode job's path)
                    result = jax.tree.map(start_to_host, result)
                elif early:  # start the device-to-host copy now, not when NumPy asks for the array
                    jax.tree.map(lambda x: x.copy_to_host_async(), result)
                if pending is not None:
                    kept += sum(np.asarray(x).nbytes for x in jax.tree.leaves(pending))
                pending = result
            kept += sum(np.asarray(x).nbytes for x in jax.tree.leaves(pending))
            return kept

        return run

    contenders = {name: on_device(fn) for name, fn in variants.items()}
    contenders["einsum attention, every layer stacked, to host"] = to_host(einsum, False)
    contenders["einsum attention, every layer stacked, to host, copies started at once"] = to_host(einsum, True)
    contenders["einsum attention, every layer stacked, to pinned host at dispatch"] = to_host(einsum, False, True)
    contenders["einsum attention, every layer as its own output, to pinned host at dispatch"] = to_host(
        variants["einsum attention, every layer as its own output, on device"], False, True
    )
    form = "einsum"
    med = interleaved(contenders, args.rounds)
    rate = getattr(args, "bf16_rate", None)
    rows, data = [], {}
    for name, t in med.items():
        wps = (batch * host_batches if "host" in name else batch) / t
        mfu = wps * flops / rate if rate else float("nan")
        rows.append(f"| {name} | {t * 1e3:.1f} | {wps:.1f} | {wps * flops / 1e12:.0f} | **{mfu:.2f}** |")
        data[name] = {"seconds": t, "windows_per_s": wps, "mfu": mfu}
    states_bytes = len(layers) * dims.n_audio_ctx * dims.n_audio_state * 2
    on_dev = med[f"{form} attention, every layer stacked, on device"]
    host = med[f"{form} attention, every layer stacked, to host"] / host_batches / on_dev
    pinned = med[f"{form} attention, every layer stacked, to pinned host at dispatch"] / host_batches / on_dev
    copy_rate = {name: batch * host_batches * states_bytes / t for name, t in med.items() if "host" in name}
    link = _copy_rates(einsum(state, mel), args.rounds)
    data |= {"pinned_over_device": pinned, "host_bytes_per_s": copy_rate, "copy_only_bytes_per_s": link}
    data |= {"flops_per_window": flops, "fused_vs_einsum_max_rel_gap": gap, "host_over_device": host,
             "states_bytes_per_window": states_bytes}  # fmt: skip
    lines = [
        f"large-v3 shapes{' (smoke: tiny)' if args.smoke else ''}: {dims.n_audio_layer} blocks, d {dims.n_audio_state},"
        f" {dims.n_mels} mels; bf16; {batch} windows a call; all {len(layers)} layers returned in bf16 "
        f"({states_bytes / 2**20:.0f} MiB a window); {flops / 1e12:.2f} TFLOP a window; medians of {args.rounds} "
        "interleaved rounds. MFU: model FLOP/s over the bf16 matmul rate measured above.",
        "",
        "| encoder | ms a call | windows/s | TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"- every layer to the host ({host_batches} calls, one ahead of the copy) against the states kept on the "
        f"device: **{host:.2f}x** the time a window; into pinned host memory, started at dispatch (the encode "
        f"job's path): **{pinned:.2f}x** (the job's goal: <= 1.2x)",
        "- states reaching the host, GB/s, over the whole loop (compute included): "
        + "; ".join(f"{name.split(', ', 1)[1]}: {r / 1e9:.1f}" for name, r in copy_rate.items()),
        "- the copy alone, one call's stacked states already computed, GB/s (goal >= 10): "
        + "; ".join(f"{name}: {r / 1e9:.1f}" for name, r in link.items()),
        f"- fused (jax.nn.dot_product_attention, cuDNN) against einsum attention: "
        f"{on_dev / med.get('fused attention, every layer stacked, on device', float('nan')):.2f}x faster; last "
        f"layer's largest difference {gap:.1e} of its peak (bf16)",
        *notes,
    ]  # fmt: skip
    return lines, data


# ---------------------------------------------------------------------------------------------------------------


def section_seqsim(args) -> tuple[list[str], dict]:
    from bench.seqsim import make_inputs, square_matmul, timed
    from kernels import seqsim

    d, count, frames = (64, 16, 50) if args.smoke else (1280, args.utterances, 500)
    rng = np.random.default_rng(2)
    A, len_A = make_inputs(rng, count, frames, d, jnp.bfloat16)
    B, len_B = make_inputs(rng, count, frames, d, jnp.bfloat16)
    flops = 2.0 * count * frames * count * frames * d
    side, square = square_matmul(flops, jnp.bfloat16)
    kernel = lambda: seqsim.seqsim_matrix(A, len_A, B, len_B)  # noqa: E731
    # The fused Pallas kernel (issue 80), its BLOCKS entry for this device; bench/seqsim_pallas.py sweeps its blocks.
    fused = lambda: seqsim.seqsim_matrix(A, len_A, B, len_B, pallas=True)  # noqa: E731
    rounds = {"seqsim": [], "matmul": [], "pallas": []}
    for fn in (kernel, square, fused):
        timed(fn)
    for _ in range(args.rounds):
        rounds["matmul"].append(timed(square))
        rounds["seqsim"].append(timed(kernel))
        rounds["pallas"].append(timed(fused))
    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratio = med["matmul"] / med["seqsim"]
    rate = getattr(args, "bf16_rate", None)
    data = {"d": d, "utterances": count, "frames": frames, "flops": flops, "seconds": med,
            "seqsim_tflops": flops / med["seqsim"] / 1e12, "matmul_tflops": flops / med["matmul"] / 1e12,
            "ratio": ratio, "of_8192_rate": (flops / med["seqsim"] / rate) if rate else None,
            "pallas_tflops": flops / med["pallas"] / 1e12, "pallas_ratio": med["matmul"] / med["pallas"],
            "pallas_max_diff": float(jnp.max(jnp.abs(fused() - kernel())))}  # fmt: skip
    lines = [
        f"d {d}, {count} x {count} utterances of {int(0.8 * frames)}-{frames} frames (padded {frames}), bf16 in, f32 "
        f"accumulation; {flops / 1e12:.1f} TFLOP counted over padded frames; medians of {args.rounds} rounds.",
        "",
        "| contender | s | TFLOP/s |",
        "| --- | ---: | ---: |",
        f"| seqsim_matrix | {med['seqsim']:.3f} | {data['seqsim_tflops']:.0f} |",
        f"| seqsim_matrix(pallas=True) | {med['pallas']:.3f} | {data['pallas_tflops']:.0f} |",
        f"| square bf16 matmul, side {side} | {med['matmul']:.3f} | {data['matmul_tflops']:.0f} |",
        "",
        f"- seqsim against the equal-FLOP matmul: **{ratio:.2f}x** (goal >= 0.6x)"
        + (f"; against the 8192-cube rate: {data['of_8192_rate']:.2f}" if rate else ""),
        f"- the fused Pallas kernel against the equal-FLOP matmul: **{data['pallas_ratio']:.2f}x**; its largest "
        f"difference from seqsim_matrix: {data['pallas_max_diff']:.1e}",
    ]
    return lines, data


# ---------------------------------------------------------------------------------------------------------------


SECTION_RUNS = {"info": section_info, "matmul": section_matmul, "encoder": section_encoder,
                "seqsim": section_seqsim, "dtw": section_dtw, "decode": section_decode}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for gpu.md and gpu.json")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check that the program runs (any machine)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="encoder: windows a call")
    parser.add_argument("--host_batches", type=int, default=4, help="encoder: calls copied to the host per round")
    parser.add_argument("--utterances", type=int, default=400, help="seqsim: utterances per side")
    parser.add_argument("--decode_layers", type=int, default=4, help="decode: encoder blocks of the random turbo")
    parser.add_argument("--decode_batches", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    parser.add_argument("--tokens", type=int, default=64, help="decode: new tokens a window")
    parser.add_argument("--decode_rounds", type=int, default=3)
    parser.add_argument("--tmp", default="/tmp/bench-gpu")
    args = parser.parse_args()
    report = Report(args.out)
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            lines, data = SECTION_RUNS[name](args)
        except Exception as e:  # noqa: BLE001 - a failed section is reported, the next one still runs
            lines, data = [f"FAILED: {type(e).__name__}: {e}", "", "```", traceback.format_exc()[-3000:], "```"], {}
        took = time.perf_counter() - start
        report.add(name, lines + [f"(section took {took:.0f} s; load average {load_average()})"],
                   {**data, "section_seconds": took})  # fmt: skip


if __name__ == "__main__":
    main()
