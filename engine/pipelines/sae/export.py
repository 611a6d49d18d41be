"""The SAEs as files analysts load without babelgrid: sae-lens's names, safetensors, the input scale folded in.

``OUT/layer-<L>/sae_weights.safetensors`` holds ``W_enc f32[d_in, d_sae]``, ``b_enc f32[d_sae]``, ``W_dec f32[d_sae,
d_in]``, ``b_dec f32[d_in]``, and ``OUT/layer-<L>/cfg.json`` what they are. They apply to the stored states as they
are::

    z = TopK_k(ReLU((x - b_dec) @ W_enc + b_enc))        x_hat = z @ W_dec + b_dec

Training saw ``s x`` (``train``'s scale); with ``W_enc = s W_enc'``, ``b_dec = b_dec' / s``, ``W_dec = W_dec' / s``
(primes: as trained) the formula gives the trained ``z`` and ``x_hat / s``. The decoder rows therefore have norm
``1 / s``, not 1; ``cfg.json`` records ``s`` as ``folded_scale``.

AudioSAE (its released checkpoints) stores the same four tensors as a PyTorch state dict with the encoder and decoder
as ``nn.Linear`` layers (``encoder.weight [d_sae, d_in]``, ``decoder.weight [d_in, d_sae]``): transpose both to move
between the two. ``open_sae`` reads a folder back, checking what it reads.

``cfg.json`` follows SAELens 6's layout, so that ``sae_lens.SAE.load_from_disk(folder)`` opens the folder as it is
(tested with sae-lens 6.54.12, ``tests/jobs/test_sae_saelens.py``): ``architecture`` is the inference rule above,
SAELens's ``topk``, for both training kinds (SAELens registers ``batchtopk`` for training only, and loading a
``batchtopk`` folder fails); the kind trained is ``training_architecture``. SAELens reads the top-level fields of its
``TopKSAEConfig`` and ``metadata`` (``sae_lens_version``, a 6.x release, tells it the layout is not pre-6.0's), and
ignores babelgrid's own fields beside them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from engine.errors import DamageError
from kernels import sae as sae_kernel

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
# The SAELens release whose cfg.json layout the export follows (its ``SAEConfig.to_dict``), written as the metadata's
# ``sae_lens_version``: a folder without one is read as pre-6.0 and its fields renamed.
SAELENS_LAYOUT = "6.54.12"


def folded(params: dict, scale: float) -> dict[str, np.ndarray]:
    return {
        "W_enc": np.asarray(params["W_enc"], np.float32) * np.float32(scale),
        "b_enc": np.asarray(params["b_enc"], np.float32),
        "W_dec": np.asarray(params["W_dec"], np.float32) / np.float32(scale),
        "b_dec": np.asarray(params["b_dec"], np.float32) / np.float32(scale),
    }


def weights_bytes(params: dict, scale: float) -> bytes:
    from safetensors.numpy import save

    return save(folded(params, scale), metadata={"format": "babelgrid-sae"})


def config_of(trained, store_info, store_url: str, config) -> dict:
    spec = trained.spec
    # SAELens's TopKSAEConfig fields first. "topk" whatever the kind trained: the exported weights apply per frame
    # (module docstring), which is what the job's own numbers measure and what SAELens's TopK computes.
    return {
        "architecture": "topk", "d_in": spec.d_in, "d_sae": spec.d_sae, "k": spec.k, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": SAELENS_LAYOUT, "sae_lens_training_version": None,
                     "model_name": store_info.model_name, "hook_name": f"layer {trained.layer}"},
        "training_architecture": spec.kind, "folded_scale": trained.scale, "layer": trained.layer,
        "layer_meaning": store_info.layer_meaning, "family": store_info.family, "model_name": store_info.model_name,
        "checkpoint_sha256": store_info.checkpoint_sha256, "store": store_url, "expansion": config.expansion,
        "epochs": trained.epochs, "steps": trained.steps, "batch_size": config.batch_size, "lr": trained.lr,
        "auxk_alpha": spec.auxk_alpha, "dead_tokens": spec.dead_tokens, "seed": config.seed,
    }  # fmt: skip


def open_sae(folder) -> tuple[dict[str, np.ndarray], dict]:
    """(weights, cfg) of one ``OUT/layer-<L>`` folder; a missing or truncated file, or weights whose shapes are not
    the config's, is a DamageError naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    folder = pathlib.Path(folder)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
        weights = load_file(folder / WEIGHTS)
    except (OSError, ValueError, SafetensorError) as e:
        raise DamageError(f"SAE folder {str(folder)!r} cannot be read ({type(e).__name__}: {e}); rerun the sae "
                          "job on its layer") from None  # fmt: skip
    shapes = {"W_enc": (cfg["d_in"], cfg["d_sae"]), "b_enc": (cfg["d_sae"],), "W_dec": (cfg["d_sae"], cfg["d_in"]),
              "b_dec": (cfg["d_in"],)}  # fmt: skip
    wrong = {n: list(weights[n].shape) if n in weights else None for n, s in shapes.items()
             if n not in weights or weights[n].shape != s}  # fmt: skip
    if wrong:
        raise DamageError(f"SAE folder {str(folder)!r}: tensors {wrong} are not the shapes cfg.json gives")
    return weights, cfg


def encode(weights: dict, cfg: dict, x: np.ndarray) -> np.ndarray:
    """The exported formula in NumPy (a reader's check): ``z`` for stored states ``x f32[n, d_in]``."""
    return sae_kernel.reference_encode(weights, x, cfg["k"], "topk")
