"""Benchmark: OWSM v3.1, babelgrid (Flax, jitted) against ESPnet's PyTorch, encoder and greedy decoding.

Prints seconds per batch, audio seconds per second and the ratios, measured in the same run, with the machine, its
ISA and the load average before and after:

  - encoder, every layer: babelgrid ``LoadedOwsm.encode`` (layers 0..L+1)  vs  ESPnet's ``EBranchformerEncoder``
    with ``return_all_hs=True``, on the same features;
  - greedy decoding from the encoder output: babelgrid ``LoadedOwsm.greedy`` (a KV cache, the batch at once)  vs
    ESPnet's ``BeamSearch`` at beam 1 (``Speech2Text``'s search, one utterance at a time as ``Speech2Text`` runs it),
    ``<sos> <lang> <asr> <notimestamps>`` primed, at most ``--tokens`` tokens.

Usage:  python bench/owsm.py [--batch 4] [--layers 9] [--tokens 32] [--repeats 5]

The model is the random one ``babelgrid random-model --kind owsm`` writes in ESPnet's layout, at OWSM v3.1 base widths
(768, 12 heads, 3072-wide feed-forwards and cgMLP), ``--layers`` E-Branchformer and as many decoder blocks, OWSM's
30 s window, float32; ESPnet reads the same weights (saved as its ``.pth``) with its full training config (its
parser's defaults under the folder's ``config.yaml``), which needs ESPnet (``make setup-test``). Speed does not depend
on the weights' values, but a random decoder may end early (the tokens decoded are printed). Inputs: the first
``--batch`` real FLEURS clips ($BABELGRID_FLEURS_SAMPLE or ../shared/data/fleurs-sample), featurised once by
babelgrid. Each engine runs in its own subprocess, warmed up first; times are medians over ``--repeats`` interleaved
rounds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Worker, interleaved_workers, machine  # noqa: E402
from bench.w2vbert_encoder import isa  # noqa: E402

ENCODE, DECODE = "encode", "decode"
LABELS = {
    ("ours", ENCODE): "babelgrid Flax encoder, layers 0..L+1 (jit)",
    ("espnet", ENCODE): "ESPnet PyTorch encoder, return_all_hs",
    ("ours", DECODE): "babelgrid greedy (KV cache, batched, jit)",
    ("espnet", DECODE): "ESPnet BeamSearch beam 1, per utterance",
}
SAMPLE = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))


WINDOW = 30  # seconds: OWSM's window, which random-model's OWSM is written for
ESPNET_CONFIG = "config.espnet.yaml"  # beside the folder's config.yaml: what ESPnet's model builder reads
ESPNET_WEIGHTS = "valid.acc.ave.pth"


def write_model(args, folder: pathlib.Path) -> pathlib.Path:
    """The random OWSM (``engine.models.random_folder``), and beside it what ESPnet's inference reads: the weights as
    a ``.pth`` and the config with every option ESPnet's parser has (random-model writes only those OWSM sets)."""
    import safetensors.numpy
    import torch
    import yaml

    from engine.models.owsm.random_folder import EXP, WEIGHTS
    from engine.models.random_folder import write_random_folder

    write_random_folder("owsm", folder, layers=args.layers, width=768, heads=12)
    _torchaudio_placeholder()
    from espnet2.tasks.s2t import S2TTask

    conf = yaml.safe_load((folder / EXP / "config.yaml").read_text(encoding="utf-8"))
    defaults = vars(S2TTask.get_parser().parse_args(["--output_dir", str(folder / EXP), "--token_list", "unset"]))
    (folder / EXP / ESPNET_CONFIG).write_text(yaml.safe_dump({**defaults, **conf}), encoding="utf-8")
    tensors = safetensors.numpy.load_file(folder / WEIGHTS)
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / EXP / ESPNET_WEIGHTS)
    return folder


def _torchaudio_placeholder() -> None:
    """ESPnet's ``espnet2.tasks.s2t`` imports torchaudio at module level, for modules OWSM does not use; where no
    torchaudio build matches torch, a placeholder stands in, and any use of it fails loudly."""
    import importlib.machinery
    import types

    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)

        def missing(name):
            raise AttributeError(f"torchaudio is a placeholder in bench/owsm.py (torchaudio.{name}); OWSM needs none")

        stub.__getattr__ = missing
        sys.modules["torchaudio"] = stub


def speech2text(model_dir: pathlib.Path, max_tokens: int):
    """ESPnet's own inference on the model: greedy (beam 1), no CTC, no length penalty, at most ``max_tokens``; built
    inside ``model_dir``, since the config's paths are relative to it, as ESPnet's recipes run them."""
    import contextlib

    import safetensors.numpy

    from engine.models.owsm.random_folder import EXP, WEIGHTS

    _torchaudio_placeholder()
    from espnet2.bin.s2t_inference import Speech2Text

    with contextlib.chdir(model_dir):
        s2t = Speech2Text(s2t_train_config=f"{EXP}/{ESPNET_CONFIG}", s2t_model_file=f"{EXP}/{ESPNET_WEIGHTS}",
                          beam_size=1, ctc_weight=0.0, penalty=0.0, maxlenratio=-float(max_tokens), nbest=1,
                          device="cpu")  # fmt: skip
    # ESPnet loads a state dict leniently: every parameter of its model must have come from the folder's weights
    stored = set(safetensors.numpy.load_file(model_dir / WEIGHTS))
    unread = sorted(k for k, _ in s2t.s2t_model.named_parameters() if k not in stored)
    if unread:
        raise SystemExit(f"bench/owsm.py: ESPnet's model has parameters the random folder lacks: {unread[:5]}")
    return s2t


def clips(args) -> list[np.ndarray]:
    from engine.data.audio import load_audio

    files = sorted(SAMPLE.glob("fleurs-en-*.ogg"))[: args.batch]
    if len(files) < args.batch:
        raise SystemExit(f"bench/owsm.py needs {args.batch} English FLEURS clips in {SAMPLE}")
    return [load_audio(f) for f in files]


def ours_contender(args, model_dir):
    import jax
    import jax.numpy as jnp

    from engine.models.owsm.loaded import load_owsm

    m = load_owsm(model_dir)
    features, _ = m.features(clips(args))
    f = jnp.asarray(features)
    memory = m.encode(f)[-1]

    def encode():
        m.encode(f).block_until_ready()

    def decode():
        tokens, n = m.greedy(memory, "eng", "asr", max_tokens=args.tokens)
        n.block_until_ready()
        return int(np.asarray(n).sum())

    return {ENCODE: encode, DECODE: decode}, f"jax {jax.__version__} on {jax.devices()[0].platform}"


def espnet_contender(args, model_dir):
    import torch

    from engine.models.owsm.loaded import load_owsm

    torch.set_num_threads(args.threads)
    s2t = speech2text(model_dir, args.tokens)
    model = s2t.s2t_model
    features, _ = load_owsm(model_dir).features(clips(args))
    x = torch.from_numpy(features)
    lengths = torch.full((len(x),), x.shape[1])
    with torch.no_grad():
        memory, _, _ = model.encoder(x, lengths)
    ids = s2t.converter.token2id
    s2t.beam_search.set_hyp_primer([model.sos, ids["<eng>"], ids["<asr>"], ids["<notimestamps>"]])

    def encode():
        with torch.no_grad():
            model.encoder(x, lengths, return_all_hs=True)

    def decode():
        n = 0
        with torch.no_grad():
            for row in memory:
                hyp = s2t.beam_search(x=row, maxlenratio=-float(args.tokens), minlenratio=0.0)[0]
                n += len(hyp.yseq) - 5  # prompt of 4, and <eos>
        return n

    info = f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}"
    return {ENCODE: encode, DECODE: decode}, info


ENGINES = {"ours": ours_contender, "espnet": espnet_contender}


def serve(args) -> None:
    """Worker side: set up one engine's two tasks, warm them up, then time the task named on each stdin line."""
    fns, info = ENGINES[args.worker](args, pathlib.Path(args.model_dir))
    tokens = {name: fn() for name, fn in fns.items()}  # warm-up
    print(f"@@ready {info}; tokens decoded per batch: {tokens[DECODE]}", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        fns[line.strip()]()
        print(f"@@{time.perf_counter() - start}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=9, help="E-Branchformer blocks, and as many decoder blocks")
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens at most")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", choices=sorted(ENGINES), help=argparse.SUPPRESS)  # internal: one engine's process
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args)
        return

    with tempfile.TemporaryDirectory(prefix="owsm-bench-") as tmp:
        model_dir = write_model(args, pathlib.Path(tmp) / "model")
        base = [sys.executable, __file__, *sys.argv[1:], "--model_dir", str(model_dir)]
        load_before = os.getloadavg()
        workers = {}
        try:
            for name in ENGINES:
                workers[name] = Worker([*base, "--worker", name], dict(os.environ))
            medians = {
                task: interleaved_workers({name: (w, task) for name, w in workers.items()}, args.repeats)
                for task in (ENCODE, DECODE)
            }
        finally:
            for w in workers.values():
                w.close()
        load_after = os.getloadavg()

    audio_s = float(sum(min(len(c), WINDOW * 16000) for c in clips(args))) / 16000
    command = "python bench/owsm.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("batch", "layers", "tokens", "repeats")
    )
    lines = [
        f"machine: {machine()}; ISA: {isa()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}",
        f"OWSM v3.1 base widths (768), {args.layers} encoder and {args.layers} decoder blocks, fp32, random "
        f"weights; batch of {args.batch} {WINDOW} s windows ({audio_s:.1f} s of speech); median of "
        f"{args.repeats} interleaved rounds; {args.threads} threads per engine; load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after",
        "",
        *(f"- {name} ran with: {w.info}" for name, w in workers.items()),
        "",
        "| task | engine | s/batch | audio s/s |",
        "| --- | --- | ---: | ---: |",
        *(
            f"| {task} | {LABELS[(n, task)]} | {medians[task][n]:.2f} | {audio_s / medians[task][n]:.1f} |"
            for task in (ENCODE, DECODE)
            for n in ENGINES
        ),
        "",
        *(
            f"- {task}, babelgrid vs ESPnet: **{medians[task]['espnet'] / medians[task]['ours']:.2f}x** as fast "
            "(goal >= 1.2)"
            for task in (ENCODE, DECODE)
        ),
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
