"""Our decoding at an older commit against the working tree's, in one process: interleaved A/B rounds, medians.

    python bench/decode_ab.py --base a633a7b [--windows 8] [--rounds 5] [--beams 1,5]

The base commit's ``engine/models/whisper/{model,decoding,stages}.py`` are copied into a temporary package and run on
the same weights (the packaged whisper-base, float32) and the same encoder output as the working tree's code. Prints
whether the tokens are identical, the largest difference of the mean log-probabilities, whether XLA compiled the two
greedy programs (the prompt's start and the stage's loop) to the same executable, and old / new seconds per decoding
with the per-round range of the ratio, and the load before / after. Where the executables are the same, a time
difference is the machine's, not the code's.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COPIED = ("model", "decoding", "stages", "select", "graph")  # those the base has are copied


def copy_base(base: str, into: pathlib.Path) -> None:
    package = into / "base_whisper"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in COPIED:
        shown = subprocess.run(
            ["git", "show", f"{base}:engine/models/whisper/{name}.py"], capture_output=True, text=True, cwd=REPO
        )
        if shown.returncode:
            continue
        src = shown.stdout
        for other in COPIED:
            src = src.replace(f"from engine.models.whisper.{other} import", f"from base_whisper.{other} import")
        src = src.replace("from engine.models.whisper import ", "from base_whisper import ")
        (package / f"{name}.py").write_text(src)


def executable_text(lowered) -> str:
    """XLA's optimised program without what names the source (file names, lines, op names): equal for two
    commits whose code compiles to the same executable."""
    text = re.sub(r", metadata=\{[^}]*\}", "", lowered.compile().as_text())
    text = re.sub(r"%[\w.-]+", "%", text)
    kept = [line for line in text.splitlines() if not re.match(r'^\s*\d+ (\{file_|\{file_location|")', line)]
    return re.sub(r",? ?stack_frame_id=\d+", "", "\n".join(kept))


def greedy_executables(module, model, xa, prompt, common, n_vocab) -> list[str]:
    """The two programs of a greedy decode as compiled at ``module``'s commit (its start, then its stage)."""
    suppress, begin = module._suppress_masks(n_vocab, common["suppress_tokens"], common["suppress_begin"])
    graphdef, state = module._split(model)
    emb_t = module.embedding_t(model)
    eot, new = common["eot"], common["max_new_tokens"]
    start = module._greedy_start.lower(graphdef, state, emb_t, xa, prompt, suppress, begin, eot, new, new)
    kv, carry = module._greedy_start(graphdef, state, emb_t, xa, prompt, suppress, begin, eot, new, new)
    stage = module._greedy_stage.lower(graphdef, state, emb_t, suppress, eot, prompt.shape[1], kv, carry, new, 0)
    return [executable_text(start), executable_text(stage)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", required=True, help="the commit whose decoding is 'old'")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--beams", default="1,5")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    copy_base(args.base, pathlib.Path(tmp.name))
    sys.path.insert(0, tmp.name)
    import base_whisper.decoding as old_decoding
    import base_whisper.model as old_model
    import jax
    from flax import nnx

    from bench.common import interleaved_times
    from bench.decode import fleurs_windows
    from engine.models.whisper import decoding as new_decoding
    from engine.models.whisper.decoding import DecodingOptions
    from engine.models.whisper.loaded import load_whisper
    from engine.models.whisper.random_weights import random_state_dict

    mel = fleurs_windows(args.windows)
    whisper = load_whisper()
    old = old_model.Whisper(whisper.dims, random_state_dict(whisper.dims))
    nnx.update(old, nnx.state(whisper.model))  # the same weights in the base's module classes
    xa = jax.block_until_ready(whisper.encode(mel, (whisper.dims.n_audio_layer + 1,))[0])
    options = DecodingOptions(language="de")
    prompt = np.array([whisper.tokenizer.sot_sequence("de")] * len(mel), np.int32)
    common = dict(
        eot=whisper.tokenizer.eot,
        suppress_tokens=whisper.suppress_tokens(options),
        suppress_begin=whisper.suppress_begin(options),
        max_new_tokens=options.max_new_tokens,
    )

    def runner(module, model, beam):
        if beam == 1:
            return lambda: module.greedy_decode(model, xa, prompt, **common)
        return lambda: module.beam_decode(model, xa, prompt, beam_size=beam, **common)

    vocab, prompt_j = whisper.dims.n_vocab, jax.numpy.asarray(prompt)
    same = [
        a == b
        for a, b in zip(
            greedy_executables(old_decoding, old, xa, prompt_j, common, vocab),
            greedy_executables(new_decoding, whisper.model, xa, prompt_j, common, vocab),
            strict=True,
        )
    ]
    print(f"greedy executables (start, stage) the same at both commits: {same}")
    beams = [int(b) for b in args.beams.split(",")]
    contenders = {}
    for beam in beams:
        contenders[f"old beam {beam}"] = runner(old_decoding, old, beam)
        contenders[f"new beam {beam}"] = runner(new_decoding, whisper.model, beam)
    first = {name: fn() for name, fn in contenders.items()}  # warm-up, and the outputs compared
    load_before = os.getloadavg()[0]
    times = interleaved_times(contenders, args.rounds, warm_up=False)
    load_after = os.getloadavg()[0]
    print(f"base {args.base}, {args.windows} windows, {args.rounds} rounds, load {load_before:.2f} / {load_after:.2f}")
    for beam in beams:
        (old_tokens, old_avg), (new_tokens, new_avg) = first[f"old beam {beam}"], first[f"new beam {beam}"]
        a, b = times[f"old beam {beam}"], times[f"new beam {beam}"]
        ratios = [x / y for x, y in zip(a, b, strict=True)]
        print(
            f"beam {beam}: tokens {'identical' if old_tokens == new_tokens else 'DIFFER'}, mean log-probabilities "
            f"within {np.max(np.abs(old_avg - new_avg)):.1e}; old {statistics.median(a):.3f} s, new "
            f"{statistics.median(b):.3f} s: new faster by {statistics.median(a) / statistics.median(b):.2f}x "
            f"(rounds {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
