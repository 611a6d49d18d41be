"""How the seqsim job cuts its all-pairs work under the memory budget: ``tiles`` (languages in tiles, the order the
pairs are walked in, pairs split into blocks of utterances, work units of about equal FLOPs, and the states a
process holds while it walks that order) and ``blocks`` (a split pair's blocks staged, then committed whole).

It sizes work by the seqsim measures' costs and packing (``engine.pipelines.seqsim.measures``), so it sits in the
seqsim room, not in ``engine.runtime`` (which imports no pipeline).
"""
