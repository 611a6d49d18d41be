"""``--plan`` for the mixing job: the utterances and words it will score, the encoder FLOPs of its passes, and their
time here from a calibrated call of its own kernel.

Reads the store's utterance tables and the words (no states, no audio), and picks the utterances as the run picks
them (``engine.pipelines.mixing.run.chosen``); the model is loaded and checked against the store with the run's own
refusals. Work, as the run does it:

- **the full pass**: each utterance's window once through every block (``EncoderCost.front + L x layer``, a padded
  family's full 30 s window);
- **the zeroed blocks**: per utterance and block, ``ceil(W / chunk)`` calls of ``chunk + 1`` rows (the unchanged
  block once per call, the last call padded), each row one block over the window (``EncoderCost.layer``).

Calibration, a few seconds: ``ValueZeroing.distances`` of the first chosen block on random states at the run's
shape (a window of the longest chosen utterance, ``--chunk`` words), after the call that compiles it; its FLOP rate
prices both stages, and its compile every block's program (one a block, and the full pass's one). A rerun reads the
languages done back; the plan prices a run from nothing.
"""

from __future__ import annotations

import math
import time

import numpy as np

from engine.pipelines.mixing.config import MixingConfig
from engine.pipelines.mixing.run import MixingSummary, checked, chosen
from engine.runtime.devices import Device
from engine.runtime.plan import Plan, Stage, once
from engine.stores.reader import open_store


def plan_mixing_run(config: MixingConfig, device: Device | None) -> Plan:
    """The plan of ``run_mixing(config)`` (module docstring)."""
    reader = open_store(config.store)
    started = time.perf_counter()
    langs, encoder, blocks = checked(config, reader)
    load_seconds = time.perf_counter() - started
    skips = MixingSummary()
    picked = {lang: chosen(config, reader, lang, skips) for lang in langs}
    per_utt = []  # (samples, words)
    for lang in langs:
        table = reader.utterances_table(lang).to_pydict()
        seconds = dict(zip(table["id"], table["duration_s"], strict=True))
        per_utt += [(int(round(float(seconds[u.id]) * 16000)), len(u.words)) for u in picked[lang]]
    n_words = sum(w for _, w in per_utt)
    calls = sum(math.ceil(w / config.chunk) for _, w in per_utt) * len(blocks)
    samples = min(max((s for s, _ in per_utt), default=encoder.window_samples), encoder.window_samples)
    cost = encoder.cost(samples)
    full = sum(encoder.cost(min(s, encoder.window_samples)).flops for s, _ in per_utt)
    zeroed = calls * (config.chunk + 1) * cost.layer
    # calibration: the kernel at the run's shape
    vz = encoder.value_zeroing
    x = np.random.default_rng(0).standard_normal((cost.frames, encoder.embed)).astype(np.float32)
    spans = np.stack([np.arange(config.chunk), np.arange(config.chunk)], 1) % cost.frames
    first = once(vz.distances, blocks[0], x, cost.frames, spans, config.chunk)
    call = once(vz.distances, blocks[0], x, cost.frames, spans, config.chunk)
    rate = (config.chunk + 1) * cost.layer / max(call, 1e-9)
    compile_seconds = max(first - call, 0.0)

    def on_device(work: float) -> float | None:
        return None if device is None else work / (device.flops("float32") * device.encoder_efficiency)

    stages = [
        Stage("load + compile", 0.0, 0.0, 0.0, load_seconds + (len(blocks) + 1) * compile_seconds, None),
        Stage("full pass", full, 0.0, 0.0, full / rate, on_device(full)),
        Stage("zeroed blocks", zeroed, 0.0, 0.0, zeroed / rate, on_device(zeroed)),
    ]
    counts = [
        ("languages", str(len(langs))),
        ("utterances", f"{len(per_utt)} ({skips.n_skipped} of those looked at skipped: fewer than two timed words)"),
        ("words", str(n_words)),
        ("blocks", ", ".join(map(str, blocks))),
        ("block calls", f"{calls} of {config.chunk + 1} rows x {cost.frames} frames"),
    ]
    return Plan(
        job="mixing",
        counts=counts,
        stages=stages,
        peak_memory=4.0 * (config.chunk + 1) * cost.frames * (4 * encoder.embed + cost.frames),
        memory_lines=[
            "a call holds its rows' states and feed-forward activations and one head's frame x frame scores per row"
        ],  # fmt: skip
        device=device,
        calibration=f"ValueZeroing.distances at block {blocks[0]}: {call * 1e3:.1f} ms a call "
        f"({rate / 1e9:.2f} GFLOP/s), compile {compile_seconds:.1f} s",
        assumptions=[
            "utterances over one window are skipped by the run (not priced)",
            "the words each utterance keeps are those timed inside its frames",
        ],  # fmt: skip
    )
