"""What changes the computation of an OWSM model, read from ESPnet's ``config.yaml`` (an S2T training config).

OWSM v3.1 (``espnet/owsm_v3.1_ebf_base``, ``_small``, ``owsm_v3.1_ebf``), OWSM v4 (``espnet/owsm_v4_base_102M``,
``_small_370M``, ``_medium_1B``) and POWSM (``espnet/powsm``) configure, and babelgrid implements exactly:

- ``frontend: default``: STFT (``n_fft`` 512, a 400-sample periodic Hann window centred in it, hop 160, centred frames
  with reflect padding), power spectrum, librosa's Slaney mel filters (``n_mels``, 80 by default),
  ``log(max(mel, 1e-10))`` (v4 and POWSM: 128 bins);
  ``normalize: global_mvn`` with the model's ``feats_stats.npz``; the window is ``preprocessor_conf.speech_length``
  seconds (30; POWSM's 20);
- ``encoder: e_branchformer`` with ``input_layer: conv2d`` (4x subsampling, v3.1) or ``conv2d8`` (8x: a third 3x3
  stride-2 convolution, v4 and POWSM), ``pos_enc_layer_type: abs_pos`` with
  ``attention_layer_type: selfattn``, cgMLP with ``gate_activation: identity`` and no linear after its convolution,
  ``use_ffn`` and ``macaron_ffn`` (two half-step swish feed-forwards), a depthwise merge convolution;
- ``decoder: transformer``: pre-norm blocks (self-attention, source attention, ReLU feed-forward), absolute positions.

OWLS (``espnet/owls_025B_180K`` .. ``owls_18B_180K``, ``owls_1B_11k`` .. ``_90K``: ESPnet's Whisper-style suite, ICML
2025) configures ``encoder: transformer`` (ESPnet's ``TransformerEncoder``) instead: the same ``conv2d`` subsampling
and absolute positions, then pre-norm blocks (``norm1`` + self-attention, ``norm2`` + ReLU feed-forward, no norm of
their own at the end), ``after_norm``; ``normalize_before: true``, ``concat_after: false``, a ``linear`` feed-forward
(``OwsmConfig.encoder`` records which). The decoder is the same.

Anything else that would change those layers (relative positions, another subsampling, a gate activation, a linear
after the cgMLP convolution, a non-default frontend, an utterance MVN) is refused by name. Options that act only in
training (dropout, layer drop, SpecAugment, label smoothing, the CTC weight) are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from engine.errors import CheckpointError

SAMPLE_RATE = 16000  # Hz; OWSM's frontend is built with fs 16k
LN_EPS = 1e-12  # ESPnet's LayerNorm (espnet2.legacy.nets.pytorch_backend.transformer.layer_norm) passes eps=1e-12
# input_layer -> time subsampling: conv2d is two 3x3 convolutions of stride 2 over (frame, mel), conv2d8 three.
SUBSAMPLINGS = {"conv2d": 4, "conv2d8": 8}
_OTHER_TASKS = ("<asr>", "<pr>", "<g2p>", "<p2g>")  # task tokens besides translation's <st_xxx>

# ESPnet's defaults for the fields babelgrid reads (a config.yaml written by ESPnet holds every field it was given;
# constructor defaults fill the rest): DefaultFrontend, EBranchformerEncoder, TransformerDecoder.
_FRONTEND = {
    "fs": 16000,
    "n_fft": 512,
    "win_length": None,
    "hop_length": 128,
    "window": "hann",
    "center": True,
    "normalized": False,
    "onesided": True,
    "n_mels": 80,
    "fmin": None,
    "fmax": None,
    "htk": False,
}
_ENCODER = {
    "output_size": 256,
    "attention_heads": 4,
    "attention_layer_type": "rel_selfattn",
    "pos_enc_layer_type": "rel_pos",
    "rel_pos_type": "latest",
    "cgmlp_linear_units": 2048,
    "cgmlp_conv_kernel": 31,
    "use_linear_after_conv": False,
    "gate_activation": "identity",
    "num_blocks": 12,
    "input_layer": "conv2d",
    "use_ffn": False,
    "macaron_ffn": False,
    "ffn_activation_type": "swish",
    "linear_units": 2048,
    "positionwise_layer_type": "linear",
    "merge_conv_kernel": 3,
    "qk_norm": False,
    "interctc_layer_idx": None,
    "interctc_use_conditioning": False,
}
# EBranchformerCTCEncoder's defaults differ from EBranchformerEncoder's in these (OWSM-CTC v4 sets them all).
_ENCODER_CTC = _ENCODER | {"input_layer": "conv2d8", "use_cross_attention": True}
# TransformerEncoder (OWLS): the constructor's defaults, for the fields babelgrid reads.
_TRANSFORMER_ENCODER = {
    "output_size": 256,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 6,
    "input_layer": "conv2d",
    "pos_enc_layer_type": "abs_pos",
    "normalize_before": True,
    "concat_after": False,
    "positionwise_layer_type": "linear",
    "qk_norm": False,
    "interctc_layer_idx": [],
    "interctc_use_conditioning": False,
}
# TransformerEncoder (the prompt encoder): output_size has no default there (the task reads it).
_PROMPT_ENCODER = {
    "output_size": None,
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 6,
    "normalize_before": True,
    "concat_after": False,
    "positionwise_layer_type": "linear",
    "qk_norm": False,
}
_REQUIRED_PROMPT_ENCODER = {"normalize_before": True, "concat_after": False, "positionwise_layer_type": "linear",
                            "qk_norm": False}  # fmt: skip
_DECODER = {
    "attention_heads": 4,
    "linear_units": 2048,
    "num_blocks": 6,
    "input_layer": "embed",
    "use_output_layer": True,
    "normalize_before": True,
    "concat_after": False,
    "qk_norm": False,
}
# What babelgrid implements, field -> required value.
_REQUIRED_ENCODER = {
    "attention_layer_type": "selfattn",
    "pos_enc_layer_type": "abs_pos",
    "use_linear_after_conv": False,
    "gate_activation": "identity",
    "use_ffn": True,
    "macaron_ffn": True,
    "ffn_activation_type": "swish",
    "positionwise_layer_type": "linear",
    "qk_norm": False,
    "interctc_use_conditioning": False,
}
_REQUIRED_TRANSFORMER_ENCODER = {
    "pos_enc_layer_type": "abs_pos",
    "normalize_before": True,
    "concat_after": False,
    "positionwise_layer_type": "linear",
    "qk_norm": False,
    "interctc_use_conditioning": False,
}
# OWSM-CTC: self-conditioned interior CTC heads (read at inference too), the rest as v3.1's encoder.
_REQUIRED_ENCODER_CTC = _REQUIRED_ENCODER | {"interctc_use_conditioning": True}
_REQUIRED_DECODER = {
    "input_layer": "embed",
    "use_output_layer": True,
    "normalize_before": True,
    "concat_after": False,
    "qk_norm": False,
}
_REQUIRED_FRONTEND = {"window": "hann", "center": True, "normalized": False, "onesided": True}
# config.yaml's encoder -> (its constructor's defaults, what babelgrid implements).
_ENCODERS = {
    "e_branchformer": (_ENCODER, _REQUIRED_ENCODER),
    "transformer": (_TRANSFORMER_ENCODER, _REQUIRED_TRANSFORMER_ENCODER),
    "e_branchformer_ctc": (_ENCODER_CTC, _REQUIRED_ENCODER_CTC),
}


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
    n_fft: int  # FFT size (512)
    win_length: int  # Hann window, samples (400), centred in n_fft
    hop_length: int  # samples between frames (160: 10 ms)
    n_mels: int
    fmin: float  # Hz
    fmax: float  # Hz
    htk: bool  # librosa's HTK mel scale instead of Slaney's
    speech_seconds: float  # every clip is padded or cut to this window (30 s)

    @property
    def n_samples(self) -> int:
        """Samples per window (480000 for 30 s)."""
        return int(SAMPLE_RATE * self.speech_seconds)

    @property
    def n_frames(self) -> int:
        """Feature frames per window: centred STFT frames (3001 for 30 s at hop 160)."""
        return 1 + self.n_samples // self.hop_length


@dataclasses.dataclass(frozen=True)
class CtcConfig:
    """What OWSM-CTC (``model: espnet_ctc``, ``encoder: e_branchformer_ctc``) adds to the encoder: ESPnet's
    ``ESPnetS2TCTCModel`` and ``EBranchformerCTCEncoder`` (``engine.models.owsm.ctc_model``)."""

    interctc_layers: tuple[int, ...]  # 1-based blocks after which the shared CTC head reads (and conditions)
    cross_attention: tuple[int, ...]  # 0-based blocks with cross-attention to the prompt encoder's output
    prompt_width: int  # the prompt encoder's (and the token embedding's) width (512)
    prompt_layers: int
    prompt_heads: int
    prompt_ffn_width: int
    asr_only: tuple[bool, ...]  # model_conf.ctc_asr_only: per interior head, then the final: trained on the transcript


@dataclasses.dataclass(frozen=True)
class OwsmConfig:
    """The model's dimensions and numerics; encoder layers are indexed ``0..n_layer+1`` (see ``model``)."""

    frontend: FrontendConfig
    width: int  # encoder output_size = decoder attention dim (768 for base), the embed axis
    n_layer: int  # E-Branchformer blocks, called L (9 for base)
    n_head: int
    ffn_width: int  # linear_units of the macaron feed-forwards (a transformer encoder's one feed-forward)
    cgmlp_width: int  # cgmlp_linear_units (split in half by the gating unit); 0 for a transformer encoder
    cgmlp_kernel: int  # depthwise kernel of the gating unit; 0 for a transformer encoder
    merge_kernel: int  # depthwise kernel of the merge; 0 for a transformer encoder
    n_dec_layer: int
    n_dec_head: int
    dec_ffn_width: int
    token_list: tuple[str, ...] = dataclasses.field(repr=False)
    subsampling: int = 4  # time subsampling of the input layer: 4 (conv2d) or 8 (conv2d8)
    ctc: CtcConfig | None = None  # OWSM-CTC's encoder additions; None: the attention encoder-decoder
    encoder: str = "e_branchformer"  # config.yaml's encoder: e_branchformer (OWSM) or transformer (OWLS)

    @property
    def n_vocab(self) -> int:
        return len(self.token_list)

    @property
    def n_layers_out(self) -> int:
        """Stored layers: 0 (subsampling + positions), 1..L (blocks), L+1 (after_norm)."""
        return self.n_layer + 2

    @property
    def n_mels(self) -> int:
        return self.frontend.n_mels

    @property
    def n_prefix(self) -> int:
        """Encoder positions before the audio frames: OWSM-CTC's language and task embeddings (2), else none."""
        return 0 if self.ctc is None else 2

    @property
    def n_convs(self) -> int:
        """Stride-2 convolutions of the input layer: 2 (conv2d) or 3 (conv2d8)."""
        return self.subsampling.bit_length() - 1

    @property
    def n_frames(self) -> int:
        """Encoder frames of one window (749 for 30 s with conv2d, 374 with conv2d8)."""
        return subsampled_frames(self.frontend.n_frames, self.n_convs)

    @property
    def seconds_per_frame(self) -> float:
        """Encoder frame rate: hop x subsampling (0.04 s at hop 160 with conv2d, 0.08 s with conv2d8)."""
        return self.frontend.hop_length * self.subsampling / SAMPLE_RATE

    @property
    def subsampled_mels(self) -> int:
        """Mel bins left after the stride-2 convolutions (19 of 80 with conv2d; 15 of 128 with conv2d8)."""
        return subsampled_frames(self.n_mels, self.n_convs)

    def token_id(self, token: str) -> int:
        """The id of a special token such as ``<sos>``, ``<eng>``, ``<asr>``, ``<st_eng>``, ``<notimestamps>``."""
        try:
            return self.token_list.index(token)
        except ValueError:
            raise CheckpointError(
                f"token '{token}' is not in this model's token list ({self.n_vocab} tokens); languages look like "
                f"<eng>, tasks like <asr> or <st_eng>: see languages() and tasks()"
            ) from None

    def languages(self) -> tuple[str, ...]:
        """Language tokens (``<eng>``, ``<deu>``, ...): those between ``<nospeech>`` (OWSM-CTC: ``<nolang>`` where it
        stands there) and the first task token."""
        start, stop = self.language_range
        return self.token_list[start : stop + 1]

    def tasks(self) -> tuple[str, ...]:
        """Task tokens: ``<asr>``, ``<st_xxx>`` for each translation target, and POWSM's phone recognition ``<pr>``,
        G2P ``<g2p>`` and P2G ``<p2g>``."""
        return tuple(t for t in self.token_list if t in _OTHER_TASKS or t.startswith("<st_"))

    @property
    def language_range(self) -> tuple[int, int]:
        """Ids of the first and last language tokens (``languages()``, contiguous): ``Speech2Language``'s
        ``first_lang_sym`` and ``last_lang_sym`` (its defaults ``<abk>`` and ``<zul>`` are OWSM v3.1's ends)."""
        stop = min(self.token_list.index(t) for t in self.tasks())
        before = [self.token_list.index(t) for t in ("<na>", "<nospeech>", "<nolang>") if t in self.token_list]
        return max(i for i in before if i < stop) + 1, stop - 1

    @property
    def timestamp_range(self) -> tuple[int, int]:
        """Ids of the first and last timestamp tokens (``<0.00>``, ``<30.00>``), suppressed with ``<notimestamps>``."""
        return self.token_id("<0.00>"), self.token_id(f"<{self.frontend.speech_seconds:.2f}>")


def subsampled_frames(n: int, convs: int) -> int:
    """Length after ESPnet's ``Conv2dSubsampling`` (``convs`` = 2) or ``Conv2dSubsampling8`` (3): each valid 3-tap
    stride-2 convolution takes ``n`` to ``(n - 1) // 2``."""
    for _ in range(convs):
        n = (n - 1) // 2
    return n


def config_from_espnet(conf: Mapping, token_list: Sequence[str], source: str) -> OwsmConfig:
    """The model of an ESPnet S2T ``config.yaml`` (already parsed) and its token list."""

    def need(key, want):
        if conf.get(key) != want:
            raise CheckpointError(f"{source}: {key} is {conf.get(key)!r}; babelgrid implements OWSM's {key}: {want}")

    ctc_only = conf.get("model") == "espnet_ctc"
    need("frontend", "default")
    need("normalize", "global_mvn")
    if ctc_only:
        need("encoder", "e_branchformer_ctc")
    elif conf.get("encoder") not in ("e_branchformer", "transformer"):
        raise CheckpointError(
            f"{source}: encoder is {conf.get('encoder')!r}; babelgrid implements OWSM's e_branchformer and OWLS's "
            "transformer"
        )
    if not ctc_only:
        need("decoder", "transformer")
    if conf.get("preencoder") or conf.get("postencoder"):
        raise CheckpointError(f"{source}: a preencoder or postencoder is configured; OWSM has neither")
    kind = "e_branchformer_ctc" if ctc_only else conf["encoder"]
    defaults, required_encoder = _ENCODERS[kind]
    fe = _with_defaults(_FRONTEND, conf.get("frontend_conf"))
    enc = _with_defaults(defaults, conf.get("encoder_conf"))
    dec = _with_defaults(_DECODER, conf.get("decoder_conf"))
    for part, values, required in (
        ("frontend_conf", fe, _REQUIRED_FRONTEND),
        ("encoder_conf", enc, required_encoder),
        *(() if ctc_only else (("decoder_conf", dec, _REQUIRED_DECODER),)),
    ):
        for key, want in required.items():
            if values[key] != want:
                raise CheckpointError(
                    f"{source}: {part}.{key} is {values[key]!r}; babelgrid implements OWSM's {key}: {want!r}"
                )
    if enc["input_layer"] not in SUBSAMPLINGS:
        raise CheckpointError(
            f"{source}: encoder_conf.input_layer is {enc.get('input_layer')!r}; babelgrid implements OWSM's "
            f"{' and '.join(SUBSAMPLINGS)}"
        )
    if str(fe["fs"]).lower() not in ("16000", "16k"):
        raise CheckpointError(f"{source}: frontend_conf.fs is {fe['fs']!r}; OWSM runs at 16k")
    pre = conf.get("preprocessor_conf") or {}
    frontend = FrontendConfig(
        n_fft=int(fe["n_fft"]),
        win_length=int(fe["win_length"] or fe["n_fft"]),
        hop_length=int(fe["hop_length"]),
        n_mels=int(fe["n_mels"]),
        fmin=float(fe["fmin"] or 0.0),
        fmax=float(fe["fmax"] or SAMPLE_RATE / 2),
        htk=bool(fe["htk"]),
        speech_seconds=float(pre.get("speech_length", 30)),
    )
    width = int(enc["output_size"])
    for key, n in (
        ("encoder_conf.attention_heads", enc["attention_heads"]),
        ("decoder_conf.attention_heads", dec["attention_heads"]),
    ):
        if width % int(n):
            raise CheckpointError(f"{source}: {key} {n} does not divide the width {width}")
    tokens = tuple(str(t) for t in token_list)
    specials = ("<blank>", "<sos>", "<eos>", "<na>", "<asr>", *(("<nolang>",) if ctc_only else ("<nospeech>",)))
    for special in specials:
        if special not in tokens:
            raise CheckpointError(f"{source}: the token list lacks {special}; is it OWSM's token list?")
    return OwsmConfig(
        frontend=frontend,
        width=width,
        n_layer=int(enc["num_blocks"]),
        n_head=int(enc["attention_heads"]),
        ffn_width=int(enc["linear_units"]),
        cgmlp_width=int(enc.get("cgmlp_linear_units", 0)),  # a transformer encoder has no cgMLP and no merge
        cgmlp_kernel=int(enc.get("cgmlp_conv_kernel", 0)),
        merge_kernel=int(enc.get("merge_conv_kernel", 0)),
        n_dec_layer=0 if ctc_only else int(dec["num_blocks"]),  # OWSM-CTC has no attention decoder
        n_dec_head=int(dec["attention_heads"]),
        dec_ffn_width=int(dec["linear_units"]),
        token_list=tokens,
        subsampling=SUBSAMPLINGS[enc["input_layer"]],
        ctc=_ctc_config(conf, enc, source) if ctc_only else None,
        encoder="e_branchformer" if ctc_only else kind,
    )


def _ctc_config(conf: Mapping, enc: Mapping, source: str) -> CtcConfig:
    prompt = _with_defaults(_PROMPT_ENCODER, conf.get("promptencoder_conf"))
    if conf.get("promptencoder", "transformer") != "transformer" or prompt.get("output_size") is None:
        raise CheckpointError(
            f"{source}: OWSM-CTC's prompt encoder is a transformer with promptencoder_conf.output_size"
        )
    for key, want in _REQUIRED_PROMPT_ENCODER.items():
        if prompt[key] != want:
            raise CheckpointError(f"{source}: promptencoder_conf.{key} is {prompt[key]!r}; OWSM-CTC's is {want!r}")
    n = int(enc["num_blocks"])
    cross = enc["use_cross_attention"]
    cross = [bool(c) for c in cross] if isinstance(cross, list | tuple) else [bool(cross)] * n
    if len(cross) != n:
        raise CheckpointError(f"{source}: encoder_conf.use_cross_attention lists {len(cross)} blocks of {n}")
    inter = tuple(int(i) for i in enc["interctc_layer_idx"] or ())
    if any(not 0 < i < n for i in inter):
        raise CheckpointError(f"{source}: encoder_conf.interctc_layer_idx {list(inter)} must lie in 1..{n - 1}")
    asr_only = tuple(bool(a) for a in ((conf.get("model_conf") or {}).get("ctc_asr_only") or (False,)))
    return CtcConfig(
        interctc_layers=inter,
        cross_attention=tuple(i for i, c in enumerate(cross) if c),
        prompt_width=int(prompt["output_size"]),
        prompt_layers=int(prompt["num_blocks"]),
        prompt_heads=int(prompt["attention_heads"]),
        prompt_ffn_width=int(prompt["linear_units"]),
        asr_only=asr_only,
    )


def _with_defaults(defaults: Mapping, given) -> dict:
    return {**defaults, **(given or {})}
