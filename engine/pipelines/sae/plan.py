"""``--plan`` for the sae job: per layer the steps it trains, the frames they read, and their time here from a
calibrated step, the evaluation's pass over every frame, and with ``--model`` the early exit.

Reads the store's lengths and utterance tables (no states). Calibration, a few seconds, each timed after a first call
that compiles it: ``kernels.sae.train_step`` at the run's sizes (d_in, d_sae, k, kind) on a batch of at most
``CALIBRATION_BATCH`` random frames, scaled to ``--batch_size`` by its frames; the evaluation's per-frame SAE
(``evaluate.apply``) on one chunk. The early exit (``--model``) is the decode job's plan (``plan_decode_run``: the
encoder recomputed from the audio, the decoder's steps) of the layers, scaled to the utterances the sae job decodes,
its decoder twice (the layer as stored and as reconstructed). A rerun reads back what is done; the plan prices a run
from nothing.

FLOPs: a step is six matrix products of ``B x d_in x d_sae`` (encoder and decoder, forward and both gradients), the
evaluation two per frame.
"""

from __future__ import annotations

import dataclasses
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from engine.listing import chosen
from engine.pipelines.sae import evaluate
from engine.pipelines.sae.config import DEFAULT_BUDGET, DEFAULT_EPOCHS, MIN_STEPS, SaeConfig, SaeError, total_steps
from engine.pipelines.sae.exit import exit_utterances
from engine.pipelines.stages.decode_plan import plan_decode_run
from engine.pipelines.stages.errors import DecodeError
from engine.runtime.devices import Device
from engine.runtime.plan import EFFICIENCY, Plan, Stage, duration, timed
from engine.stores.reader import open_store
from kernels import sae

CALIBRATION_BATCH = 1024  # frames of the calibrated step: a step's time is about linear in its frames
EVAL_MEASURES_SECONDS = 10.0  # R@1 and LID, stored and reconstructed, a layer: assumed, not calibrated


def plan_sae_run(config: SaeConfig, device: Device | None) -> Plan:
    """The plan of ``run_sae(config)`` (module docstring)."""
    reader = open_store(config.store)
    langs = chosen("language", config.langs, reader.languages, SaeError, "the store")
    layers = chosen("layer", config.layers, reader.info.layers, SaeError, "the store")
    if len(langs) < 2:
        raise SaeError(f"the language measures need two or more languages; the run has {langs}")
    lengths = {lang: np.asarray(reader.lengths(lang)) for lang in langs}
    frames = int(sum(v[v > 0].sum() for v in lengths.values()))
    utterances = int(sum((v > 0).sum() for v in lengths.values()))
    per_epoch = frames // config.batch_size
    if per_epoch == 0:
        raise SaeError(
            f"the store's {frames} frames of {langs} do not fill one batch of --batch_size {config.batch_size}: "
            f"give --batch_size of at most {frames}, or more utterances"
        )
    steps = total_steps(config, per_epoch)
    if config.steps is not None:
        how = "--steps"
    elif config.epochs is not None:
        how = f"--epochs {config.epochs} x {per_epoch} batches"
    elif steps > DEFAULT_EPOCHS * per_epoch:
        how = f"the default's floor: {DEFAULT_EPOCHS} epochs would be {DEFAULT_EPOCHS * per_epoch}"
    else:
        how = f"the default: {DEFAULT_EPOCHS} epochs, above the floor of {MIN_STEPS}"
    d_in = reader.info.embed
    d_sae = config.expansion * d_in
    spec = sae.Spec(d_in, d_sae, min(config.k, d_sae), config.kind, config.auxk_alpha, config.dead_tokens or frames)

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    batch = min(config.batch_size, CALIBRATION_BATCH)
    tx = sae.optimizer(2e-4, 0)
    state = sae.new_state(sae.init_params(spec, jax.random.key(0)), tx, spec)
    x = jnp.asarray(rng.standard_normal((batch, d_in)).astype(np.float32))
    step_seconds = timed(lambda s, b: sae.train_step(s, b, spec, tx), state, x) * config.batch_size / batch
    params = {name: np.asarray(v) for name, v in state.params.items()}
    chunk = jnp.asarray(rng.standard_normal((evaluate.CHUNK, d_in)).astype(np.float32))
    chunk_seconds = timed(lambda c: evaluate._apply(params, c, 1.0, spec.k), chunk)
    calibration = (
        f"{jax.devices()[0].platform}: a training step of {batch} frames (d_in {d_in}, d_sae {d_sae}, k {spec.k}) in "
        f"{duration(step_seconds * batch / config.batch_size)}, the evaluation's SAE on {evaluate.CHUNK} frames in "
        f"{duration(chunk_seconds)} (calibration took {time.perf_counter() - started:.1f} s)"
    )

    item = np.dtype(reader.info.dtype if reader.info.dtype != "bfloat16" else "float16").itemsize
    n = len(layers)
    step_flops = 12.0 * config.batch_size * d_in * d_sae
    weights = 4.0 * (2 * d_in * d_sae + d_sae + d_in)
    train_flops = step_flops * steps * n
    eval_flops = 4.0 * frames * d_in * d_sae * n
    chunks = -(-frames // evaluate.CHUNK)

    def on_device(flops: float, read: float) -> float | None:
        if device is None:
            return None
        return max(flops / (device.flops("float32") * EFFICIENCY), read / device.bandwidth)

    stages = [
        Stage("train", train_flops, steps * config.batch_size * d_in * item * n, weights * 4 * n,
              step_seconds * steps * n, on_device(train_flops, 0.0)),
        Stage("evaluate", eval_flops, frames * d_in * item * n, 0.0, (chunk_seconds * chunks +
              EVAL_MEASURES_SECONDS) * n, on_device(eval_flops, 0.0)),
    ]  # fmt: skip
    counts = [
        ("store", config.store),
        ("layers", f"{n} ({', '.join(str(layer) for layer in layers)})"),
        ("frames", f"{frames:,} a layer ({utterances} utterances in {len(langs)} languages)"),
        ("steps", f"{steps:,} a layer ({how}); {steps / per_epoch:.1f} passes over the frames, "
                  f"{steps * config.batch_size:,} frames read"),
        ("SAE", f"d_in {d_in}, d_sae {d_sae} (--expansion {config.expansion}), k {spec.k}, {config.kind}, "
                f"batches of {config.batch_size}"),
    ]  # fmt: skip
    assumptions = [
        "a step's time is linear in its frames (calibrated on at most "
        f"{CALIBRATION_BATCH}); reading the store, 4% of a step (bench/sae.py), is not timed",
        f"R@1 and LID on stored and reconstructed states take {EVAL_MEASURES_SECONDS:.0f} s a layer (assumed, not "
        "calibrated)",
    ]
    if device is not None:
        assumptions.append("on the device, the steps' FLOPs alone: each step's dispatch and the batch's copy from "
                           "the host are not counted, and bound small steps (errs short)")  # fmt: skip
    if config.model is not None:
        stages += _early_exit(config, reader, layers, langs, device, counts, assumptions)
    else:
        counts.append(("early exit", "not scored (--model)"))
    budget = config.run.memory_budget or DEFAULT_BUDGET
    state_bytes = 4 * 4 * (2 * d_in * d_sae + d_sae + d_in)
    batch_bytes = 4 * config.batch_size * (3 * d_sae + 4 * d_in)
    return Plan(
        job="sae",
        counts=counts,
        stages=stages,
        peak_memory=float(state_bytes + batch_bytes),
        memory_lines=[
            f"the training state (parameters, gradients, Adam's moments) and one batch's activations; the shuffling "
            f"buffer, at most {budget if isinstance(budget, str) else f'{budget / 2**30:.0f} GiB'} of host memory "
            "(--memory_budget), is apart"
        ],
        device=device,
        calibration=calibration,
        assumptions=assumptions,
    )


def _early_exit(config: SaeConfig, reader, layers, langs, device, counts, assumptions) -> list[Stage]:
    """The early exit's stages: the decode job's plan of the layers (``--ln_post on``), scaled to the utterances
    decoded, its decoder run twice."""
    picked = sum(len(exit_utterances(reader, lang, config.decode_utterances)) for lang in langs)
    done = sum(int((np.asarray(reader.lengths(lang)) > 0).sum()) for lang in langs)
    # What the decode job's plan reads of a DecodeConfig: greedy transcription, as the early exit decodes
    decode = types.SimpleNamespace(store=config.store, langs=tuple(langs), layers=tuple(layers), ln_post="on",
                                   tasks=("transcribe",), decodings=("greedy",), batch_size=config.decode_batch,
                                   max_new_tokens=config.max_new_tokens, compute_dtype="float32")  # fmt: skip
    try:
        plan = plan_decode_run(decode, device)
    except DecodeError as e:
        assumptions.append(f"the early exit is not priced: {e}")
        return []
    share = picked / max(done, 1)
    counts.append(("early exit", f"{picked} utterances a layer ({config.decode_utterances} a language at most), "
                                 "decoded as stored and as reconstructed"))  # fmt: skip
    stages = []
    for stage in plan.stages:
        times = share * (2 if stage.name == "decoder" else 1)
        device_s = None if stage.seconds_device is None else stage.seconds_device * times
        stages.append(dataclasses.replace(stage, name=f"early exit: {stage.name.split(' ')[0]}",
                                          flops=stage.flops * times, bytes_read=stage.bytes_read * times,
                                          bytes_written=0.0, seconds_here=stage.seconds_here * times,
                                          seconds_device=device_s))  # fmt: skip
    assumptions.append(f"the early exit as the decode job's plan prices it ({plan.calibration})")
    return stages
