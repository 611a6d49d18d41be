"""Decoder fine-tuning on a frozen encoder, from a layer store's final-layer states (issue 15, arXiv 2407.01130).

Modules: ``step`` (parameters as flat dicts, the optimiser, the pure teacher-forced train step), ``data`` (pairs
of stored states and target texts, the held-out split, length buckets), ``ewc`` (diagonal Fisher and penalty),
``checkpoints`` (orbax state with a sha256 manifest, verified before a restore), ``export`` (what export needs, checked
before training), ``run`` (the job's loop: evaluation, checkpoints, metrics, export). Glossary: ``params`` is a flat
``{"blocks.0.cross_attn.query.kernel": array}`` dict of the decoder's parameters (our layouts, kernels
``[in, out]``); ``trainable`` the subset that the optimiser changes, ``frozen`` the rest.
"""
