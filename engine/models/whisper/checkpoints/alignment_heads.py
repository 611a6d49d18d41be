"""OpenAI's alignment heads: the cross-attention heads whose weights follow the audio/text alignment."""

from __future__ import annotations

import base64
import gzip

import numpy as np

from engine.models.whisper.dims import PRESETS, ModelDimensions

# From openai/whisper whisper/__init__.py (MIT License, Copyright (c) 2022 OpenAI): base85-encoded,
# gzipped bool arrays [n_text_layer, n_text_head] marking the cross-attention heads that follow the
# audio/text alignment.
_ALIGNMENT_HEADS = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "tiny": b"ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO",
    "base.en": b"ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00",
    "base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",
    "small.en": b"ABzY8>?_)10{>%RpeA61k&I|OI3I$65C{;;pbCHh0B{qLQ;+}v00",
    "small": b"ABzY8DmU6=0{>%Rpa?J`kvJ6qF(V^F86#Xh7JUGMK}P<N0000",
    "medium.en": b"ABzY8usPae0{>%R7<zz_OvQ{)4kMa0BMw6u5rT}kRKX;$NfYBv00*Hl@qhsU00",
    "medium": b"ABzY8B0Jh+0{>%R7}kK1fFL7w6%<-Pf*t^=N)Qr&0RR9",
    "large-v1": b"ABzY8r9j$a0{>%R7#4sLmoOs{s)o3~84-RPdcFk!JR<kSfC2yj",
    "large-v2": b"ABzY8zd+h!0{>%R7=D0pU<_bnWW*tkYAhobTNnu$jnkEkXqp)j;w1Tzk)UH3X%SZd&fFZ2fC2yj",
    "large-v3": b"ABzY8gWO1E0{>%R7(9S+Kn!D~%ngiGaR?*L!iJG9p-nab0JQ=-{D1-g00",
    "large-v3-turbo": b"ABzY8j^C+e0{>%RARaKHP%t(lGR*)0g!tONPyhe`",
}


def openai_alignment_heads(size: str) -> np.ndarray:
    """i32[n, 2] (decoder layer, head): OpenAI's alignment heads for a size like ``"base"`` or ``"large-v2"``."""
    size = {"large": "large-v3", "turbo": "large-v3-turbo"}.get(size, size)
    if size not in _ALIGNMENT_HEADS:
        raise ValueError(f"OpenAI publishes no alignment heads for {size!r}; known: {', '.join(_ALIGNMENT_HEADS)}")
    dims = PRESETS[size]
    mask = np.frombuffer(gzip.decompress(base64.b85decode(_ALIGNMENT_HEADS[size])), dtype=bool)
    return np.argwhere(mask.reshape(dims.n_text_layer, dims.n_text_head)).astype(np.int32)


def openai_alignment_heads_for(dims: ModelDimensions, name: str) -> np.ndarray | None:
    """i32[n, 2]: OpenAI's heads for the size ``dims`` identify (``name`` breaks ties), else ``None``."""
    sizes = [size for size in _ALIGNMENT_HEADS if PRESETS[size] == dims]
    if len({_ALIGNMENT_HEADS[s] for s in sizes}) > 1:
        # large-v1 and large-v2 share dims but not heads: only the name can tell them apart.
        sizes = [s for s in sizes if s in name]
    return openai_alignment_heads(sizes[0]) if len(sizes) == 1 else None
