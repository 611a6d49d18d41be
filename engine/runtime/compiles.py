"""How much of a process's work went to preparing kernels rather than running them: JAX's own compile events.

Each new shape of a jitted kernel is traced, lowered to MLIR and compiled (or loaded from the persistent compilation
cache) before its first call. A process meets every shape of the units it claims, so this cost is paid per process
and does not shrink as processes are added; where units are small (a grid of short, few utterances) it can be most of
a process's busy time. ``CompileClock`` adds up JAX's duration events while it is open (``jax.monitoring``), so that a
summary can say so. On CPU the persistent cache keys an executable by its device, so process i of a multi-process
run loads or compiles its own copy of each shape it meets.
"""

from __future__ import annotations

import logging
import os
import threading

import jax
from jax import monitoring

from engine.runtime.options import ConfigError

log = logging.getLogger(__name__)

TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"  # XLA's compile, or the persistent cache's read
CACHE_HIT = "/jax/compilation_cache/cache_hits"


class CompileClock:
    """Seconds spent tracing, lowering and compiling (or loading) kernels while open, and how many were compiled
    or loaded (``compiles``) and how many of those came from the persistent cache (``cache_hits``)."""

    def __init__(self):
        self.seconds = 0.0
        self.compiles = 0
        self.cache_hits = 0
        self._lock = threading.Lock()

    def _duration(self, event: str, seconds: float, **_) -> None:
        if event in (TRACE, LOWER, COMPILE):
            with self._lock:
                self.seconds += seconds
                self.compiles += event == COMPILE

    def _event(self, event: str, **_) -> None:
        if event == CACHE_HIT:
            with self._lock:
                self.cache_hits += 1

    def __enter__(self) -> CompileClock:
        monitoring.register_event_duration_secs_listener(self._duration)
        monitoring.register_event_listener(self._event)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self._duration)
        monitoring.unregister_event_listener(self._event)


def use_cache(folder: str) -> None:
    """Points JAX's persistent compilation cache at ``folder`` (``--compile_cache``), every kernel cached however
    quickly it compiled: several workers given the same shared folder compile each kernel once between them.

    JAX keys an entry by the kernel, the compile options and the backend: on GPU and TPU by the device kind (workers on
    one kind of card share entries), on CPU by the device as well (workers on one machine type share them; the
    processes of one ``jax.distributed`` run do not, each being another device). A run's summary says how many of
    its kernels came from the cache."""
    path = os.path.abspath(os.path.expanduser(folder)) if "://" not in folder else folder
    if "://" not in path:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:  # a file of that name, a file where a parent folder should be, no permission
            what = "a file" if os.path.isfile(path) else "not a folder babelgrid can make"
            raise ConfigError(f"--compile_cache {folder!r} is {what} ({e.strerror}): give a folder") from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    entries = len(os.listdir(path)) if "://" not in path else None
    log.info("compilation cache %s%s", path, "" if entries is None else f": {entries} entries already there")
