"""Decoder fine-tuning on a frozen encoder, from a layer store's final-layer states (issue 15, arXiv 2407.01130).

Modules: ``step`` (parameters as flat dicts, the optimiser, the pure teacher-forced train step), ``data`` (pairs
of stored states and target texts, the held-out split, length buckets), ``ewc`` (diagonal Fisher and penalty),
``checkpoints`` (orbax state with a sha256 manifest, verified before a restore), ``export`` (what export needs, checked
before training), ``run`` (the job's loop: evaluation, checkpoints, metrics, export). The model is the store's family's
``Trainer`` (``engine.models.interface``; the registry's ``trainer`` loader). Glossary: ``params`` is a flat
``{name: array}`` dict of the decoder's parameters in the family's own names (Whisper's
``"blocks.0.cross_attn.query.kernel"``); ``trainable`` the subset that the optimiser changes, ``frozen`` the rest.
"""
