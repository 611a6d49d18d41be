"""The --plan printout for a grid too large to run here: all of FLEURS test with whisper-large-v3.

    python bench/plan_fleurs.py [--device h100] [--langs 102] [--per_lang 500] [--seconds 10] [--measure ...]

No audio and no weights: the counts are synthetic (stated below), the calibration runs on this machine at
large-v3's width. BUILD.md shows its output. ``--measure`` takes the seqsim job's list (default: its default
measures); dtw is timed on random states of the synthetic lengths (its cost does not depend on the values), ot is
refused: its Sinkhorn iterations depend on real states, so plan it with ``jobs.seqsim --plan`` on a store.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from engine.models.whisper.dims import preset
from engine.pipelines.encode.plan import plan_encode
from engine.pipelines.similarity.config import DEFAULT_MEASURES
from engine.pipelines.similarity.plan import CALIBRATION_UTTERANCES, plan_seqsim
from engine.runtime import devices as plan_lib
from engine.stores.similarity import check_measure

LARGE_V3 = preset("large-v3")
FRAMES_PER_SECOND = 50  # encoder frames


def random_sample(frames: dict, pair: tuple[str, str], dtype: str):
    """``(A, len_A, B, len_B)`` for ``engine.pipelines.similarity.plan.calibrate_pair_measure``: random states of
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
    parser.add_argument("--langs", type=int, default=102)
    parser.add_argument("--per_lang", type=int, default=500, help="utterances per language (FLEURS test: 350-650)")
    parser.add_argument("--seconds", type=float, default=10.0, help="mean utterance length")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--measure", default=",".join(DEFAULT_MEASURES), help="seqsim job measures (no ot)")
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

    rng = np.random.default_rng(0)
    langs = [f"l{i:03d}" for i in range(args.langs)]
    # Utterance lengths uniform in [0.5, 1.5] x the mean: all under 30 s, so one window each.
    seconds = {lang: rng.uniform(0.5, 1.5, args.per_lang) * args.seconds for lang in langs}
    frames = {lang: np.minimum(np.round(s * FRAMES_PER_SECOND), 1500).astype(int) for lang, s in seconds.items()}
    windows = {lang: np.ones(args.per_lang, int) for lang in langs}
    layers = tuple(range(LARGE_V3.n_encoder_layers_out))
    total_seconds = float(sum(s.sum() for s in seconds.values()))
    encode = plan_encode(
        LARGE_V3,
        windows,
        frames,
        total_seconds,
        layers=layers,
        dtype=args.dtype,
        compute_dtype=args.dtype,
        batch_size=8,
        prefetch=8,
        device=device,
        model="openai/whisper-large-v3 (dimensions only)",
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
        store="FLEURS test, large-v3 (synthetic lengths)",
        measures=measures,
        sample=random_sample(frames, pairs[0], args.dtype) if "dtw" in measures else None,
    )
    print(seqsim.render())


if __name__ == "__main__":
    main()
