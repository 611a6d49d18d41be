"""The FastConformer family: the encoders of NVIDIA's Parakeet (CTC, TDT, RNN-T) and Canary models, as transformers'
``ParakeetEncoder`` builds them (issue 47)."""
