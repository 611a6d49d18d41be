"""``babelgrid run``: a study's stages as a graph, each a job process, skipped when its record still holds.

- ``spec``: the study file (vars, matrix, stages, after) read into ``Stage`` objects; every key checked.
- ``records``: what a stage's record holds and how it is compared: flags, input fingerprints, the output's listing,
  the versions that made it.
- ``graph``: which stage reads which one's output, what ``--only`` and ``--until`` select, why a stage runs.
- ``snakefile``: the study as a Snakefile (``--emit snakefile``).
- ``run``: the command itself.
"""
