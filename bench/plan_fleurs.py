"""The --plan printout for a grid too large to run here: all of FLEURS test with whisper-large-v3, on 1, 8 and 64 hosts.

    python bench/plan_fleurs.py [--device h100] [--hosts 1,8,64] [--langs 102] [--memory_budget SIZE] \
        [--write_rate MB/s] [--measure ...] [--uniform --per_lang 500 --seconds 10] [--seqsim_precision fp8]

No audio and no weights: the counts are synthetic (stated below), the calibration runs on this machine at
large-v3's width. BUILD.md shows its output. Lengths follow FLEURS test (``bench.scale.grid``: per language a count
drawn in FLEURS test's 350-650, durations drawn from the FLEURS sample clips, 50 frames a second); ``--uniform`` takes
``--per_lang`` utterances of 0.5-1.5 x ``--seconds`` instead. The encode plan says whether the run is bound by the
encoder or by writing its states, at the write rate measured here through ``LayerStore`` into a local folder, or at
``--write_rate`` (MB/s per process: ``bench/encode_writes.py`` measures it, local disk and S3); the seqsim plan gives
the memory budget (``--memory_budget``, default this machine's), each language's reads, the peak held and the time
per host. ``--measure`` takes the seqsim job's list (default: its default measures); dtw is timed on random states
of the synthetic lengths (its cost does not depend on the values), ot is refused: its Sinkhorn iterations depend on
real states, so plan it with ``jobs.seqsim --plan`` on a store. ``--seqsim_precision fp8`` plans the job's 8-bit
opt-in (its agreement with bf16 and the rate it assumes are printed with it).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import whisper_plan_inputs  # noqa: E402
from bench.scale import grid  # noqa: E402
from engine.models.whisper.dims import preset  # noqa: E402
from engine.pipelines.seqsim.config import DEFAULT_MEASURES  # noqa: E402
from engine.pipelines.seqsim.plan import CALIBRATION_UTTERANCES, plan_seqsim  # noqa: E402
from engine.pipelines.stages.encode_plan import plan_encode  # noqa: E402
from engine.runtime import devices as plan_lib  # noqa: E402
from engine.runtime.budget import resolve_budget  # noqa: E402
from engine.runtime.options import parse_size  # noqa: E402
from engine.stores.similarity import check_measure  # noqa: E402

LARGE_V3 = preset("large-v3")
FRAMES_PER_SECOND = 50  # encoder frames


def random_sample(frames: dict, pair: tuple[str, str], dtype: str):
    """``(A, len_A, B, len_B)`` for ``engine.pipelines.seqsim.plan.calibrate_pair_measure``: random states of
    the pair's evenly spread utterances at large-v3's width. DTW's cost is the same whatever the values (a fixed
    wavefront and one product)."""
    out = []
    for i, lang in enumerate(pair):
        n = frames[lang]
        index = np.unique(np.linspace(0, len(n) - 1, CALIBRATION_UTTERANCES).astype(int))
        lengths = n[index].astype(np.int32)
        x = jax.random.normal(jax.random.key(i), (len(index), int(lengths.max()), LARGE_V3.n_audio_state))
        out += [x.astype(jnp.dtype(dtype)), jnp.asarray(lengths)]
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="h100", choices=list(plan_lib.DEVICES))
    parser.add_argument("--hosts", default="1,8,64", help="process counts to give the time for (one per host)")
    parser.add_argument("--langs", type=int, default=102)
    parser.add_argument("--uniform", action="store_true", help="uniform lengths instead of FLEURS-shaped ones")
    parser.add_argument("--per_lang", type=int, default=500, help="--uniform: utterances per language")
    parser.add_argument("--seconds", type=float, default=10.0, help="--uniform: mean utterance length")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--measure", default=",".join(DEFAULT_MEASURES), help="seqsim job measures (no ot)")
    parser.add_argument("--memory_budget", default=None, help="seqsim's budget per process here (default: machine)")
    parser.add_argument("--seqsim_precision", default="dtype", choices=["dtype", "fp8"],
                        help="seqsim's products: in --dtype, or fp8 (the job's opt-in; 2x bf16, assumed)")  # fmt: skip
    parser.add_argument("--write_rate", type=float, default=None, help="MB/s one process writes (default: measured)")
    args = parser.parse_args()
    measures = tuple(dict.fromkeys(m.strip() for m in args.measure.split(",") if m.strip()))
    for m in measures:
        check_measure(m)
    if "ot" in measures:
        parser.error(
            "ot cannot be planned without a store (Sinkhorn's iterations depend on the states): run "
            "python -m jobs.seqsim --store STORE --out OUT --measure ot --plan on an encoded store"
        )
    device = plan_lib.get_device(args.device)

    hosts = tuple(int(h) for h in args.hosts.split(","))
    if args.uniform:
        rng = np.random.default_rng(0)
        seconds = {f"l{i:03d}": rng.uniform(0.5, 1.5, args.per_lang) * args.seconds for i in range(args.langs)}
        frames = {lang: np.round(s * FRAMES_PER_SECOND).astype(int) for lang, s in seconds.items()}
    else:
        frames = {lang: n.astype(int) for lang, n in grid(args.langs, None, 1.0, 1.0).items()}
        seconds = {lang: n / FRAMES_PER_SECOND for lang, n in frames.items()}
    langs = list(frames)
    layers = tuple(range(LARGE_V3.n_encoder_layers_out))
    total_seconds = float(sum(s.sum() for s in seconds.values()))
    shape, samples, rate = whisper_plan_inputs(LARGE_V3, frames, args.dtype)
    encode = plan_encode(
        shape,
        samples,
        total_seconds,
        layers=layers,
        long_audio="window",  # clips over 30 s take two windows (the encode job's long-audio windows)
        dtype=args.dtype,
        compute_dtype=args.dtype,
        batch_size=8,
        prefetch=8,
        device=device,
        model="openai/whisper-large-v3 (dimensions only)",
        rate=rate,
        write_rate=None if args.write_rate is None else args.write_rate * 1e6,
        hosts=hosts,
    )
    print(encode.render())
    print()
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    seqsim = plan_seqsim(
        frames,
        pairs,
        d=LARGE_V3.n_audio_state,
        n_layers=len(layers),
        storage_dtype=args.dtype,
        dtype=args.dtype,
        device=device,
        store=f"FLEURS test, large-v3 (synthetic {'uniform' if args.uniform else 'FLEURS-shaped'} lengths)",
        measures=measures,
        sample=random_sample(frames, pairs[0], args.dtype) if "dtw" in measures else None,
        budget=resolve_budget(parse_size(args.memory_budget)),
        hosts=hosts,
        seqsim_precision=args.seqsim_precision,
    )
    print(seqsim.render())


if __name__ == "__main__":
    main()
