"""Profile: where the OWSM v3.1 encoder's time goes, one jitted part at a time, on CPU.

Prints one Markdown table: each part of the conv2d subsampling and of one E-Branchformer block, jitted alone and
timed on the same input, median of ``--repeats`` interleaved rounds; then the whole encoder with XLA's convolutions
(what babelgrid ran before: ``lax.conv_general_dilated`` for the subsampling and a grouped one for the depthwise
convolutions) against babelgrid's own (``model.subsampling_conv``, ``model.depthwise_conv``), interleaved.

Usage:  python bench/owsm_profile.py [--batch 4] [--layers 9] [--repeats 3]

Random weights at OWSM v3.1 base widths (768, 12 heads, 3072-wide feed-forwards and cgMLP, kernels 31), float32, 30 s
windows (3001 feature frames, 749 encoder frames); speed does not depend on the values. No ESPnet needed.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import interleaved, machine  # noqa: E402


def xla_depthwise_conv(x, kernel, bias):
    """What ``model.depthwise_conv`` was: XLA's grouped convolution (one group per channel)."""
    import jax

    taps, _, width = kernel.shape
    pad = (taps - 1) // 2
    dims = ("NWC", "WIO", "NWC")
    y = jax.lax.conv_general_dilated(x, kernel[...], (1,), ((pad, taps - 1 - pad),), dimension_numbers=dims,
                                     feature_group_count=width)  # fmt: skip
    return y + bias[...]


def build(args):
    import jax.numpy as jnp

    from engine.models.owsm.config import FrontendConfig, OwsmConfig
    from engine.models.owsm.model import OwsmEncoder, encoder_shapes

    frontend = FrontendConfig(512, 400, 160, 80, 0.0, 8000.0, False, 30.0)
    config = OwsmConfig(frontend, 768, args.layers, 12, 3072, 3072, 31, 31, 1, 12, 3072, ("<blank>",))
    rng = np.random.default_rng(0)
    sd = {k: (rng.standard_normal(s) * 0.02).astype(np.float32) for k, s in encoder_shapes(config).items()}
    features = jnp.asarray(rng.standard_normal((args.batch, frontend.n_frames, 80)), jnp.float32)
    return OwsmEncoder(config, sd), features


def jitted(module, fn):
    """``fn(module, x)`` jitted with the module's weights as an argument (not baked-in constants), blocking."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(module)
    step = jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs))
    return lambda *xs: jax.block_until_ready(step(state, *xs))


def parts(encoder, features):
    """Name -> zero-argument timed call, in the order of the encoder."""
    import jax
    import jax.numpy as jnp

    from engine.models.owsm import model

    block, cg, width = encoder.blocks[0], encoder.blocks[0].cgmlp, encoder.config.width
    x = jnp.ones((len(features), encoder.config.n_frames, width), jnp.float32)
    g = jnp.ones((*x.shape[:2], encoder.config.cgmlp_width // 2), jnp.float32)
    both = jnp.ones((*x.shape[:2], 2 * width), jnp.float32)

    shifted = model.depthwise_conv

    def conv1(m, f):
        return model._conv_stride2(f[..., None], m.conv1[...])

    def xla_convs(m, f):
        return model._subsample_convs(f, m.conv1[...], m.conv1_bias[...], m.conv2[...])

    def matmuls(m, f):
        return model._subsample_matmuls(f, m.conv1[...], m.conv1_bias[...], m.conv2[...])

    grouped = xla_depthwise_conv

    def cgmlp_but_conv(b, y):
        r, _ = jnp.split(jax.nn.gelu(cg.proj1(b.norm_mlp(y)), approximate=False), 2, axis=-1)
        return cg.proj2(r * cg.gate_norm(g))

    table = [
        ("subsampling: conv1 (1 -> 768 ch), XLA conv", encoder, conv1, features),
        ("subsampling: conv1 + conv2 (768 ch), XLA convs", encoder, xla_convs, features),
        ("subsampling: conv1 + conv2, 3 matmuls", encoder, matmuls, features),
        ("subsampling whole (convs, projection, positions)", encoder, lambda m, f: m.embed(f), features),
        ("block: macaron feed-forward (norm, 768-3072-768)", block, lambda b, y: b.ff_macaron(b.norm_ff_macaron(y)), x),
        ("block: self-attention (norm, qkv, softmax, out)", block, lambda b, y: b.attn(b.norm_mha(y)), x),
        ("block: cgMLP but its depthwise conv", block, cgmlp_but_conv, x),
        ("block: cgMLP depthwise conv, XLA grouped", block, lambda b, y: grouped(y, cg.conv, cg.conv_bias), g),
        ("block: cgMLP depthwise conv, shifted sums", block, lambda b, y: shifted(y, cg.conv, cg.conv_bias), g),
        ("block: merge depthwise conv, XLA grouped", block, lambda b, y: grouped(y, b.merge_conv, b.merge_bias), both),
        ("block: merge depthwise conv, shifted sums", block, lambda b, y: shifted(y, b.merge_conv, b.merge_bias), both),
        ("block: merge projection (1536 -> 768)", block, lambda b, y: b.merge_proj(y), both),
        ("block: feed-forward (norm, 768-3072-768, swish)", block, lambda b, y: b.ff(b.norm_ff(y)), x),
        ("block: whole (babelgrid)", block, lambda b, y: b(y), x),
    ]  # fmt: skip
    return {name: functools.partial(jitted(m, fn), arg) for name, m, fn, arg in table}


def whole(encoder, features):
    """The whole encoder (layers 0..L+1) with XLA's convolutions, and with babelgrid's."""
    from engine.models.owsm import model

    ours = jitted(encoder, lambda m, f: m(f))
    mine = (model.depthwise_conv, model.subsample_convs)

    def xla_encoder(m, f):
        model.depthwise_conv, model.subsample_convs = xla_depthwise_conv, model._subsample_convs
        try:
            return m(f)
        finally:
            model.depthwise_conv, model.subsample_convs = mine

    before = jitted(encoder, xla_encoder)
    return {
        "encoder, XLA convolutions (before)": lambda: before(features),
        "encoder, babelgrid": lambda: ours(features),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=9, help="E-Branchformer blocks of the whole-encoder rows")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    encoder, features = build(args)
    load_before = os.getloadavg()
    times = interleaved(parts(encoder, features), args.repeats)
    encoders = interleaved(whole(encoder, features), args.repeats)
    load_after = os.getloadavg()
    ratio = encoders["encoder, XLA convolutions (before)"] / encoders["encoder, babelgrid"]
    print(
        "\n".join(
            [
                f"machine: {machine()}",
                f"command: python bench/owsm_profile.py --batch {args.batch} --layers {args.layers} "
                f"--repeats {args.repeats}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after",
                f"batch of {args.batch} 30 s windows, fp32, base widths; median of {args.repeats} interleaved rounds",
                "",
                "| part (jitted alone) | ms |",
                "| --- | ---: |",
                *(f"| {name} | {1e3 * s:.0f} |" for name, s in times.items()),
                *(f"| {name}, {args.layers} blocks | {1e3 * s:.0f} |" for name, s in encoders.items()),
                "",
                f"- whole encoder: babelgrid's convolutions **{ratio:.2f}x** as fast as XLA's",
            ]
        )
    )


if __name__ == "__main__":
    main()
