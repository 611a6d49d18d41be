"""Benchmark: OWSM v4, POWSM and OWSM-CTC v4 encoders, babelgrid (Flax, jitted) against ESPnet's PyTorch.

Prints, per model, seconds per batch and the ratio measured in the same run, with the machine, its ISA and the load
average before and after:

  - babelgrid ``LoadedOwsm.encode`` (every layer; OWSM-CTC with the stores' prefix ``<nolang> <asr>`` and prompt
    ``<na>``)  vs  ESPnet 202611's encoder on the same features: ``EBranchformerEncoder`` with ``return_all_hs``
    (v4, POWSM), ``ESPnetS2TCTCModel``'s prompt encoder and ``EBranchformerCTCEncoder`` with its interior CTC heads and
    self-conditioning (OWSM-CTC), each keeping every layer as babelgrid does (forward hooks).

Usage:  python bench/owsm_family.py [--models v4,powsm,ctc] [--batch 4] [--repeats 3] [--ctc_layers 27]

Models: random weights that ESPnet's own task builds (``espnet2.tasks.s2t`` / ``s2t_ctc``) at the published widths:
v4 = ``owsm_v4_base_102M`` (768 wide, 12 heads, 9 blocks, ``conv2d8``, 128 mels, 30 s), POWSM = ``espnet/powsm``
(768, 12 heads, 9 blocks, ``conv2d``, 80 mels, 20 s), ctc = ``owsm_ctc_v4_1B`` (1024 wide, 16 heads, ``--ctc_layers``
blocks of 27, interior CTC after 6, 12, 15, 21 (those below the depth), cross-attention in every third block, a 4-block
512-wide prompt encoder, ``conv2d8``, 128 mels, 30 s). Speed does not depend on the weights' values. Needs ESPnet
(``make setup-test``). Inputs: the first ``--batch`` English FLEURS clips, featurised once by babelgrid. Each engine
runs in its own subprocess, warmed up first; times are medians over ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, machine, serve_timed  # noqa: E402
from bench.owsm import _torchaudio_placeholder, clips  # noqa: E402
from bench.w2vbert_encoder import isa  # noqa: E402

EXP = "exp/s2t"
ENCODER = dict(attention_layer_type="selfattn", pos_enc_layer_type="abs_pos", rel_pos_type="latest",
               cgmlp_conv_kernel=31, use_linear_after_conv=False, gate_activation="identity",
               positionwise_layer_type="linear", use_ffn=True, macaron_ffn=True, merge_conv_kernel=31)  # fmt: skip
FRONTEND = dict(n_fft=512, win_length=400, hop_length=160, fs="16k")
# name -> (seconds, n_mels, input_layer, width, heads, blocks, title)
MODELS = {
    "v4": (30, 128, "conv2d8", 768, 12, 9, "OWSM v4 base (owsm_v4_base_102M widths)"),
    "powsm": (20, 80, "conv2d", 768, 12, 9, "POWSM (espnet/powsm widths)"),
    "ctc": (30, 128, "conv2d8", 1024, 16, 27, "OWSM-CTC v4 (owsm_ctc_v4_1B widths)"),
}


def write_model(name: str, folder: pathlib.Path, ctc_layers: int) -> pathlib.Path:
    """A random model of ``MODELS[name]`` that ESPnet's task builds, saved in ESPnet's layout with MVN statistics."""
    import torch
    import yaml

    _torchaudio_placeholder()
    seconds, n_mels, layer, width, heads, blocks, _ = MODELS[name]
    blocks = ctc_layers if name == "ctc" else blocks
    tokens = ["<blank>", "<unk>", "<na>", "<nospeech>", "<nolang>", "<eng>", "<deu>", "<asr>", "<st_eng>", "<pr>",
              "<notimestamps>", "<0.00>", f"<{seconds:.2f}>", *(f"▁t{i}" for i in range(200)), "<sos>", "<eos>",
              "<sop>"]  # fmt: skip
    encoder = dict(ENCODER, output_size=width, attention_heads=heads, cgmlp_linear_units=4 * width,
                   linear_units=4 * width, num_blocks=blocks, input_layer=layer)  # fmt: skip
    if name == "ctc":
        from espnet2.tasks.s2t_ctc import S2TTask

        encoder |= dict(interctc_layer_idx=[i for i in (6, 12, 15, 21) if i < blocks], interctc_use_conditioning=True,
                        use_cross_attention=[int(i % 3 == 2) for i in range(blocks)], use_flash_attn=False)  # fmt: skip
    else:
        from espnet2.tasks.s2t import S2TTask
    args = S2TTask.get_parser().parse_args(["--output_dir", str(folder / EXP), "--token_list", "unset"])
    args.token_list, args.token_type, args.input_size = tokens, "word", None
    args.frontend, args.frontend_conf = "default", dict(FRONTEND, n_mels=n_mels)
    args.specaug, args.normalize = None, "global_mvn"
    stats = folder / "feats_stats.npz"
    folder.mkdir(parents=True)
    np.savez(stats, count=np.array(1000), sum=np.full(n_mels, -4000.0), sum_square=np.full(n_mels, 32000.0))
    args.normalize_conf = {"stats_file": str(stats)}
    if name == "ctc":
        args.encoder, args.encoder_conf = "e_branchformer_ctc", encoder
        args.promptencoder = "transformer"
        args.promptencoder_conf = dict(output_size=512, attention_heads=8, linear_units=2048, num_blocks=4,
                                       use_flash_attn=False)  # fmt: skip
        args.model, args.model_conf = "espnet_ctc", {"sym_na": "<na>", "ctc_asr_only": [True, True, True, False, False]}
    else:
        args.encoder, args.encoder_conf = "e_branchformer", encoder
        args.decoder, args.decoder_conf = (
            "transformer",
            dict(attention_heads=heads, linear_units=4 * width, num_blocks=1),
        )
    args.preprocessor_conf = {"fs": 16000, "speech_length": seconds, "speech_resolution": 0.02, "na_symbol": "<na>",
                              "notime_symbol": "<notimestamps>", "first_time_symbol": "<0.00>",
                              "last_time_symbol": f"<{seconds:.2f}>"}  # fmt: skip
    torch.manual_seed(0)
    model = S2TTask.build_model(args).eval()
    (folder / EXP).mkdir(parents=True)
    torch.save(model.state_dict(), folder / EXP / "model.pth")
    conf = dict(vars(args), normalize_conf={"stats_file": "feats_stats.npz"})
    (folder / EXP / "config.yaml").write_text(yaml.safe_dump(conf), encoding="utf-8")
    meta = {"yaml_files": {"s2t_train_config": f"{EXP}/config.yaml"}, "files": {"s2t_model_file": f"{EXP}/model.pth"}}
    (folder / "meta.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    return folder


def ours_contender(args, model_dir):
    import jax
    import jax.numpy as jnp

    from engine.models.owsm.loaded import load_owsm

    m = load_owsm(model_dir)
    f = jnp.asarray(m.features(clips(args))[0])

    def encode():
        m.encode(f).block_until_ready()

    return encode, f"jax {jax.__version__} on {jax.devices()[0].platform}"


def espnet_contender(args, model_dir):
    import contextlib

    import torch

    from engine.models.owsm.loaded import load_owsm

    torch.set_num_threads(args.threads)
    _torchaudio_placeholder()
    from espnet2.bin.s2t_inference import Speech2Text

    with contextlib.chdir(model_dir):
        model = Speech2Text(s2t_train_config=f"{EXP}/config.yaml", s2t_model_file=f"{EXP}/model.pth", device="cpu",
                            beam_size=1).s2t_model  # fmt: skip
    x = torch.from_numpy(load_owsm(model_dir).features(clips(args))[0])
    lengths = torch.full((len(x),), x.shape[1])
    enc = model.encoder
    if hasattr(model, "prompt_encoder"):  # OWSM-CTC: prefix <nolang> <asr>, prompt <na>, every block kept by hooks
        ids = {t: i for i, t in enumerate(model.token_list)}
        rows = len(x)
        prefix = torch.tensor([[ids["<nolang>"], ids["<asr>"]]] * rows)
        prompt = torch.tensor([[ids["<na>"]]] * rows)
        kept = []
        for block in enc.encoders:
            block.register_forward_hook(lambda m, a, out: kept.append(out[0]))

        def encode():
            kept.clear()
            with torch.no_grad():
                memory, _, _ = model.prompt_encoder(model.pos_enc(model.embed(prompt)), torch.ones(rows, dtype=int))
                enc(
                    x,
                    lengths,
                    ctc=model.ctc,
                    prefix_embeds=model.embed_proj(model.embed(prefix)),
                    memory=model.prompt_proj(memory),
                    memory_mask=torch.ones(rows, 1, 1, dtype=torch.bool),
                )
    else:

        def encode():
            with torch.no_grad():
                enc(x, lengths, return_all_hs=True)

    return encode, f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}"


ENGINES = {"ours": ours_contender, "espnet": espnet_contender}


def serve(args) -> None:
    serve_timed(*ENGINES[args.worker](args, pathlib.Path(args.model_dir)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="v4,powsm,ctc")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ctc_layers", type=int, default=27)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args)
        return
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    load_before = os.getloadavg()
    rows, infos = [], {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix="owsm-family-bench-") as tmp:
            model_dir = write_model(name, pathlib.Path(tmp) / name, args.ctc_layers)
            base = [sys.executable, __file__, *sys.argv[1:], "--model_dir", str(model_dir)]
            workers = {}
            try:
                for engine in ENGINES:
                    workers[engine] = Worker([*base, "--worker", engine], dict(os.environ))
                medians = interleaved_workers({e: (w, "encode") for e, w in workers.items()}, args.repeats)
            finally:
                for w in workers.values():
                    w.close()
            infos = {e: w.info for e, w in workers.items()}
        seconds, *_, blocks, title = MODELS[name]
        blocks = args.ctc_layers if name == "ctc" else blocks
        rows.append(f"| {title}, {blocks} blocks, {seconds} s windows | {medians['ours']:.2f} | "
                    f"{medians['espnet']:.2f} | **{medians['espnet'] / medians['ours']:.2f}x** |")  # fmt: skip
    load_after = os.getloadavg()
    command = f"python bench/owsm_family.py --models {args.models} --batch {args.batch} --repeats {args.repeats}"
    command += f" --ctc_layers {args.ctc_layers}" if "ctc" in names else ""
    print("\n".join([
        f"machine: {machine()}; ISA: {isa()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}",
        f"fp32, random weights; batch of {args.batch} windows; every layer kept; median of {args.repeats} interleaved "
        f"rounds; {args.threads} threads per engine; load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        "after",
        "",
        *(f"- {e} ran with: {info}" for e, info in infos.items()),
        "",
        "| encoder | babelgrid s/batch | ESPnet s/batch | babelgrid vs ESPnet (goal >= 1.2x) |",
        "| --- | ---: | ---: | ---: |",
        *rows,
    ]))  # fmt: skip


if __name__ == "__main__":
    main()
