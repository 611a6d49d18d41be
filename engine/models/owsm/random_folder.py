"""Random-weight OWSM folders in ESPnet's published layout (``engine.models.common.random_weights``; ``babelgrid
random-model --kind owsm``), written with NumPy.

The files are those of an ``espnet/owsm_v3.1_ebf_*`` repository (``checkpoints`` describes the layout): ``meta.yaml``
naming the training config and the weights, ``exp/s2t_train_.../config.yaml`` (the S2T config OWSM v3.1 uses: the
default frontend, global MVN, an E-Branchformer encoder with macaron feed-forwards and abs positions, a Transformer
decoder, the token list inline), ``exp/s2t_stats_.../train/feats_stats.npz`` and the weights. The weights are a
safetensors file (``valid.acc.ave.safetensors``), which the loader reads as it reads ESPnet's ``.pth``, so that no
torch is needed on either side.

The token list keeps OWSM's order: ``<blank> <unk> <na> <nospeech>``, a language token for every ISO 639-3 code
babelgrid maps store languages to (``languages.ISO639_3``), ``<asr>`` and ``<st_xxx>`` tasks, ``<notimestamps>``, the
1501 timestamps of a 30 s window, BPE pieces (single letters and ``▁`` + letter: no SentencePiece model is written,
babelgrid joins the pieces itself), ``<sos> <eos> <sop>``. The statistics are a log-mel mean of -4 and deviation of 4
in every bin. Widths from ``--width`` (feed-forwards and the cgMLP 4 x), kernels 31 as OWSM's; the decoder has
``--layers`` blocks.
"""

from __future__ import annotations

import pathlib

import numpy as np
import yaml

from engine.models.common.random_weights import RandomKind, Sizes, random_tensors, save_weights
from engine.models.owsm.config import config_from_espnet
from engine.models.owsm.decoder import decoder_shapes
from engine.models.owsm.languages import ISO639_3
from engine.models.owsm.model import encoder_shapes

EXP = "exp/s2t_train_s2t_ebf_raw_bpe"
WEIGHTS = f"{EXP}/valid.acc.ave.safetensors"
STATS = "exp/s2t_stats_raw_bpe/train/feats_stats.npz"
SECONDS = 30
N_MELS = 80
TASKS = ("<asr>", "<st_eng>", "<st_deu>", "<st_spa>", "<st_fra>")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz'")


def token_list() -> list[str]:
    """OWSM's order (the module docstring)."""
    languages = sorted({f"<{codes[0]}>" for codes in ISO639_3.values()})
    times = [f"<{0.02 * i:.2f}>" for i in range(int(SECONDS / 0.02) + 1)]
    pieces = [*LETTERS, *(f"\u2581{c}" for c in LETTERS)]
    return ["<blank>", "<unk>", "<na>", "<nospeech>", *languages, *TASKS, "<notimestamps>", *times, *pieces,
            "<sos>", "<eos>", "<sop>"]  # fmt: skip


def train_config(sizes: Sizes) -> dict:
    """The S2T training config (``config.yaml``) of a random OWSM of ``sizes``."""
    w = sizes.width
    encoder = dict(output_size=w, attention_heads=sizes.heads, attention_layer_type="selfattn",
                   pos_enc_layer_type="abs_pos", rel_pos_type="latest", cgmlp_linear_units=4 * w, cgmlp_conv_kernel=31,
                   use_linear_after_conv=False, gate_activation="identity", num_blocks=sizes.layers,
                   input_layer="conv2d", linear_units=4 * w, positionwise_layer_type="linear", use_ffn=True,
                   macaron_ffn=True, merge_conv_kernel=31)  # fmt: skip
    preprocessor = {"fs": 16000, "speech_length": SECONDS, "speech_resolution": 0.02, "na_symbol": "<na>",
                    "notime_symbol": "<notimestamps>", "first_time_symbol": "<0.00>",
                    "last_time_symbol": f"<{SECONDS:.2f}>"}  # fmt: skip
    return {
        "frontend": "default", "frontend_conf": dict(n_fft=512, win_length=400, hop_length=160, fs="16k"),
        "specaug": None, "normalize": "global_mvn", "normalize_conf": {"stats_file": STATS},
        "encoder": "e_branchformer", "encoder_conf": encoder, "decoder": "transformer",
        "decoder_conf": dict(attention_heads=sizes.heads, linear_units=4 * w, num_blocks=sizes.layers),
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1, "length_normalized_loss": False, "sym_na": "<na>"},
        "preprocessor": "s2t", "preprocessor_conf": preprocessor, "token_type": "bpe", "token_list": token_list(),
    }  # fmt: skip


def _write(folder: pathlib.Path, sizes: Sizes, rng: np.random.Generator) -> None:
    conf = train_config(sizes)
    config = config_from_espnet(conf, conf["token_list"], "config.yaml")
    (folder / EXP).mkdir(parents=True, exist_ok=True)
    save_weights(folder / WEIGHTS, random_tensors(encoder_shapes(config) | decoder_shapes(config), rng))
    (folder / EXP / "config.yaml").write_text(yaml.safe_dump(conf, allow_unicode=True), encoding="utf-8")
    (folder / STATS).parent.mkdir(parents=True, exist_ok=True)
    count, mean, std = 10000, np.full(N_MELS, -4.0), np.full(N_MELS, 4.0)
    np.savez(folder / STATS, count=np.array(count), sum=mean * count, sum_square=(std**2 + mean**2) * count)
    meta = {"yaml_files": {"s2t_train_config": f"{EXP}/config.yaml"}, "files": {"s2t_model_file": WEIGHTS}}
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")


KINDS = (
    RandomKind("owsm", "espnet/owsm_v3.1_ebf_base", Sizes(2, 64, 4), _write,
               note="weights as safetensors (the loader reads them as it reads ESPnet's .pth)"),
)  # fmt: skip
