"""Whisper's front end: the 30 s log-mel windows of ``engine.models.common.logmel``, which Whisper and the speech
LLMs' Whisper-style encoders (``engine.models.speechllm``) share. Whisper's modules and its users keep importing the
names from here."""

from engine.models.common.logmel import (  # noqa: F401 (the names Whisper's modules and tests read from here)
    CHUNK_LENGTH,
    DYNAMIC_RANGE,
    ENCODER_FRAMES_PER_SECOND,
    FEATURES,
    FRAME_RATE,
    HOP_LENGTH,
    LOG_FLOOR,
    N_ENCODER_FRAMES,
    N_FFT,
    N_FRAMES,
    N_FREQS,
    N_SAMPLES,
    SAMPLE_RATE,
    SAMPLES_PER_ENCODER_FRAME,
    encoder_frames,
    features_for_audio,
    log_mel_spectrogram,
    mel_filters,
    reference_log_mel_spectrogram,
    split_windows,
)
