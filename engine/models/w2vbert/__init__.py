"""The w2v-BERT 2.0 family: ``facebook/w2v-bert-2.0`` and the SeamlessM4T v2 speech encoder, one conformer encoder.

``config`` (what changes the computation), ``features`` (the Seamless fbank features), ``model`` (Flax NNX, every
layer), ``checkpoints`` (folders and hub ids), ``parallel`` (data parallel over a mesh), ``loaded`` (``load_w2vbert``).
"""
