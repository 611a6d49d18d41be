"""Training steps per second: our jitted decoder train step against transformers' PyTorch decoder-only fine-tuning.

    python bench/finetune.py [--batch_size 8] [--rounds 7] [--threads 2] [--record bench/RESULTS.md]

The packaged whisper-base in float32 on CPU. Both sides train the whole decoder (encoder frozen, never run): the
same batch of ``--batch_size`` encoder outputs (layer L+1 of real FLEURS English clips, computed once by our
encoder and given to both) with German FLEURS sentences as targets, prompt ``<|de|><|transcribe|><|notimestamps|>``.
One step is what each side does per batch when fine-tuning:

- ours: ``engine.pipelines.finetune.step.jit_train_step`` (teacher-forced cross-entropy, global-norm clip 1.0, optax
  AdamW);
- theirs: ``WhisperForConditionalGeneration(encoder_outputs=..., labels=...)``, ``loss.backward()``,
  ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW.step()`` over the decoder's parameters, ``torch.set_num_threads``.

Both are loaded from the same weights (ours exported to a Hugging Face folder) and their first-step losses are
printed side by side. Medians of interleaved rounds (``bench.common.interleaved``): the machine may be shared, which
hits every contender of a round alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import machine, record  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FLEURS = pathlib.Path(os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds, one step of each side per round")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--record", type=pathlib.Path, default=None, help="write the table into this results file")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from engine.data.audio import load_audio
    from engine.models.whisper.checkpoints.export import export_hf
    from engine.models.whisper.features import features_for_audio
    from engine.models.whisper.loaded import load_whisper
    from engine.models.whisper.trainer import WhisperTrainer
    from engine.pipelines.finetune import step as S

    torch.set_num_threads(args.threads)
    whisper = load_whisper()
    tok = whisper.tokenizer
    clips = sorted(FLEURS.glob("fleurs-en-*.ogg"))[: args.batch_size]
    texts = [p.read_text().strip() for p in sorted(FLEURS.glob("fleurs-de-*.txt"))[: args.batch_size]]
    if len(clips) < args.batch_size or len(texts) < args.batch_size:
        raise SystemExit(f"{FLEURS} has {len(clips)} en clips and {len(texts)} de texts; need --batch_size of each")
    mel = np.concatenate([features_for_audio(load_audio(p), whisper.dims.n_mels)[0][:1] for p in clips])
    xa = np.array(whisper.encode(mel, (whisper.dims.n_audio_layer + 1,))[0], np.float32)  # writable, for torch
    prompt = tok.sot_sequence("de", "transcribe")
    tokens = [tok.encode(" " + t) for t in texts]
    length = -(-(len(prompt) + max(map(len, tokens))) // 8) * 8  # the job's padding to a multiple of 8
    batch = S.make_batch(prompt, tokens, tok.eot, length)
    n_tokens = int(batch["weights"].sum())

    # ours
    config = S.OptimConfig(learning_rate=1e-5, total_steps=10_000, decay="constant", weight_decay=0.01, clip_norm=1.0)
    trainer = WhisperTrainer(whisper)
    graph, params = trainer.split()
    trainable, frozen = S.partition(params, S.trainable_names(params, ["decoder"], trainer.groups))
    step_fn = S.jit_train_step(graph, config, jnp.float32)
    ours_batch = {k: jnp.asarray(v) for k, v in {**batch, "xa": xa}.items()}
    box = {"state": S.init_state(trainable, config)}

    def ours():
        box["state"], m = step_fn(box["state"], frozen, ours_batch, None)
        return float(m["loss"])  # blocks until the step is done

    # theirs
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(whisper, pathlib.Path(tmp) / "hf")
        hf = transformers.WhisperForConditionalGeneration.from_pretrained(
            pathlib.Path(tmp) / "hf", torch_dtype=torch.float32
        )
    hf.train()
    hf.model.encoder.requires_grad_(False)
    decoder_params = [p for p in hf.model.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(decoder_params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    t_xa = torch.from_numpy(xa)
    t_tokens = torch.from_numpy(batch["tokens"]).long()
    t_labels = torch.from_numpy(np.where(batch["weights"] > 0, batch["labels"], -100)).long()

    def theirs():
        opt.zero_grad(set_to_none=True)
        out = hf(encoder_outputs=(t_xa,), decoder_input_ids=t_tokens, labels=t_labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder_params, 1.0)
        opt.step()
        return out.loss.item()

    first = {"ours": ours(), "transformers": theirs()}  # also the warm-up (compilation, allocator)
    load_before = open("/proc/loadavg").read().split()[0]
    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", ours), ("transformers", theirs)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    load_after = open("/proc/loadavg").read().split()[0]

    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [t / o for o, t in zip(times["ours"], times["transformers"], strict=True)]
    speedup = statistics.median(ratios)
    command = "python bench/finetune.py " + " ".join(sys.argv[1:])
    lines = [
        f"Machine: {machine()}; torch {torch.__version__} ({args.threads} threads), transformers "
        f"{transformers.__version__}",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; 1-minute load average {load_before} "
        f"before, {load_after} after (the machine is shared)",
        f"Command: `{command}`",
        "",
        f"whisper-base float32, whole decoder trained, batch {args.batch_size} x {length} tokens ({n_tokens} target "
        f"tokens) over 1500 stored encoder frames; first-step loss ours {first['ours']:.5f}, transformers "
        f"{first['transformers']:.5f}.",
        "",
        "| implementation | median s/step | steps/s | ours faster by (median of per-round ratios, range) |",
        "| --- | ---: | ---: | ---: |",
        f"| babelgrid jit_train_step (JAX, XLA CPU) | {med['ours']:.3f} | {1 / med['ours']:.2f} | "
        f"{speedup:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |",
        f"| transformers + torch.optim.AdamW | {med['transformers']:.3f} | {1 / med['transformers']:.2f} | 1.00x |",
        "",
        f"{args.rounds} interleaved rounds, one step of each side per round after one warm-up step each. "
        f"Goal (issue 34) >= 1.2x: {'met' if speedup >= 1.2 else 'not met'} ({speedup:.2f}x).",
    ]
    print("\n".join(lines))
    if args.record:
        record(args.record, "finetune", "\n".join(lines))
    jax.block_until_ready(box["state"])


if __name__ == "__main__":
    main()
