"""babelgrid's library: the handful of entry points a notebook needs.

    import engine
    whisper = engine.load_model()                      # the packaged whisper-base, or a hub id / folder / .pt
    owsm = engine.load_model("espnet/owsm_v3.1_ebf_base")  # any family's checkpoint, as its family loads it
    store = engine.open_store("out/demo/store")        # every encoder layer of every utterance
    sim = engine.open_similarity("out/demo/similarity")
    scores, rows, cols = sim.matrix("seqsim", "en", "de", layer=7)
    store.languages, sim.layers, sim.measures         # what a store holds: attributes (docs/analysis.md)
    engine.run_retrieval(engine.configure(engine.RetrievalConfig, similarity=..., ...))

Each job's library side is ``engine.pipelines.<job>.run``; its config is a frozen dataclass, given here beside its
``run_<job>`` (``run_encode`` and ``EncodeConfig``, ... ``run_verify`` and ``VerifyConfig``: every job's), and
``configure(Config, out=..., progress=False, ...)`` fills its run options. The names load on first use, so that
``import engine`` stays cheap (the jobs' ``--help`` never imports JAX through it).
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_FACE = {
    "load_model": "engine.models.family",
    "open_store": "engine.stores.reader",
    "open_similarity": "engine.stores.similarity",
    "configure": "engine.runtime.options",
    "RunOptions": "engine.runtime.options",
    "run_encode": "engine.pipelines.encode.run",
    "run_similarity": "engine.pipelines.seqsim.run",
    "run_retrieval": "engine.pipelines.retrieval.run",
    "run_align": "engine.pipelines.align.run",
    "run_decode": "engine.pipelines.decode.run",
    "run_interp": "engine.pipelines.interp.run",
    "run_challenge": "engine.pipelines.challenge.run",
    "run_probe": "engine.pipelines.probe.run",
    "run_finetune": "engine.pipelines.finetune.run",
    "run_compare": "engine.pipelines.compare.run",
    "run_probes": "engine.pipelines.probes.run",
    "run_verify": "engine.pipelines.verify.run",
    "run_neurons": "engine.pipelines.neurons.run",
    "run_heads": "engine.pipelines.heads.run",
    "run_typology": "engine.pipelines.typology.run",
    "run_sae": "engine.pipelines.sae.run",
    "run_outliers": "engine.pipelines.outliers.run",
    "open_sae": "engine.pipelines.sae.export",
    "run_mixing": "engine.pipelines.mixing.run",
    "run_series": "engine.pipelines.series.run",
    # each run_<job>'s config, for configure(Config, ...): from the light config modules where a job has one
    "EncodeConfig": "engine.pipelines.encode.config",
    "SimilarityConfig": "engine.pipelines.seqsim.config",
    "RetrievalConfig": "engine.pipelines.retrieval.config",
    "AlignConfig": "engine.pipelines.align.config",
    "DecodeConfig": "engine.pipelines.decode.config",
    "InterpConfig": "engine.pipelines.interp.config",
    "ChallengeConfig": "engine.pipelines.challenge.config",
    "ProbeConfig": "engine.pipelines.probe.config",
    "FinetuneConfig": "engine.pipelines.finetune.config",
    "CompareConfig": "engine.pipelines.compare.config",
    "ProbesConfig": "engine.pipelines.probes.config",
    "VerifyConfig": "engine.pipelines.verify.config",
    "NeuronsConfig": "engine.pipelines.neurons.config",
    "HeadsConfig": "engine.pipelines.heads.config",
    "TypologyConfig": "engine.pipelines.typology.config",
    "SaeConfig": "engine.pipelines.sae.config",
    "MixingConfig": "engine.pipelines.mixing.config",
    "OutliersConfig": "engine.pipelines.outliers.config",
    "SeriesConfig": "engine.pipelines.series.config",
}

__all__ = sorted(_FACE)


def __getattr__(name: str):
    if name not in _FACE:
        raise AttributeError(f"module 'engine' has no attribute {name!r}; the public names are {', '.join(__all__)}")
    value = getattr(importlib.import_module(_FACE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
