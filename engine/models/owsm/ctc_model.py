"""Flax (NNX) OWSM-CTC encoder (``espnet/owsm_ctc_v4_1B``): ESPnet's ``ESPnetS2TCTCModel.encode`` with its
``EBranchformerCTCEncoder``, self-conditioned interior CTC heads and the prompt encoder, returning every layer.

What OWSM-CTC adds to the v3.1/v4 encoder (``model``), as ESPnet 202611 computes it:

- **Prefix**: the language and task tokens (``<eng> <asr>``, ``<nolang> <st_deu>``) are looked up in the model's one
  token embedding (``embed``, ``prompt_width`` wide), projected (``embed_proj``) and put before the subsampled audio,
  so that ``PositionalEncoding`` scales them with the audio and gives them positions 0 and 1; the audio starts at 2.
- **Prompt**: the previous-text prompt (``<na>`` when there is none, as at inference) runs through the prompt encoder
  (``embed * sqrt(prompt_width)`` plus sinusoids; pre-norm transformer blocks with ReLU feed-forwards;
  ``after_norm``) and ``prompt_proj``; blocks in ``cross_attention`` end, before their ``norm_final``, with
  ``x += cross_attn(norm_cross_attn(x), prompt)``.
- **Interior CTC, self-conditioned**: after each block in ``interctc_layers`` the shared CTC head reads the block's
  output ``h`` (no ``after_norm``) and ``x = h + conditioning_layer(softmax(ctc_lo(h)))`` goes on to the next block.
  This runs at inference too: every later layer depends on it.

Layers (``OWSM_CTC_LAYERS``): 0 = subsampling + prefix + positions, 1..L = block outputs, each taken **before** its
conditioning (the state its interior head reads; the next block reads it plus the conditioning), L+1 = ``after_norm``
(the final CTC head's input). ``forward`` keeps the two prefix positions (ESPnet's best path reads them);
``__call__`` (the stores') drops them and encodes with one fixed prefix (``STORE_PREFIX``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from engine.models.common.attention import check_head_mask
from engine.models.common.layers import FeedForward, linear, param
from engine.models.owsm.config import OwsmConfig
from engine.models.owsm.model import Attention, EBranchformerBlock, OwsmEncoder, norm, sinusoids

# The prefix and prompt a store is encoded with: the model is not told the language (it was trained so half the
# time, and so predicts it), and transcribes; no previous text. What the audio alone gives, in every language alike.
STORE_PREFIX = ("<nolang>", "<asr>")
NO_PROMPT = "<na>"


class CtcBlock(EBranchformerBlock):
    """An E-Branchformer block, with cross-attention to the prompt before ``norm_final`` where configured."""

    def __init__(self, sd, prefix: str, config: OwsmConfig, dtype, cross: bool):
        super().__init__(sd, prefix, config, dtype)
        self.norm_cross = norm(sd, f"{prefix}.norm_cross_attn", dtype) if cross else None
        self.cross = Attention(sd, f"{prefix}.cross_attn", config.n_head, dtype) if cross else None

    def __call__(self, x, head_scale=None, memory=None):
        x = self.body(x, head_scale)
        if self.cross is not None:
            x = x + self.cross.cross(self.norm_cross(x), memory)
        return self.norm_final(x)


class PromptEncoder(nnx.Module):
    """``prompt_encoder`` (ESPnet's ``TransformerEncoder`` without an input layer) with the model's ``embed``,
    ``pos_enc``, ``embed_proj`` and ``prompt_proj``."""

    def __init__(self, sd, config: OwsmConfig, dtype):
        c = config.ctc
        self.width = c.prompt_width
        self.embed = param(sd["embed.weight"], dtype)
        self.embed_proj = linear(sd, "embed_proj", dtype)
        self.prompt_proj = linear(sd, "prompt_proj", dtype)
        p = "prompt_encoder"
        self.norm1 = nnx.List([norm(sd, f"{p}.encoders.{i}.norm1", dtype) for i in range(c.prompt_layers)])
        self.attn = nnx.List(
            [Attention(sd, f"{p}.encoders.{i}.self_attn", c.prompt_heads, dtype) for i in range(c.prompt_layers)]
        )
        self.norm2 = nnx.List([norm(sd, f"{p}.encoders.{i}.norm2", dtype) for i in range(c.prompt_layers)])
        self.ff = nnx.List(
            [FeedForward(sd, f"{p}.encoders.{i}.feed_forward", dtype, jax.nn.relu) for i in range(c.prompt_layers)]
        )
        self.after_norm = norm(sd, f"{p}.after_norm", dtype)

    def prefix(self, ids):
        """i32[batch, 2] language and task ids -> f[batch, 2, width]: ``embed_proj(embed(ids))`` (no scale)."""
        return self.embed_proj(self.embed[...][ids])

    def __call__(self, ids):
        """i32[batch, prompt] -> the cross-attention memory f[batch, prompt, width] (every prompt token valid)."""
        x = self.embed[...][ids] * math.sqrt(self.width)
        x = x + jnp.asarray(sinusoids(ids.shape[1], self.width)).astype(x.dtype)
        for norm1, attn, norm2, ff in zip(self.norm1, self.attn, self.norm2, self.ff, strict=True):
            x = x + attn(norm1(x))
            x = x + ff(norm2(x))
        return self.prompt_proj(self.after_norm(x))


class OwsmCtcEncoder(OwsmEncoder):
    """The OWSM-CTC encoder. ``store_prefix`` and ``store_prompt``: the ids ``__call__`` encodes with."""

    def __init__(self, config: OwsmConfig, state_dict: Mapping[str, np.ndarray], dtype=jnp.float32):
        super().__init__(config, state_dict, dtype)
        sd = state_dict
        self.prompts = PromptEncoder(sd, config, dtype)
        self.ctc_lo = linear(sd, "ctc.ctc_lo", dtype)
        self.conditioning = linear(sd, "encoder.conditioning_layer", dtype)
        self.store_prefix = nnx.Variable(jnp.asarray([config.token_id(t) for t in STORE_PREFIX], jnp.int32))
        self.store_prompt = nnx.Variable(jnp.asarray([config.token_id(NO_PROMPT)], jnp.int32))

    @staticmethod
    def block(sd, i: int, config: OwsmConfig, dtype):
        return CtcBlock(sd, f"encoder.encoders.{i}", config, dtype, i in config.ctc.cross_attention)

    def ctc_logits(self, x):
        """The shared CTC head: f[..., frame, width] -> f32[..., frame, vocab]."""
        return self.ctc_lo(x).astype(jnp.float32)

    def forward(self, features, prefix, prompt, out_dtype=None, head_mask=None):
        """features f32[batch, feature_frame, n_mels], prefix i32[batch, 2], prompt i32[batch, prompt] -> states
        f[L+2, batch, 2 + frame, width], the prefix's two positions first."""
        out_dtype = out_dtype or self.conv1.dtype
        if head_mask is not None:
            head_mask = check_head_mask(head_mask, self.config.n_layer, self.config.n_head, len(features))
        audio = self.subsample(self._checked(features))
        x = self.positioned(jnp.concatenate([self.prompts.prefix(prefix).astype(audio.dtype), audio], axis=1))
        memory = self.prompts(prompt).astype(x.dtype)
        kept = [x.astype(out_dtype)]
        for i, block in enumerate(self.blocks):
            x = block(x, None if head_mask is None else head_mask[..., i, :], memory)
            kept.append(x.astype(out_dtype))
            if i + 1 in self.config.ctc.interctc_layers:
                x = x + self.conditioning(jax.nn.softmax(self.ctc_logits(x), axis=-1).astype(x.dtype))
        kept.append(self.after_norm(x).astype(out_dtype))
        return jnp.stack(kept)

    def __call__(self, features, out_dtype=None, head_mask=None):
        """The stores' encoder (``OwsmEncoder``'s signature): ``forward`` with ``STORE_PREFIX`` and no prompt, the
        prefix positions dropped: f[L+2, batch, frame, width]."""
        rows = len(features)
        prefix = jnp.broadcast_to(self.store_prefix[...], (rows, 2))
        prompt = jnp.broadcast_to(self.store_prompt[...], (rows, 1))
        return self.forward(features, prefix, prompt, out_dtype, head_mask)[:, :, self.config.n_prefix :]


def ctc_shapes(config: OwsmConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor OWSM-CTC reads besides ``encoder_shapes``: cross-attention, the prompt encoder,
    the token embedding and its projections, the conditioning layer and the CTC head (ESPnet's names)."""
    c, w, v = config.ctc, config.width, config.n_vocab
    pw, pf = c.prompt_width, c.prompt_ffn_width
    shapes = {
        "embed.weight": (v, pw),
        "embed_proj.weight": (w, pw),
        "embed_proj.bias": (w,),
        "prompt_proj.weight": (w, pw),
        "prompt_proj.bias": (w,),
        "encoder.conditioning_layer.weight": (w, v),
        "encoder.conditioning_layer.bias": (w,),
        "ctc.ctc_lo.weight": (v, w),
        "ctc.ctc_lo.bias": (v,),
        "prompt_encoder.after_norm.weight": (pw,),
        "prompt_encoder.after_norm.bias": (pw,),
    }
    for i in c.cross_attention:
        p = f"encoder.encoders.{i}"
        shapes |= {f"{p}.norm_cross_attn.weight": (w,), f"{p}.norm_cross_attn.bias": (w,)}
        for n in ("q", "k", "v", "out"):
            shapes |= {f"{p}.cross_attn.linear_{n}.weight": (w, w), f"{p}.cross_attn.linear_{n}.bias": (w,)}
    for i in range(c.prompt_layers):
        p = f"prompt_encoder.encoders.{i}"
        for n in ("norm1", "norm2"):
            shapes |= {f"{p}.{n}.weight": (pw,), f"{p}.{n}.bias": (pw,)}
        for n in ("q", "k", "v", "out"):
            shapes |= {f"{p}.self_attn.linear_{n}.weight": (pw, pw), f"{p}.self_attn.linear_{n}.bias": (pw,)}
        shapes |= {f"{p}.feed_forward.w_1.weight": (pf, pw), f"{p}.feed_forward.w_1.bias": (pf,)}
        shapes |= {f"{p}.feed_forward.w_2.weight": (pw, pf), f"{p}.feed_forward.w_2.bias": (pw,)}
    return shapes
