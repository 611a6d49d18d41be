"""OWSM v3.1 (ESPnet's Open Whisper-style Speech Models): E-Branchformer encoder, Transformer decoder, CTC head.

``config`` (what changes the computation, from ESPnet's ``config.yaml``), ``features`` (ESPnet's default frontend and
global MVN over 30 s windows), ``model`` (the encoder in Flax NNX, every layer), ``decoder`` (prompt logits, greedy
decoding with a KV cache, the CTC head), ``checkpoints`` (ESPnet's published layout, folders and hub ids), ``layout``
(telling that layout from others without reading weights), ``parallel`` (data parallel over a mesh), ``loaded``
(``load_owsm``), ``encoder`` (the family interface, ``engine.models.family``), ``languages`` (store codes to OWSM's
language tokens).
"""
