"""ESPnet's own OWSM as the reference: a random-weight S2T model that ESPnet's code builds, saved in ESPnet's published
layout, and ESPnet's frontend, encoder, decoder and search run on it.

Real OWSM v3.1 base widths (768 wide, 12 heads, 3072-wide feed-forwards and cgMLP, 31-tap convolutions), depth cut to
2 encoder and 2 decoder blocks, a 10 s window instead of 30 s (the arithmetic is the same; CI time is 3x less), a token
list with OWSM's special tokens (languages, tasks, 1501 timestamps) around a small SentencePiece BPE trained on the
FLEURS transcripts. ``VARIANTS`` names what OWSM v4 (``owsm_v4_base_102M``'s published config: ``input_layer:
conv2d8``, 128 mel bins) and POWSM (``espnet/powsm``: a 20 s window, 40 ms timestamps, the tasks ``<pr>`` phone
recognition, ``<g2p>``, ``<p2g>``, and IPA phones as ``/p/`` tokens) change on the same widths; ``OWLS`` what OWLS
(``espnet/owls_*``) changes: ESPnet's transformer encoder, at its own widths.

The reference is ESPnet 202611 (``ESPNET``, the Makefile's pin), checked at import.

ESPnet is installed for tests with --no-deps (Makefile, setup-test). Its ``espnet2.tasks.s2t`` imports torchaudio at
module level (for enhancement and codec modules OWSM does not use), and no torchaudio build matches this project's
torch; when torchaudio cannot be imported, a placeholder module stands in for it, and any use of it fails loudly.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import pathlib
import sys
import types

import numpy as np
import yaml

from engine.data.audio import load_audio


def _torchaudio_placeholder() -> None:
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)

        def missing(name):
            raise AttributeError(
                f"torchaudio is a placeholder in babelgrid's tests (torchaudio.{name}); OWSM needs none"
            )

        stub.__getattr__ = missing
        sys.modules["torchaudio"] = stub


_torchaudio_placeholder()

import espnet  # noqa: E402
import torch  # noqa: E402
from espnet2.bin.s2t_inference import Speech2Text  # noqa: E402
from espnet2.bin.s2t_inference_language import Speech2Language  # noqa: E402
from espnet2.tasks.s2t import S2TTask  # noqa: E402

ESPNET = "202611"
if espnet.__version__ != ESPNET:
    raise ImportError(f"the OWSM parity tests are pinned to ESPnet {ESPNET}, not {espnet.__version__}: make setup-test")

SAMPLE_RATE = 16000
SECONDS = 10  # the test window (OWSM's is 30)
LANGUAGES = ("<eng>", "<deu>", "<fra>", "<spa>", "<por>")
TASKS = ("<asr>", "<st_eng>", "<st_deu>")
# (file stem, OWSM language token): the clips of the parity tests (FLEURS clips are 5-15 s; the window cuts them).
CLIPS = (("fleurs-en-000", "<eng>"), ("fleurs-de-001", "<deu>"), ("fleurs-fr-002", "<fra>"))
ENCODER = dict(
    output_size=768,
    attention_heads=12,
    attention_layer_type="selfattn",
    pos_enc_layer_type="abs_pos",
    rel_pos_type="latest",
    cgmlp_linear_units=3072,
    cgmlp_conv_kernel=31,
    use_linear_after_conv=False,
    gate_activation="identity",
    num_blocks=2,
    input_layer="conv2d",
    linear_units=3072,
    positionwise_layer_type="linear",
    use_ffn=True,
    macaron_ffn=True,
    merge_conv_kernel=31,
)
DECODER = dict(attention_heads=12, linear_units=3072, num_blocks=2)
# The job tests' width (``write_model(..., narrow=True)``): the jobs' plumbing is checked against ESPnet on the same
# weights, at a third of the width: the real widths' convolution stem alone (768 channels at 1/2 and 1/4 of the
# mel's resolution) was most of their CPU time. The parity tests (tests/models/owsm) keep the real widths.
NARROW = dict(output_size=256, attention_heads=4, cgmlp_linear_units=1024, linear_units=1024)
NARROW_DECODER = dict(attention_heads=4, linear_units=1024)
FRONTEND = dict(n_fft=512, win_length=400, hop_length=160, fs="16k")
# What each family member changes in ENCODER and FRONTEND (OWSM v4 base/small/medium: conv2d8, 128 mels).
V31 = dict(input_layer="conv2d", n_mels=80, seconds=SECONDS, resolution=0.02, tasks=TASKS, phones=())
VARIANTS = {
    "v3.1": V31,
    "v4": dict(V31, input_layer="conv2d8", n_mels=128),
    "powsm": dict(V31, seconds=20, resolution=0.04, tasks=("<asr>", "<pr>", "<g2p>", "<p2g>"),
                  phones=tuple(f"/{p}/" for p in ("a", "e", "i", "o", "u", "p", "pʰ", "t", "k", "s", "n", "m", "ɾ"))),
}  # fmt: skip
# OWLS (espnet/owls_*): ESPnet's TransformerEncoder (pre-norm, ReLU) and the same decoder, at OWSM v3's transformer
# widths (1024 wide, 16 heads, 4096-wide feed-forwards: the 1B scale of OWLS's ladder), depth cut to 2 encoder blocks
# and 1 decoder block, and a 4 s window (10 s of 1024-channel convolutions would be most of the test's CPU time; the
# arithmetic is the same).
OWLS = dict(V31, encoder="transformer", seconds=4)
OWLS_ENCODER = dict(output_size=1024, attention_heads=16, linear_units=4096, num_blocks=2, input_layer="conv2d",
                    normalize_before=True)  # fmt: skip
OWLS_DECODER = dict(attention_heads=16, linear_units=4096, num_blocks=1)
EXP = "exp/s2t_train_s2t_ebf_test_raw_bpe"
STATS = "exp/s2t_stats_raw_bpe/train/feats_stats.npz"
BPE = "data/token_list/bpe_unigram/bpe.model"


def real_clips(fleurs_dir: pathlib.Path) -> list[np.ndarray]:
    return [load_audio(fleurs_dir / f"{stem}.ogg") for stem, _ in CLIPS]


def token_list(pieces: list[str], variant: dict = V31) -> list[str]:
    """OWSM's order: blank, unk, na, nospeech, languages, tasks, notimestamps, timestamps, (POWSM's phones,) BPE pieces,
    sos, eos, sop."""
    step = variant["resolution"]
    times = [f"<{step * i:.2f}>" for i in range(round(variant["seconds"] / step) + 1)]
    head = ["<blank>", "<unk>", "<na>", "<nospeech>", *LANGUAGES, *variant["tasks"], "<notimestamps>", *times,
            *variant["phones"]]  # fmt: skip
    return head + [p for p in pieces if p not in head] + ["<sos>", "<eos>", "<sop>"]


def write_model(
    root: pathlib.Path, fleurs_dir: pathlib.Path, seed: int = 0, variant: str = "v3.1", narrow: bool = False
) -> pathlib.Path:
    """Build a random OWSM (``VARIANTS[variant]``, or ``"owls"``: ``OWLS``) with ``S2TTask.build_model`` and save it
    under ``root`` as ESPnet publishes models. ``narrow``: ``NARROW``'s widths (the job tests'), not v3.1 base's."""
    changes = OWLS if variant == "owls" else VARIANTS[variant]
    tokens = token_list(train_bpe(root, fleurs_dir), changes)
    (root / BPE).with_name("tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")

    args = S2TTask.get_parser().parse_args(["--output_dir", str(root / EXP), "--token_list", str(root / "x")])
    args.token_list = tokens
    args.token_type, args.bpemodel = "bpe", BPE
    args.frontend, args.frontend_conf = "default", dict(FRONTEND, n_mels=changes["n_mels"])
    args.specaug, args.normalize, args.normalize_conf = None, "global_mvn", {"stats_file": str(root / STATS)}
    encoder = dict(ENCODER, **NARROW) if narrow else ENCODER
    args.encoder, args.encoder_conf = "e_branchformer", dict(encoder, input_layer=changes["input_layer"])
    args.decoder, args.decoder_conf = "transformer", dict(DECODER, **NARROW_DECODER) if narrow else dict(DECODER)
    if variant == "owls":
        args.encoder, args.encoder_conf, args.decoder_conf = "transformer", dict(OWLS_ENCODER), dict(OWLS_DECODER)
    args.model_conf = {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "sym_na": "<na>"}
    args.preprocessor_conf = {
        "fs": SAMPLE_RATE,
        "speech_length": changes["seconds"],
        "speech_resolution": changes["resolution"],
        "na_symbol": "<na>",
        "notime_symbol": "<notimestamps>",
        "first_time_symbol": "<0.00>",
        "last_time_symbol": f"<{changes['seconds']:.2f}>",
    }
    write_stats(root / STATS, fleurs_dir, changes["n_mels"])
    torch.manual_seed(seed)
    return save(root, S2TTask.build_model(args).eval(), args, seed)


def train_bpe(root: pathlib.Path, fleurs_dir: pathlib.Path, symbols: tuple[str, ...] = ()) -> list[str]:
    """A small SentencePiece unigram model of the FLEURS transcripts at ``root / BPE``; its pieces but ``<unk>``.
    ``symbols``: pieces kept whole (OWSM's BPE keeps ``<na>`` so, which OWSM-CTC's prompt is tokenised to)."""
    import sentencepiece as spm

    (root / BPE).parent.mkdir(parents=True, exist_ok=True)
    texts = root / "texts.txt"
    texts.write_text("\n".join(p.read_text().strip() for p in sorted(fleurs_dir.glob("*.txt"))), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(texts),
        model_prefix=str(root / BPE)[: -len(".model")],
        vocab_size=120,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        **({"user_defined_symbols": list(symbols)} if symbols else {}),
    )
    sp = spm.SentencePieceProcessor(model_file=str(root / BPE))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.id_to_piece(i) != "<unk>"]


def save(root: pathlib.Path, model, args, seed: int) -> pathlib.Path:
    """Noise on every parameter of ``model``, then its state dict, ``args`` as config.yaml and a meta.yaml, in
    ESPnet's published layout under ``root``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            # Norms start at 1 and 0 and cgMLP biases at constants: noise everywhere, so a misread tensor shows.
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    (root / EXP).mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), root / EXP / "valid.acc.ave.pth")
    conf = {k: v for k, v in vars(args).items()}
    conf["normalize_conf"] = {"stats_file": STATS}
    (root / EXP / "config.yaml").write_text(yaml.safe_dump(conf), encoding="utf-8")
    meta = {
        "yaml_files": {"s2t_train_config": f"{EXP}/config.yaml"},
        "files": {"s2t_model_file": f"{EXP}/valid.acc.ave.pth"},
    }
    (root / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    return root


def write_stats(path: pathlib.Path, fleurs_dir: pathlib.Path, n_mels: int) -> None:
    """Global MVN statistics of the unnormalised log-mel frames of a few real clips, as collect_stats writes them."""
    from espnet2.asr.frontend.default import DefaultFrontend

    frontend = DefaultFrontend(**FRONTEND, n_mels=n_mels).eval()
    feats = []
    with torch.no_grad():
        for stem in ("fleurs-en-001", "fleurs-pt-001"):
            wav = torch.from_numpy(load_audio(fleurs_dir / f"{stem}.ogg"))[None]
            feats.append(frontend(wav, torch.tensor([wav.shape[1]]))[0][0].double().numpy())
    x = np.concatenate(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, count=np.array(len(x)), sum=x.sum(0), sum_square=(x * x).sum(0))


def speech2text(root: pathlib.Path, max_tokens: int, beam_size: int = 1) -> Speech2Text:
    """ESPnet's own inference on the saved model: beam ``beam_size`` (greedy is 1), no CTC, no length penalty, at most
    ``max_tokens``.

    Built inside ``root``: config.yaml's paths are relative to the repository root, as ESPnet's recipes run them."""
    with contextlib.chdir(root):
        return Speech2Text(
            s2t_train_config=f"{EXP}/config.yaml",
            s2t_model_file=f"{EXP}/valid.acc.ave.pth",
            beam_size=beam_size,
            ctc_weight=0.0,
            penalty=0.0,
            maxlenratio=-float(max_tokens),
            nbest=1,
            device="cpu",
            bpemodel=str(root / BPE),
        )


def speech2language(root: pathlib.Path) -> Speech2Language:
    """ESPnet's language identification on the saved model, over its language tokens (the test list's ends)."""
    with contextlib.chdir(root):
        return Speech2Language(
            s2t_train_config=f"{EXP}/config.yaml",
            s2t_model_file=f"{EXP}/valid.acc.ave.pth",
            device="cpu",
            nbest=len(LANGUAGES),
            first_lang_sym=LANGUAGES[0],
            last_lang_sym=LANGUAGES[-1],
        )


def share_encoder_outputs(s2t_model, outputs: dict) -> None:
    """Memoise ``s2t_model.encode(speech, speech_lengths)`` (an ESPnet S2T model in eval mode: deterministic) in
    ``outputs``, keyed by its input, so that ESPnet's searches and language identification on the same clip encode it
    once: each call pads the clip and encodes it again, and the parity tests run several of them per clip (greedy ASR
    and ST, beam search, language probabilities). Models loaded from the same files may share ``outputs``: they hold
    the same weights. Each caller gets its own copy of the tensors."""
    encode = s2t_model.encode

    def memoised(speech, speech_lengths, **kwargs):
        if kwargs:  # OWSM-CTC's prompt and prefix: not memoised
            return encode(speech, speech_lengths, **kwargs)
        key = (tuple(speech.shape), str(speech.dtype), speech.numpy().tobytes(), tuple(speech_lengths.tolist()))
        if key not in outputs:
            outputs[key] = encode(speech, speech_lengths)
        enc, lengths = outputs[key]
        return enc.clone(), lengths.clone()

    s2t_model.encode = memoised
