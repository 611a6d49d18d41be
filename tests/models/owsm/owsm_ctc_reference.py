"""ESPnet's own OWSM-CTC as the reference: a random-weight ``ESPnetS2TCTCModel`` that ESPnet 202611's
``espnet2.tasks.s2t_ctc`` builds from ``owsm_ctc_v4_1B``'s published training config
(``egs2/owsm_ctc_v4/s2t1/conf/train_owsmctc_ebf27_conv2d8_size1024_mel128_bs320.yaml``), saved in ESPnet's published
layout, and ESPnet's ``Speech2Text`` (which 202611 builds CTC-only from ``model: espnet_ctc``) on it.

Real widths (1024 wide, 16 heads, 4096-wide feed-forwards and cgMLP, 31-tap convolutions, ``conv2d8``, 128 mels; the
prompt encoder 512 wide, 8 heads, 2048-wide feed-forwards), depth cut from 27 blocks to 4 and the prompt encoder's from
4 to 2, keeping each kind of block: interior self-conditioned CTC heads after blocks 1, 2 and 3 (v4: 6, 12, 15, 21),
cross-attention to the prompt in blocks 1 and 3 (v4: every third), ``ctc_asr_only`` [T, T, F, F] (v4: [T, T, T, F,
F]); a 10 s window (v4's 30). The token list and BPE are ``owsm_reference``'s, with ``<nolang>``.
"""

from __future__ import annotations

import contextlib
import pathlib

import torch

from tests.models.owsm import owsm_reference as ref  # isort: skip (first: its torchaudio placeholder, version check)
from espnet2.bin.s2t_inference import Speech2Text  # isort: skip
from espnet2.tasks.s2t_ctc import S2TTask as S2TCTCTask  # isort: skip

ENCODER = dict(ref.ENCODER, output_size=1024, attention_heads=16, cgmlp_linear_units=4096, linear_units=4096,
               input_layer="conv2d8", num_blocks=4, interctc_layer_idx=[1, 2, 3], interctc_use_conditioning=True,
               use_cross_attention=[0, 1, 0, 1], use_flash_attn=False)  # fmt: skip
PROMPT = dict(output_size=512, attention_heads=8, linear_units=2048, num_blocks=2, use_flash_attn=False)
ASR_ONLY = [True, True, False, False]
N_MELS = 128
INTERIOR = (1, 2, 3)  # ENCODER's interctc_layer_idx


def token_list(pieces: list[str]) -> list[str]:
    """``owsm_reference.token_list`` with ``<nolang>`` after ``<nospeech>``."""
    tokens = ref.token_list(pieces)
    return tokens[:4] + ["<nolang>"] + tokens[4:]


def write_model(root: pathlib.Path, fleurs_dir: pathlib.Path, seed: int = 0, narrow: bool = False) -> pathlib.Path:
    """Build a random OWSM-CTC with ``S2TTask.build_model`` (``espnet2.tasks.s2t_ctc``) and save it under ``root``.
    ``narrow``: ``owsm_reference.NARROW``'s widths (the job tests': a quarter of v4's 1024, whose ``conv2d8`` stem on
    128 mels took 20 s a window), the prompt encoder's kept."""
    tokens = token_list(ref.train_bpe(root, fleurs_dir, symbols=("<na>",)))
    args = S2TCTCTask.get_parser().parse_args(["--output_dir", str(root / ref.EXP), "--token_list", str(root / "x")])
    args.token_list = tokens
    args.token_type, args.bpemodel = "bpe", ref.BPE
    args.input_size = None
    args.frontend, args.frontend_conf = "default", dict(ref.FRONTEND, n_mels=N_MELS)
    args.specaug, args.normalize, args.normalize_conf = None, "global_mvn", {"stats_file": str(root / ref.STATS)}
    args.encoder, args.encoder_conf = "e_branchformer_ctc", dict(ENCODER, **ref.NARROW) if narrow else dict(ENCODER)
    args.promptencoder, args.promptencoder_conf = "transformer", dict(PROMPT)
    args.model = "espnet_ctc"
    args.model_conf = {"interctc_weight": 0.8, "sym_na": "<na>", "ctc_asr_only": ASR_ONLY}
    args.preprocessor = "s2t_ctc"
    args.preprocessor_conf = {"fs": ref.SAMPLE_RATE, "speech_length": ref.SECONDS, "na_symbol": "<na>",
                              "nolang_symbol": "<nolang>"}  # fmt: skip
    ref.write_stats(root / ref.STATS, fleurs_dir, N_MELS)
    torch.manual_seed(seed)
    return ref.save(root, S2TCTCTask.build_model(args).eval(), args, seed)


def speech2text(root: pathlib.Path) -> Speech2Text:
    """ESPnet 202611's ``Speech2Text`` on the saved model (CTC-only, from its config's ``model: espnet_ctc``)."""
    with contextlib.chdir(root):
        s2t = Speech2Text(
            s2t_train_config=f"{ref.EXP}/config.yaml",
            s2t_model_file=f"{ref.EXP}/valid.acc.ave.pth",
            device="cpu",
            beam_size=1,
            bpemodel=str(root / ref.BPE),
        )
    assert s2t.ctc_only
    return s2t
