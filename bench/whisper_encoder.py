"""Benchmark: whisper-base all-layer encoding on CPU (fp32) against its peers, in one run.

Prints audio seconds per second, GFLOP/s and three ratios measured in the same run:
  - babelgrid, every layer (0..L+1)    vs  CTranslate2 ``encode()`` (final layer only)
  - babelgrid, every layer             vs  transformers PyTorch with ``output_hidden_states=True``
  - babelgrid GFLOP/s                  vs  this machine's own JAX float32 matmul GFLOP/s

Usage:  python bench/whisper_encoder.py [--batch 8] [--repeats 5] [--isa native,avx2] [--attention]
            [--record bench/RESULTS.md]

Inputs are the first 30 s windows of the real FLEURS clips when ../shared/data/fleurs-sample
exists (random log-mel otherwise: speed does not depend on content). Times are medians over
``--repeats`` interleaved rounds after a warm-up run; every engine uses the same threads.

Each engine runs in its own subprocess with the environment of ``--isa`` (``bench.common.ISA_ENV``: ``avx2`` caps XLA,
CTranslate2, oneDNN, ATen and MKL at AVX2, ``avx512`` at AVX-512, ``native`` sets nothing), and reports the
instruction set it ran with: XLA's cap and its matmul rate, CTranslate2's "Selected ISA" log line, PyTorch's ATen
capability and oneDNN's ISA. Several ISAs (``--isa native,avx2``) share the same interleaved rounds. A cap below the
machine's own ISA is an emulation (same cores and caches, fewer instructions) and is labelled as such.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, isa_env, machine, record  # noqa: E402
from engine.models.whisper.checkpoints.load import write_packaged_ct2_folder  # noqa: E402
from engine.models.whisper.dims import ModelDimensions  # noqa: E402


def encoder_flops(dims: ModelDimensions) -> float:
    """Multiply-add FLOPs (2 per MAC) of one 30 s window through the whole encoder."""
    t, d, f, m = dims.n_audio_ctx, dims.n_audio_state, 4 * dims.n_audio_state, dims.n_mels
    stem = 2 * (2 * t) * m * 3 * d + 2 * t * d * 3 * d
    block = 2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * f
    return float(stem + dims.n_audio_layer * block)


MATMUL_N = 2048  # the machine-rate matmul: f32[N, N] @ f32[N, N] in JAX


def jax_matmul():
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((MATMUL_N, MATMUL_N)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return lambda: f(a).block_until_ready()


def load_mel(batch: int, n_mels: int) -> np.ndarray:
    from engine.data.audio import load_audio
    from engine.models.whisper.features import features_for_audio

    sample = REPO.parent / "shared" / "data" / "fleurs-sample"
    clips = sorted(sample.glob("*.ogg"))[:batch] if sample.is_dir() else []
    if len(clips) < batch:
        print(f"(random log-mel input: {sample} not found)")
        return np.random.default_rng(0).standard_normal((batch, n_mels, 3000)).astype(np.float32)
    return np.stack([np.asarray(features_for_audio(load_audio(p), n_mels)[0][0]) for p in clips])


ALL, FINAL, BATCHED, MATMUL = "all", "final", "batched", "matmul"
CT2, HF = "ct2", "hf"
LABELS = {
    ALL: "babelgrid Flax, all layers 0..L+1",
    FINAL: "babelgrid Flax, final layer only",
    BATCHED: "babelgrid Flax, all layers, batched attention",
    CT2: "CTranslate2 encode(), final layer only",
    HF: "transformers PyTorch, output_hidden_states",
}


class captured_output:
    """Collects what C libraries write to file descriptors 1 and 2 (their logs) while the block runs."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+")
        self.saved = [os.dup(1), os.dup(2)]
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import ctypes

        ctypes.CDLL(None).fflush(None)  # C stdio buffers, before the descriptors go back
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.seek(0)
        self.text = self.file.read()
        self.file.close()


def jax_contenders(args, mel: np.ndarray) -> tuple[dict, str]:
    import jax
    import jax.numpy as jnp

    from engine.models.whisper.loaded import load_whisper

    whisper = load_whisper()
    mel_dev = jnp.asarray(mel)
    top = (whisper.dims.n_audio_layer + 1,)
    fns = {
        ALL: lambda: whisper.encode(mel_dev).block_until_ready(),
        FINAL: lambda: whisper.encode(mel_dev, top).block_until_ready(),
        MATMUL: jax_matmul(),
    }
    if args.attention:
        from flax import nnx

        from engine.models.whisper import model as model_lib

        graphdef, state = nnx.split(whisper.model)
        batched = jax.jit(lambda s, m: nnx.merge(graphdef, s).encoder(m))
        model_lib.CPU_BLOCKED_ATTENTION = False  # read while tracing: this compilation keeps the batched form
        try:
            batched(state, mel_dev).block_until_ready()
        finally:
            model_lib.CPU_BLOCKED_ATTENTION = True
        fns[BATCHED] = lambda: batched(state, mel_dev).block_until_ready()
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")]
    cap = flags[-1].split("=", 1)[1] if flags else "none (all the CPU has)"
    return fns, f"jax {jax.__version__}, XLA max ISA {cap}"


def ct2_contenders(args, mel: np.ndarray) -> tuple[dict, str]:
    import logging

    import ctranslate2

    tmp = tempfile.mkdtemp()
    ctranslate2.set_log_level(logging.INFO)
    with captured_output() as log:
        model = ctranslate2.models.Whisper(
            str(write_packaged_ct2_folder(tmp)), device="cpu", compute_type="float32", intra_threads=args.threads
        )
    ctranslate2.set_log_level(logging.WARNING)
    selected = [line.split("Selected ISA:", 1)[1].strip() for line in log.text.splitlines() if "Selected ISA:" in line]
    feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
    sgemm = os.environ.get("ONEDNN_MAX_CPU_ISA", "all the CPU has")
    info = f"ctranslate2 {ctranslate2.__version__}, Selected ISA {selected[0] if selected else '?'}"
    return {CT2: lambda: model.encode(feats, to_cpu=True)}, f"{info}, oneDNN SGEMM max ISA {sgemm}"


def hf_contenders(args, mel: np.ndarray) -> tuple[dict, str]:
    import torch
    import transformers

    from engine.models.whisper.checkpoints.export import hf_config
    from engine.models.whisper.loaded import load_whisper

    dims = load_whisper().dims
    torch.set_num_threads(args.threads)
    cfg = transformers.WhisperConfig(**hf_config(dims))
    # Speed does not depend on the weights' values, so a randomly initialised encoder will do.
    hf = transformers.WhisperModel(cfg).get_encoder().eval()
    x = torch.from_numpy(mel)

    def run():
        with torch.inference_mode():
            hf(x, output_hidden_states=True)

    with captured_output() as log, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        run()  # the convolutions run in oneDNN, which names its ISA once
    onednn = [line.split("isa:", 1)[1].strip() for line in log.text.splitlines() if ",isa:" in line]
    mkl = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "all the CPU has")
    info = (
        f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}, "
        f"oneDNN {onednn[0] if onednn else '?'}, MKL max ISA {mkl}"
    )
    return {HF: run}, info


ENGINES = {"jax": jax_contenders, "ct2": ct2_contenders, "hf": hf_contenders}


def serve(args) -> None:
    """Worker side: set up one engine's contenders, warm them up, then time each one named on stdin."""
    from engine.models.whisper.loaded import load_whisper

    mel = load_mel(args.batch, load_whisper().dims.n_mels)
    fns, info = ENGINES[args.worker](args, mel)
    for fn in fns.values():
        fn()  # warm-up (compilation, allocator)
    print(f"@@ready {info}", flush=True)
    for line in sys.stdin:
        fn = fns[line.strip()]
        start = time.perf_counter()
        fn()
        print(f"@@{time.perf_counter() - start}", flush=True)


def start_workers(args, isa: str) -> tuple[dict[str, tuple[Worker, str]], dict[str, str]]:
    """``{label: (worker, name)}`` and ``{engine: ISA info}`` for one ISA; engines whose packages are missing are
    left out with a note."""
    base = [sys.executable, __file__, "--batch", str(args.batch), "--threads", str(args.threads)]
    contenders, infos = {}, {}
    for engine in ENGINES:
        argv = base + ["--worker", engine] + (["--attention"] if args.attention else [])
        try:
            worker = Worker(argv, isa_env(isa))
        except RuntimeError as err:
            if "ModuleNotFoundError" not in str(err):
                raise
            print(f"({engine} left out at {isa}: {str(err).splitlines()[-1]})")
            continue
        infos[engine] = worker.info
        names = {"jax": [ALL, FINAL] + ([BATCHED] if args.attention else []) + [MATMUL]}.get(engine, [engine])
        for name in names:
            contenders[f"{isa}/{name}"] = (worker, name)
    return contenders, infos


def table(args, isa: str, medians: dict[str, float], infos: dict[str, str], flops: float) -> list[str]:
    audio_s = 30.0 * args.batch
    try:
        cpu_flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    except OSError:
        cpu_flags = set()
    if isa == "native":
        note = ""
    elif isa == "avx2" and "avx512f" in cpu_flags:
        note = " (emulated: capped by environment on this AVX-512 machine)"
    else:
        note = " (capped by environment)"
    lines = [f"### ISA: {isa}{note}", ""]
    lines += [f"- {engine} ran with: {info}" for engine, info in infos.items()]
    lines += ["", "| engine | s/batch | audio s/s | GFLOP/s |", "| --- | ---: | ---: | ---: |"]
    for name in (ALL, FINAL, BATCHED, CT2, HF):
        t = medians.get(f"{isa}/{name}")
        if t is not None:
            lines.append(f"| {LABELS[name]} | {t:.2f} | {audio_s / t:.1f} | {flops / t / 1e9:.1f} |")
    mm = 2 * MATMUL_N**3 / medians[f"{isa}/{MATMUL}"] / 1e9
    lines += [f"| JAX float32 matmul {MATMUL_N}^3 (machine rate at this ISA) | | | {mm:.1f} |", ""]
    t_all = medians[f"{isa}/{ALL}"]
    if f"{isa}/{CT2}" in medians:
        ratio = medians[f"{isa}/{CT2}"] / t_all
        lines.append(f"- all layers vs CTranslate2 final layer: **{ratio:.2f}x** as fast (goal >= 1.2)")
    if f"{isa}/{HF}" in medians:
        ratio = medians[f"{isa}/{HF}"] / t_all
        lines.append(f"- all layers vs transformers output_hidden_states: **{ratio:.2f}x** as fast (goal >= 1.2)")
    lines.append(f"- all layers GFLOP/s / JAX matmul GFLOP/s: **{flops / t_all / 1e9 / mm:.2f}**")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2, avx512 (bench.common.ISA_ENV)")
    parser.add_argument("--record", type=pathlib.Path, default=None, help="append the table to this markdown file")
    parser.add_argument(
        "--attention", action="store_true", help="also time the encoder with batched (not cache-blocked) attention"
    )
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)  # internal: one engine's process
    args = parser.parse_args()
    if args.worker:
        serve(args)
        return
    isas = [isa.strip() for isa in args.isa.split(",") if isa.strip()]
    for isa in isas:
        isa_env(isa)  # unknown names fail here, before any worker starts

    from engine.models.whisper.loaded import load_whisper

    dims = load_whisper().dims
    flops = encoder_flops(dims) * args.batch
    contenders, infos, workers = {}, {}, set()
    load_before = os.getloadavg()
    try:
        for isa in isas:
            found, infos[isa] = start_workers(args, isa)
            contenders.update(found)
            workers.update(w for w, _ in found.values())
        medians = interleaved_workers(contenders, args.repeats)
    finally:
        for worker in workers:
            worker.close()
    load_after = os.getloadavg()

    command = f"python bench/whisper_encoder.py --batch {args.batch} --repeats {args.repeats} --isa {','.join(isas)}"
    lines = [
        f"machine: {machine()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}{' --attention' if args.attention else ''}",
        f"whisper-base, fp32, batch of {args.batch} x 30 s windows, {encoder_flops(dims) / 1e9:.1f} GFLOP/window; "
        f"median of {args.repeats} interleaved rounds; {args.threads} threads per engine; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
    ]
    for isa in isas:
        lines += [""] + table(args, isa, medians, infos[isa], flops)
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, "Whisper encoder (bench/whisper_encoder.py)", text)


if __name__ == "__main__":
    main()
