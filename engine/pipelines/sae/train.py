"""Training one layer's sparse autoencoder (``kernels.sae``) on frames streamed from the store (``data.Frames``).

- Input scale: the frames are multiplied by ``scale = sqrt(d_in / mean |x|^2)`` (the first batch's mean), so that
  the learning rate means the same at every layer and model; the exported weights fold it back in (``export``).
- Initialisation (seeded by ``(seed, layer)``): decoder rows random and unit norm, the encoder their transpose,
  ``b_dec`` the geometric median of the first batch (dictionary-learning's).
- Steps: ``--steps``, or ``--epochs`` x the epoch's batches (``config.total_steps``), the epochs' data orders one
  after the other (a count that ends inside an epoch stops there); each batch split over every device along the
  batch (``NamedSharding``; the parameters replicated), the learning rate warmed up over ``min(warmup, steps // 10)``
  steps.
- Checkpoints: orbax, every ``checkpoint_every`` steps and at the end, under ``OUT/layer-<L>/checkpoints``
  (``engine.pipelines.stages.checkpoints``: sha256 manifests, written aside and renamed). A killed run restores the
  newest good one and replays the data order to its step: the weights it ends with are the uninterrupted run's,
  bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from engine.faults import fault_point
from engine.pipelines.sae.config import SaeConfig, SaeError, total_steps
from engine.pipelines.sae.data import Frames
from engine.pipelines.stages import checkpoints
from kernels import sae

log = logging.getLogger(__name__)
DEAD_TOKENS_MAX = 10_000_000  # Gao et al.'s: a feature that has not fired in 10M tokens is dead
# An SAE is named undertrained in the summary when its loss over the last tenth of its steps is more than FALLING
# below the tenth before (``loss_drop``), or its FVU is above POOR_FVU (docs/sae.md "How long it trains"). From the
# curve in bench/RESULTS.md (demo store, layer 4): the drop was 4.9%, 4.1%, 3.7% and 2.8% after 250, 500, 1,000 and
# 2,000 steps (a loss falling as a power law keeps its drop: 3% means twice the steps would cut it by about 17%),
# and FVU crossed 0.5 between 250 and 500 steps (0.69 after 60).
FALLING = 0.03
POOR_FVU = 0.5


@dataclasses.dataclass(frozen=True)
class Trained:
    layer: int
    spec: sae.Spec
    params: dict  # NumPy, in the scaled space
    scale: float
    steps: int
    epochs: float  # passes over the layer's frames the steps make
    lr: float
    losses: np.ndarray  # f32[steps]: each step's loss, kept across a kill (the checkpoints hold it)
    last: dict  # the last step's metrics


def learning_rate(config: SaeConfig, d_sae: int) -> float:
    return config.lr if config.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)


def _mesh_put(x: np.ndarray):
    devices = jax.devices()
    if len(devices) == 1 or len(x) % len(devices):
        return jnp.asarray(x)
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))


def _batches(frames: Frames, batch: int, total: int, start: int):
    """(step, batch) of steps ``start`` to ``total``, epoch after epoch, the skipped ones read and dropped: the same
    order as an uninterrupted run."""
    if start >= total:
        return
    step = 0
    for epoch in itertools.count():
        for x in frames.epoch(epoch, batch):
            if step >= start:
                yield step, x
            step += 1
            if step == total:  # before the next batch: its epoch's first reads would be for nothing
                return


def train_layer(config: SaeConfig, frames: Frames, root: pathlib.Path, bar=None) -> Trained:
    """Trains (or resumes, or reads back) the SAE of ``frames.layer``; returns it with its scale."""
    per_epoch = frames.steps_per_epoch(config.batch_size)
    if per_epoch == 0:
        raise SaeError(f"layer {frames.layer}: {frames.total} frames do not fill one batch of {config.batch_size}")
    total = total_steps(config, per_epoch)
    first = next(frames.epoch(0, config.batch_size))
    d_in = first.shape[1]
    scale = float(np.sqrt(d_in / np.mean(np.sum(first.astype(np.float64) ** 2, axis=1))))
    dead = config.dead_tokens or min(DEAD_TOKENS_MAX, frames.total)
    spec = sae.Spec(d_in, config.expansion * d_in, min(config.k, config.expansion * d_in), config.kind,
                    config.auxk_alpha, dead)  # fmt: skip
    lr = learning_rate(config, spec.d_sae)
    tx = sae.optimizer(lr, min(config.warmup, total // 10))
    params = sae.init_params(spec, jax.random.key(np.uint32(config.seed * 1009 + frames.layer)))
    params["b_dec"] = jnp.asarray(sae.geometric_median(first * scale))
    state = sae.new_state(params, tx, spec)
    losses = np.full(total, np.nan, np.float32)  # each step's loss, kept in the checkpoints with the state
    template = {"params": state.params, "opt": state.opt, "since": state.since_fired, "step": state.step,
                "losses": losses}  # fmt: skip
    start, restored = checkpoints.restore(root, template)
    if restored is not None:
        state = sae.State(restored["params"], restored["opt"], restored["since"], restored["step"])
        losses = np.array(restored["losses"], np.float32)  # the history before the kill: the curve and final loss
        log.info("layer %d: resumed at step %d of %d", frames.layer, start, total)
    last = {}
    if bar is not None:
        bar.update(start)
    for step, x in _batches(frames, config.batch_size, total, start):
        state, metrics = sae.train_step(state, _mesh_put(x * np.float32(scale)), spec, tx)
        last = {k: float(v) for k, v in metrics.items()}
        losses[step] = last["loss"]
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total:
            _save(root, step + 1, state, losses)
            fault_point("after_checkpoint")  # test-only (engine.faults): a kill between checkpoints
        if bar is not None:
            bar.set_postfix(layer=frames.layer, loss=f"{last['loss']:.3g}", l0=f"{last['l0']:.0f}",
                            dead=f"{last['dead']:.2f}")  # fmt: skip
            bar.update(1)
    params = {name: np.asarray(value) for name, value in state.params.items()}
    return Trained(frames.layer, spec, params, scale, total, total / per_epoch, lr, losses, last)


def loss_drop(losses: np.ndarray) -> float:
    """How much lower the mean loss over the last tenth of the steps is than over the tenth before, as a share of
    the latter (a tenth is at least one step; 0 for a run of fewer than 2 steps)."""
    losses = np.asarray(losses, np.float64)
    n = max(1, len(losses) // 10)
    if len(losses) < 2 * n:
        return 0.0
    last, before = np.nanmean(losses[-n:]), np.nanmean(losses[-2 * n : -n])
    return float((before - last) / before) if before > 0 else 0.0


def _save(root: pathlib.Path, step: int, state: sae.State, losses: np.ndarray) -> None:
    checkpoints.save(root, step, {"params": state.params, "opt": state.opt, "since": state.since_fired,
                                  "step": state.step, "losses": losses})  # fmt: skip
