"""The seqsim job's library side (``jobs/seqsim.py``): all-pairs similarity matrices of a layer store, by SeqSim and
the other measures of ``measures`` (pooled, DTW, OT), written to a similarity store (``engine.stores.similarity``).

Modules: ``config``, ``run`` (``run_similarity``), ``measures`` (the registry, which retrieval reads too), ``plan``
(``--plan``), ``summary``, ``transform`` (``--remove_language``), ``dimensions`` (``--dimensions``); ``tiling/`` cuts
the run's pairs under the memory budget.
"""
