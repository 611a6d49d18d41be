"""Benchmark: OWSM v3.1, babelgrid (Flax, jitted) against ESPnet's PyTorch, encoder and greedy decoding.

Prints seconds per batch, audio seconds per second and the ratios, measured in the same run, with the machine, its
ISA and the load average before and after:

  - encoder, every layer: babelgrid ``LoadedOwsm.encode`` (layers 0..L+1)  vs  ESPnet's ``EBranchformerEncoder``
    with ``return_all_hs=True``, on the same features;
  - greedy decoding from the encoder output: babelgrid ``LoadedOwsm.greedy`` (a KV cache, the batch at once)  vs
    ESPnet's ``BeamSearch`` at beam 1 (``Speech2Text``'s search, one utterance at a time as ``Speech2Text`` runs it),
    ``<sos> <lang> <asr> <notimestamps>`` primed, at most ``--tokens`` tokens.

Usage:  python bench/owsm.py [--batch 4] [--layers 9] [--dec_layers 9] [--window 30] [--tokens 32] [--repeats 5]

The model is a random one that ESPnet's own code builds (``tests/models/owsm_reference.write_model``, which needs the
test install: ``make setup-test``) at OWSM v3.1 base widths (768, 12 heads, 3072-wide feed-forwards and cgMLP),
``--layers`` E-Branchformer and ``--dec_layers`` decoder blocks, a ``--window`` s window, float32; speed does not
depend on the weights' values, but a random decoder may end early (the tokens decoded are printed). Inputs: the first
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


def reference(args):
    from tests.models import owsm_reference as ref

    ref.SECONDS = args.window  # the token list's timestamps and the preprocessor's window follow it
    ref.ENCODER["num_blocks"], ref.DECODER["num_blocks"] = args.layers, args.dec_layers
    return ref


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
    ref = reference(args)
    s2t = ref.speech2text(model_dir, args.tokens)
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
    parser.add_argument("--layers", type=int, default=9, help="E-Branchformer blocks")
    parser.add_argument("--dec_layers", type=int, default=9, help="decoder blocks")
    parser.add_argument("--window", type=int, default=30, help="seconds per window (OWSM's: 30)")
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
        model_dir = reference(args).write_model(pathlib.Path(tmp) / "model", SAMPLE)
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

    audio_s = float(sum(min(len(c), args.window * 16000) for c in clips(args))) / 16000
    command = "python bench/owsm.py " + " ".join(
        f"--{k} {getattr(args, k)}" for k in ("batch", "layers", "dec_layers", "window", "tokens", "repeats")
    )
    lines = [
        f"machine: {machine()}; ISA: {isa()}",
        f"date: {datetime.date.today().isoformat()}   command: {command}",
        f"OWSM v3.1 base widths (768), {args.layers} encoder and {args.dec_layers} decoder blocks, fp32, random "
        f"weights; batch of {args.batch} {args.window} s windows ({audio_s:.1f} s of speech); median of "
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
