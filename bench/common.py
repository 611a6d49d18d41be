"""What every benchmark program shares: the machine line, interleaved timing, the results file."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time


def machine() -> str:
    """CPU model, cores, OS, JAX version and platform, for the results file."""
    import jax

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001 - informational only
        model = platform.processor() or "unknown CPU"
    return (f"{model} ({cpu_isa()}), {os.cpu_count()} cores, {platform.system()}; jax {jax.__version__} on "
            f"{jax.devices()[0].platform}")  # fmt: skip


def cpu_isa() -> str:
    """The widest x86 vector ISA this CPU has (ratios differ between AVX-512 and AVX2 machines), else the arch."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.machine()
    return next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), "no AVX2")


class Run:
    """The first line of a result: the machine, its ISA, the date and the load average when the bench started and
    when it ended (a ratio measured at a load above 2 is not a result)."""

    def __init__(self):
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.before = load_average()

    def line(self) -> str:
        return (f"Machine: {machine()} ({cpu_isa()}). Date: {self.started:%Y-%m-%d %H:%M} UTC. Load average (1, 5, 15 "
                f"min) {self.before} before, {load_average()} after.")  # fmt: skip


def load_average() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def interleaved(contenders: dict, repeats: int) -> dict:
    """Median seconds per contender, timed in rounds that run every contender once (``interleaved_times``)."""
    return {name: statistics.median(t) for name, t in interleaved_times(contenders, repeats).items()}


def interleaved_times(contenders: dict, repeats: int, *, warm_up: bool = True) -> dict:
    """Seconds of each round per contender, in rounds that run every contender once, after one warm-up call each
    (compilation, allocator) unless ``warm_up`` is False (the caller warmed them up).

    On a shared machine a slow spell then hits every contender of that round alike, instead of
    all the repeats of whichever contender happened to be running.
    """
    if warm_up:
        for fn in contenders.values():
            fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def record(path: pathlib.Path, section: str, text: str) -> None:
    """Replace (or add) the ``## <section>`` part of a markdown results file, leaving the other sections alone."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    head, sep, rest = old.partition(f"\n## {section}\n")
    tail = ""
    if sep:
        nxt = rest.find("\n## ")
        tail = rest[nxt:] if nxt >= 0 else ""
    path.write_text(f"{head.rstrip()}\n\n## {section}\n\n{text}\n{tail}")


# Environment that caps each CPU library at one instruction set, so that one AVX-512 machine can also time the AVX2
# code paths (emulated: same cores, caches and clocks, only the instructions are capped). "native" sets nothing.
ISA_ENV = {
    "native": {},
    "avx2": {
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",  # XLA's generated code and its dot/conv runtime
        "CT2_FORCE_CPU_ISA": "AVX2",  # CTranslate2's own kernels
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: CTranslate2's SGEMM, PyTorch's convolutions
        "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised ATen kernels
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL: PyTorch's SGEMM
    },
    "avx512": {
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX512",
        "CT2_FORCE_CPU_ISA": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "ATEN_CPU_CAPABILITY": "avx512",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
}


def isa_env(isa: str) -> dict[str, str]:
    """``os.environ`` with the ``ISA_ENV[isa]`` caps added (XLA_FLAGS appended to any already set)."""
    if isa not in ISA_ENV:
        raise ValueError(f"unknown ISA {isa!r}: choose one of {', '.join(ISA_ENV)}")
    env = dict(os.environ)
    for key, value in ISA_ENV[isa].items():
        env[key] = f"{env[key]} {value}" if key == "XLA_FLAGS" and env.get(key) else value
    return env


class Worker:
    """A contender living in its own Python subprocess (its own environment), timed one call at a time.

    The child runs ``argv``; it must print ``@@ready <info>`` once set up and warmed up, then answer each ``<name>``
    line read from stdin with ``@@<seconds>`` after running that contender once. Other output is kept in ``log``.
    """

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.info = self._reply("ready")

    def _reply(self, what: str) -> str:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return line[2:].strip().removeprefix(what).strip()
            self.log.append(line.rstrip())
        raise RuntimeError(f"benchmark worker exited while waiting for {what!r}:\n" + "\n".join(self.log[-30:]))

    def ask(self, name: str) -> str:
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._reply("")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def serve_timed(fn, info: str) -> None:
    """A ``Worker``'s side: ``fn`` warmed up, ``@@ready <info>``, then ``fn`` timed once per line read on stdin."""
    fn()  # warm-up
    print(f"@@ready {info}", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        fn()
        print(f"@@{time.perf_counter() - start}", flush=True)


def interleaved_workers(contenders: dict[str, tuple[Worker, str]], repeats: int) -> dict[str, float]:
    """``interleaved`` for contenders in ``Worker`` subprocesses: ``{label: (worker, name)}`` -> median seconds.

    Each round runs every contender once, one at a time (the others wait on stdin, idle).
    """
    times = {label: [] for label in contenders}
    for _ in range(repeats):
        for label, (worker, name) in contenders.items():
            times[label].append(float(worker.ask(name)))
    return {label: statistics.median(t) for label, t in times.items()}


def whisper_plan_inputs(dims, frames: dict, compute_dtype: str):
    """What ``engine.pipelines.stages.encode_plan.plan_encode`` takes for a Whisper plan without weights: the model's
    shape (``WhisperShape``), each utterance's 16 kHz samples from its encoder frames (``frames[lang]``, 50 a second),
    and (FLOP/s, what was timed) from one encoder block at the model's width timed here. Measured against
    whisper-base's own encoder, such a block ran 1.6x slower per FLOP on the 2-core AVX-512 machine (BUILD.md), so the
    estimate errs long."""
    from engine.models.whisper.cost import encoder_block, encoder_flops_per_window
    from engine.models.whisper.encoder import WhisperShape
    from engine.runtime.plan import timed

    samples = {lang: [int(n) * 320 for n in v] for lang, v in frames.items()}  # 320 samples an encoder frame
    t_block = timed(*encoder_block(dims, compute_dtype))
    rate = encoder_flops_per_window(dims)[1] / t_block, f"one encoder block on one window in {t_block * 1e3:.0f} ms"
    return WhisperShape(dims), samples, rate
