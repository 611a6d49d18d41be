"""How much of a process's work went to preparing kernels rather than running them: JAX's own compile events.

Each new shape of a jitted kernel is traced, lowered to MLIR and compiled (or loaded from the persistent compilation
cache) before its first call. A process meets every shape of the units it claims, so this cost is paid per process
and does not shrink as processes are added; where units are small (a grid of short, few utterances) it can be most of
a process's busy time. ``CompileClock`` adds up JAX's duration events while it is open (``jax.monitoring``), so that a
summary can say so. On CPU the persistent cache keys an executable by its device, so process i of a multi-process
run loads or compiles its own copy of each shape it meets.
"""

from __future__ import annotations

import threading

from jax import monitoring

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
