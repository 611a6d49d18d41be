"""The three store jobs every new family's store must carry (issue 83's acceptance: "encodes the demo set with a random
folder of each kind and runs seqsim, probes and heads on it"), each run through its library call on a store a test
module has written, with the checks that do not depend on the family:

- ``seqsim_reads``: the similarity store holds every pair of languages at the asked layers, finite, ids shared;
- ``lid_probe_reads``: the probes job's language ID writes a row per asked layer;
- ``heads_reads``: every head of every block ablated over the first utterance of each language (one pass per block
  and the unablated one), scored at one stored layer: the unablated pass pools the store's own states there (the
  heads job re-runs the encoder from the audio, so this is the store against a fresh forward pass, within 1e-5 of
  the peak in f32), and every head's ablation moves them.

The family-specific checks (every layer against transformers, the head masks against the library's attention) stay
in each family's own modules.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from engine.pipelines.heads.config import HeadsConfig
from engine.pipelines.heads.run import run_heads
from engine.pipelines.probes.config import ProbesConfig
from engine.pipelines.probes.run import run_probes
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.stores.similarity import open_similarity


def seqsim_reads(store: pathlib.Path, out: pathlib.Path, layers: tuple[int, ...], langs: int, per_lang: int) -> None:
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(out), measures=("seqsim",), layers=layers,
                             progress=False))  # fmt: skip
    similarity = open_similarity(str(out))
    pairs = similarity.pairs("seqsim")
    assert len(pairs) == langs * (langs - 1) // 2 and all(similarity.done("seqsim", *p) == list(layers) for p in pairs)
    for layer in layers:
        scores, ids_a, ids_b = similarity.matrix("seqsim", *pairs[0], layer)
        assert scores.shape == (per_lang, per_lang) and np.isfinite(scores).all() and ids_a == ids_b, layer


def lid_probe_reads(store: pathlib.Path, out: pathlib.Path, layers: tuple[int, ...], folds: int) -> None:
    run_probes(configure(ProbesConfig, store=str(store), out=str(out), probes=("lid",), folds=folds, layers=layers,
                         progress=False))  # fmt: skip
    table = (out / "lid.csv").read_text().splitlines()
    assert len(table) > 1 and {int(r.split(",")[0]) for r in table[1:]} == set(layers)


def heads_reads(store: pathlib.Path, folder: pathlib.Path, out: pathlib.Path, layer: int) -> None:
    """The heads job at stored ``layer`` on the first utterance (``s0``) of each language of ``store``."""
    reader = open_store(str(store))
    langs = reader.languages
    summary = run_heads(configure(HeadsConfig, out=str(out), store=str(store), model=str(folder), utterances=1,
                                  layers=(layer,), batch_size=4, importance=("none",), progress=False))  # fmt: skip
    with np.load(out / "parts" / "none.npz") as unablated:
        plain = unablated["pooled"][0, 0]
    blocks = summary.passes - 1  # the unablated pass, then one per block
    assert summary.utterances == len(langs) and blocks >= 1
    table = pd.read_parquet(out / "heads.parquet")
    # One utterance a language: R@1 over one candidate is 1 whatever the heads, so it is not measured (no rows)
    assert not (table["metric"] == "r1").any(), table
    with np.load(out / "parts" / "block1.npz") as ablated:
        heads = range(ablated["pooled"].shape[0])
    assert len(heads) > 1
    want = np.stack([reader.states(lang, "s0", layer).mean(axis=0) for lang in langs])
    np.testing.assert_allclose(plain, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for block in range(1, blocks + 1):
        with np.load(out / "parts" / f"block{block}.npz") as ablated:
            moved = np.abs(ablated["pooled"][:, 0] - plain[None]).max(axis=(1, 2))
        assert len(moved) == len(heads) and np.isfinite(moved).all(), (block, moved)
        assert (moved > 1e-6 * np.abs(plain).max()).all(), (block, moved)
