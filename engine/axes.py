"""Axis names, defined once.

The same strings label TensorStore dimensions, sharding specs and docstrings:

- ``LAYER``: encoder layer index, see ``engine.models.whisper.model`` for the indexing
  (0 = conv stem + positions, 1..L = block outputs, L+1 = ``ln_post`` output).
- ``UTTERANCE``: one utterance of one language.
- ``FRAME``: encoder frame, 50 per second of audio (20 ms).
- ``EMBED``: model width (``n_audio_state``).
- ``DATA``: the 1-D device mesh axis that batches are split over.
"""

LAYER = "layer"
UTTERANCE = "utterance"
FRAME = "frame"
EMBED = "embed"
DATA = "data"
