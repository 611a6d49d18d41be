"""Random-weight OWSM folders in ESPnet's published layout (``engine.models.common.random_weights``; ``babelgrid
random-model --kind owsm``, ``--kind powsm``, ``--kind owsm-ctc``), written with NumPy.

The files are those of an ``espnet/owsm_*`` repository (``checkpoints`` describes the layout): ``meta.yaml`` naming
the training config and the weights, ``exp/s2t_train_.../config.yaml`` (the S2T config: the default frontend, global
MVN, an E-Branchformer encoder with macaron feed-forwards and abs positions, the token list inline),
``exp/s2t_stats_.../train/feats_stats.npz`` and the weights. The weights are a safetensors file
(``valid.acc.ave.safetensors``), which the loader reads as it reads ESPnet's ``.pth``, so that no torch is needed on
either side; their names and shapes are the loader's own (``encoder_shapes`` with ``decoder_shapes``, or OWSM-CTC's
``ctc_shapes``).

The kinds, each as its released config sets it (``config`` lists what babelgrid reads):

- ``owsm`` (``espnet/owsm_v3.1_ebf_base``): ``conv2d`` (4x), 80 mels, a 30 s window with 20 ms timestamps, the tasks
  ``<asr>`` and ``<st_xxx>``, a Transformer decoder of ``--layers`` blocks;
- ``powsm`` (``espnet/powsm``): ``conv2d8`` (8x), 128 mels, a 20 s window with 40 ms timestamps, the tasks ``<asr>``,
  ``<pr>`` (phone recognition), ``<g2p>``, ``<p2g>``, and IPA phones as ``/p/`` tokens after the timestamps;
- ``owls`` (``espnet/owls_1B_180K``): OWSM v3.1's files with ``encoder: transformer`` (ESPnet's
  ``TransformerEncoder``, pre-norm, ReLU feed-forwards 4 x wide), ``conv2d``, 80 mels, a 30 s window;
- ``owsm-ctc`` (``espnet/owsm_ctc_v4_1B``): ``model: espnet_ctc``, an ``e_branchformer_ctc`` encoder (``conv2d8``,
  128 mels, 30 s) with self-conditioned interior CTC heads after every block but the last (v4: 6, 12, 15, 21 of 27),
  cross-attention to the prompt in every second block (v4: every third), a prompt encoder of ``--layers`` blocks as
  wide as the encoder (v4: 4 x 512 beside 1024), ``<nolang>`` after ``<nospeech>``; no decoder.

The token list keeps OWSM's order: ``<blank> <unk> <na> <nospeech>`` (OWSM-CTC: ``<nolang>``), a language token for
every ISO 639-3 code babelgrid maps store languages to (``languages.ISO639_3``), the tasks, ``<notimestamps>``, the
timestamps of the window, POWSM's phones, BPE pieces (single letters and ``▁`` + letter: no SentencePiece model is
written, babelgrid joins the pieces itself), ``<sos> <eos> <sop>``. The statistics are a log-mel mean of -4 and
deviation of 4 in every bin. Widths from ``--width`` (feed-forwards and the cgMLP 4 x), kernels 31 as OWSM's.
"""

from __future__ import annotations

import pathlib

import numpy as np
import yaml

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, save_weights
from engine.models.owsm.config import config_from_espnet
from engine.models.owsm.ctc_model import ctc_shapes
from engine.models.owsm.decoder import decoder_shapes
from engine.models.owsm.languages import ISO639_3
from engine.models.owsm.model import encoder_shapes

EXP = "exp/s2t_train_s2t_ebf_raw_bpe"
WEIGHTS = f"{EXP}/valid.acc.ave.safetensors"
STATS = "exp/s2t_stats_raw_bpe/train/feats_stats.npz"
SECONDS = 30  # OWSM v3.1's and OWSM-CTC v4's window
POWSM_SECONDS = 20  # POWSM's window (preprocessor_conf.speech_length)
TASKS = ("<asr>", "<st_eng>", "<st_deu>", "<st_spa>", "<st_fra>")
POWSM_TASKS = ("<asr>", "<pr>", "<g2p>", "<p2g>")
# A small IPA inventory in POWSM's /p/ form (its own is PanPhon's): enough for a phone decode to print phones.
PHONES = tuple(f"/{p}/" for p in ("a", "e", "i", "o", "u", "p", "pʰ", "b", "t", "d", "k", "g", "s", "z", "ʃ", "n", "m",
                                  "l", "ɾ", "j", "w"))  # fmt: skip
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz'")


def token_list(seconds: float = SECONDS, resolution: float = 0.02, tasks: tuple[str, ...] = TASKS,
               phones: tuple[str, ...] = (), nolang: bool = False) -> list[str]:  # fmt: skip
    """OWSM's order (the module docstring): timestamps every ``resolution`` s of a ``seconds`` window."""
    languages = sorted({f"<{codes[0]}>" for codes in ISO639_3.values()})
    times = [f"<{resolution * i:.2f}>" for i in range(round(seconds / resolution) + 1)]
    pieces = [*LETTERS, *(f"\u2581{c}" for c in LETTERS)]
    head = ["<blank>", "<unk>", "<na>", "<nospeech>", *(["<nolang>"] if nolang else [])]
    return [*head, *languages, *tasks, "<notimestamps>", *times, *phones, *pieces, "<sos>", "<eos>", "<sop>"]


def _encoder_conf(sizes: Sizes, input_layer: str) -> dict:
    w = sizes.width
    return dict(output_size=w, attention_heads=sizes.heads, attention_layer_type="selfattn",
                pos_enc_layer_type="abs_pos", rel_pos_type="latest", cgmlp_linear_units=4 * w, cgmlp_conv_kernel=31,
                use_linear_after_conv=False, gate_activation="identity", num_blocks=sizes.layers,
                input_layer=input_layer, linear_units=4 * w, positionwise_layer_type="linear", use_ffn=True,
                macaron_ffn=True, merge_conv_kernel=31)  # fmt: skip


def _frontend(n_mels: int) -> dict:
    return {"frontend": "default", "frontend_conf": dict(n_fft=512, win_length=400, hop_length=160, fs="16k",
                                                         n_mels=n_mels),
            "specaug": None, "normalize": "global_mvn", "normalize_conf": {"stats_file": STATS}}  # fmt: skip


def _transformer_encoder_conf(sizes: Sizes) -> dict:
    return dict(output_size=sizes.width, attention_heads=sizes.heads, linear_units=4 * sizes.width,
                num_blocks=sizes.layers, input_layer="conv2d", normalize_before=True)  # fmt: skip


def _s2t_config(sizes: Sizes, input_layer: str, n_mels: int, seconds: float, resolution: float,
                tokens: list[str]) -> dict:  # fmt: skip
    """An attention encoder-decoder's S2T config (OWSM v3.1, v4, POWSM)."""
    w = sizes.width
    preprocessor = {"fs": 16000, "speech_length": seconds, "speech_resolution": resolution, "na_symbol": "<na>",
                    "notime_symbol": "<notimestamps>", "first_time_symbol": "<0.00>",
                    "last_time_symbol": f"<{seconds:.2f}>"}  # fmt: skip
    return {
        **_frontend(n_mels), "encoder": "e_branchformer", "encoder_conf": _encoder_conf(sizes, input_layer),
        "decoder": "transformer",
        "decoder_conf": dict(attention_heads=sizes.heads, linear_units=4 * w, num_blocks=sizes.layers),
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "sym_na": "<na>"},
        "preprocessor": "s2t", "preprocessor_conf": preprocessor, "token_type": "bpe", "token_list": tokens,
    }  # fmt: skip


def train_config(sizes: Sizes) -> dict:
    """The S2T training config (``config.yaml``) of a random OWSM v3.1 of ``sizes``."""
    return _s2t_config(sizes, "conv2d", 80, SECONDS, 0.02, token_list())


def powsm_config(sizes: Sizes) -> dict:
    """The S2T training config of a random POWSM of ``sizes`` (the module docstring)."""
    tokens = token_list(POWSM_SECONDS, 0.04, POWSM_TASKS, PHONES)
    return _s2t_config(sizes, "conv2d8", 128, POWSM_SECONDS, 0.04, tokens)


def owls_config(sizes: Sizes) -> dict:
    """The S2T training config of a random OWLS of ``sizes``: v3.1's with a transformer encoder."""
    return train_config(sizes) | {"encoder": "transformer", "encoder_conf": _transformer_encoder_conf(sizes)}


def owsm_ctc_config(sizes: Sizes) -> dict:
    """The S2T-CTC training config of a random OWSM-CTC v4 of ``sizes`` (the module docstring)."""
    n, w = sizes.layers, sizes.width
    interior = list(range(1, n))  # after every block but the last: each block's output is conditioned on
    encoder = _encoder_conf(sizes, "conv2d8") | dict(interctc_layer_idx=interior, interctc_use_conditioning=True,
                                                     use_cross_attention=[i % 2 == 1 for i in range(n)])  # fmt: skip
    prompt = dict(output_size=w, attention_heads=sizes.heads, linear_units=4 * w, num_blocks=n)
    preprocessor = {"fs": 16000, "speech_length": SECONDS, "na_symbol": "<na>", "nolang_symbol": "<nolang>"}
    return {
        **_frontend(128), "model": "espnet_ctc", "encoder": "e_branchformer_ctc", "encoder_conf": encoder,
        "promptencoder": "transformer", "promptencoder_conf": prompt,
        "model_conf": {"interctc_weight": 0.8, "sym_na": "<na>", "ctc_asr_only": [True] * len(interior) + [False]},
        "preprocessor": "s2t_ctc", "preprocessor_conf": preprocessor, "token_type": "bpe",
        "token_list": token_list(nolang=True),
    }  # fmt: skip


def _writer(make_config):
    """``RandomKind.write`` for the config ``make_config(sizes)`` gives."""

    def write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
        conf = make_config(sizes)
        config = config_from_espnet(conf, conf["token_list"], "config.yaml")
        heads = decoder_shapes(config) if config.ctc is None else ctc_shapes(config)
        (folder / EXP).mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS, random_tensors(encoder_shapes(config) | heads, rng))
        (folder / EXP / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True), encoding="utf-8")
        (folder / STATS).parent.mkdir(parents=True, exist_ok=True)
        count, mean, std = 10000, np.full(config.n_mels, -4.0), np.full(config.n_mels, 4.0)
        np.savez(folder / STATS, count=np.array(count), sum=mean * count, sum_square=(std**2 + mean**2) * count)
        meta = {"yaml_files": {"s2t_train_config": f"{EXP}/config.yaml"}, "files": {"s2t_model_file": WEIGHTS}}
        (folder / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")

    return write


_SAFETENSORS = "weights as safetensors (the loader reads them as it reads ESPnet's .pth)"
KINDS = (
    RandomKind("owsm", "espnet/owsm_v3.1_ebf_base", Sizes(2, 64, 4), _writer(train_config), note=_SAFETENSORS),
    RandomKind("powsm", "espnet/powsm", Sizes(2, 64, 4), _writer(powsm_config),
               note=f"{_SAFETENSORS}; {len(PHONES)} IPA phones"),
    RandomKind("owls", "espnet/owls_1B_180K", Sizes(2, 64, 4), _writer(owls_config), note=_SAFETENSORS),
    RandomKind("owsm-ctc", "espnet/owsm_ctc_v4_1B", Sizes(2, 64, 4), _writer(owsm_ctc_config),
               note=f"{_SAFETENSORS}; the prompt encoder as wide and deep as the encoder"),
)  # fmt: skip
