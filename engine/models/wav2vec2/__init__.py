"""The wav2vec2 family (wav2vec2, XLS-R, MMS, HuBERT): ``loaded.load_wav2vec2`` is the entry point."""
