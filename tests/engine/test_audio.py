"""engine.data.audio: decoding real and broken files, resampling, windowing, frame counts."""

import io
import logging

import numpy as np
import pytest
import soundfile

from engine.data import audio as A
from engine.errors import AudioError, ShapeError
from engine.models.whisper import features as W


def _wav_bytes(samples, rate=A.SAMPLE_RATE, subtype="PCM_16") -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def _speechlike(n, seed=0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_constants_agree():
    assert A.N_SAMPLES == 480000 and W.N_FRAMES == 3000 and W.N_ENCODER_FRAMES == 1500
    assert W.SAMPLES_PER_ENCODER_FRAME == 2 * W.HOP_LENGTH == 320
    assert W.ENCODER_FRAMES_PER_SECOND * A.CHUNK_LENGTH == W.N_ENCODER_FRAMES


def test_load_fleurs_clips(fleurs_clips):
    """Every real clip decodes to 16 kHz mono float32 equal to libsndfile's own decoding."""
    for clip in fleurs_clips:
        audio = A.load_audio(clip)
        expected, rate = soundfile.read(clip, dtype="float32")
        assert rate == A.SAMPLE_RATE
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags.c_contiguous
        np.testing.assert_array_equal(audio, expected)


def test_sources_bytes_file_object_and_probe(fleurs_clips):
    clip = fleurs_clips[0]
    from_path = A.load_audio(str(clip))
    np.testing.assert_array_equal(A.load_audio(clip.read_bytes()), from_path)
    with open(clip, "rb") as f:
        np.testing.assert_array_equal(A.load_audio(f), from_path)
    info = A.probe_audio(clip)
    assert (info.sample_rate, info.channels, info.frames) == (16000, 1, from_path.size)
    assert (info.format, info.subtype) == ("OGG", "OPUS")
    assert info.duration_s == pytest.approx(from_path.size / 16000)
    with pytest.raises(AttributeError):
        info.sample_rate = 8000  # frozen


def test_missing_path(tmp_path):
    with pytest.raises(A.AudioNotFoundError, match=r"audio file '.*nope\.wav' does not exist; check the path"):
        A.load_audio(tmp_path / "nope.wav")
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        A.probe_audio(tmp_path / "nope.wav")
    with pytest.raises(A.AudioNotFoundError, match=r"is not a file"):
        A.load_audio(tmp_path)


def test_random_bytes_with_wav_suffix(tmp_path):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(A.AudioDecodeError, match=r"cannot decode audio '.*noise\.wav': Format not recognised"):
        A.load_audio(path)
    with pytest.raises(A.AudioDecodeError, match=r"noise\.wav"):
        A.probe_audio(path)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_real_ogg(fleurs_clips, tmp_path, keep):
    """Cut mid-stream, libsndfile would decode the head silently; cut in the headers, it cannot open the file."""
    data = fleurs_clips[0].read_bytes()
    path = tmp_path / "cut.ogg"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(A.AudioDecodeError, match=r"audio '.*cut\.ogg' is a truncated Ogg stream|cannot decode audio"):
        A.load_audio(path)
    if keep == 0.5:
        with pytest.raises(A.AudioDecodeError, match=r"truncated Ogg stream .* fetch the file again"):
            A.load_audio(path)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_wav_is_refused_not_read_short(tmp_path, keep):
    """libsndfile reads a WAV cut short up to the cut without complaint: a clip shorter than its header says would be
    stored as if whole, so the data chunk's size is checked against the bytes there."""
    data = _wav_bytes(0.1 * np.sin(np.arange(32000, dtype=np.float32) / 10))
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: int(len(data) * keep)])
    assert soundfile.info(str(path)).frames > 0  # libsndfile alone opens it
    with pytest.raises(A.AudioDecodeError, match=r"'.*cut\.wav' is a truncated WAV file: its data chunk announces "):
        A.load_audio(path)
    assert len(A.load_audio(data)) == 32000  # the whole file reads


def test_a_streamed_wav_with_placeholder_sizes_reads_whole():
    """espeak-ng writing to a pipe cannot seek back: its header says 0x7FFFF000 data bytes. Not a truncation."""
    import subprocess

    data = subprocess.run(["espeak-ng", "--stdout", "hello"], capture_output=True, check=True).stdout
    assert int.from_bytes(data[40:44], "little") >= 0x7FFF0000, data[:44]  # the data chunk's placeholder size
    assert len(A.load_audio(data)) > 0


def test_opposite_phase_channels_and_impossible_rates_are_named(tmp_path):
    x = 0.1 * np.sin(np.arange(16000, dtype=np.float32) / 10)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.stack([x, -x], axis=1), 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(A.SilentAudioError, match=r"silent once its 2 channels are averaged to mono .* opposite phase"):
        A.load_audio(buffer.getvalue())
    buffer = io.BytesIO()
    soundfile.write(buffer, x, 100, format="WAV", subtype="FLOAT")
    with pytest.raises(A.AudioRateError, match=r"sample rate of 100 Hz, below 4000 Hz"):
        A.load_audio(buffer.getvalue())
    buffer = io.BytesIO()
    soundfile.write(buffer, x[:8000], 8000, format="WAV", subtype="FLOAT")  # telephony: resampled, not refused
    assert len(A.load_audio(buffer.getvalue())) == 16000


def test_empty_file_and_zero_frames(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(A.EmptyAudioError, match=r"audio '.*empty\.wav' is empty \(0 bytes\)"):
        A.load_audio(path)
    header_only = _wav_bytes(np.zeros(0, np.float32))
    assert len(header_only) == 44
    with pytest.raises(A.EmptyAudioError, match=r"audio '<bytes>' has a valid header but 0 samples"):
        A.load_audio(header_only)


def test_silent_audio(tmp_path):
    path = tmp_path / "silence.wav"
    path.write_bytes(_wav_bytes(np.zeros(16000, np.float32)))
    with pytest.raises(A.SilentAudioError, match=r"'.*silence\.wav' is digital silence \(peak -inf dBFS.*allow_silent"):
        A.load_audio(path)
    np.testing.assert_array_equal(A.load_audio(path, allow_silent=True), np.zeros(16000, np.float32))
    # One 16-bit LSB (-90.3 dBFS) is still silence; two LSB (-84.3 dBFS) is not.
    lsb = np.zeros(16000, np.float32)
    lsb[::2] = 1 / 32768
    with pytest.raises(A.SilentAudioError, match=r"peak -90\.3 dBFS"):
        A.load_audio(_wav_bytes(lsb))
    assert A.load_audio(_wav_bytes(2 * lsb)).max() == pytest.approx(2 / 32768)


def test_nan_samples(tmp_path):
    samples = _speechlike(1000)
    samples[[10, 500]] = np.nan
    path = tmp_path / "nan.wav"
    path.write_bytes(_wav_bytes(samples, subtype="FLOAT"))
    with pytest.raises(A.NonFiniteAudioError, match=r"'.*nan\.wav' has 2 non-finite samples .* first at sample 10"):
        A.load_audio(path)
    samples[10:] = np.inf
    with pytest.raises(AudioError, match=r"non-finite"):
        A.load_audio(_wav_bytes(samples, subtype="FLOAT"))


def test_huge_float_amplitude_is_refused_not_turned_into_nan(tmp_path):
    samples = _speechlike(1000)
    path = tmp_path / "loud.wav"
    path.write_bytes(_wav_bytes(samples * 1e20, subtype="FLOAT"))
    with pytest.raises(A.AudioRangeError, match=r"'.*loud\.wav' peaks at .*e\+\d\d .* far outside .*rescale them"):
        A.load_audio(path)
    # int16 values written as float: named as such.
    with pytest.raises(A.AudioRangeError, match=r"int16 samples stored as float\? divide by 32768"):
        A.load_audio(_wav_bytes(np.round(samples / np.abs(samples).max() * 32767), subtype="FLOAT"))
    # Overshoot within +40 dBFS is float headroom, not an error, and is passed on unchanged.
    louder = A.load_audio(_wav_bytes(samples / np.abs(samples).max() * 90.0, subtype="FLOAT"))
    assert np.abs(louder).max() == pytest.approx(90.0, rel=1e-6)


def test_44k1_stereo_is_resampled_to_16k_mono(tmp_path):
    rate, seconds, hz = 44100, 2.0, 440.0
    t = np.arange(int(rate * seconds)) / rate
    left = 0.5 * np.sin(2 * np.pi * hz * t)
    right = 0.3 * np.sin(2 * np.pi * hz * t)  # in phase: the mean is a 0.4 amplitude sine
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    info = A.probe_audio(path)
    assert (info.sample_rate, info.channels, info.frames) == (44100, 2, 88200)

    audio = A.load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (32000,)  # 2 s at 16 kHz
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    peak_hz = np.argmax(spectrum) * A.SAMPLE_RATE / audio.size
    assert peak_hz == pytest.approx(hz, abs=0.5)
    # Away from the edges (filter ringing) the samples are the same sine, sampled at 16 kHz.
    t16 = np.arange(audio.size) / A.SAMPLE_RATE
    np.testing.assert_allclose(audio[800:-800], 0.4 * np.sin(2 * np.pi * hz * t16)[800:-800], atol=1e-3)
    # And a target rate other than 16 kHz works too.
    assert A.load_audio(path, sample_rate=8000).shape == (16000,)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"sample_rate must be a positive int"):
        A.load_audio(b"x", sample_rate=0)
    with pytest.raises(TypeError, match=r"audio source must be a path, bytes or a binary file object, got int"):
        A.load_audio(3)
    with pytest.raises(TypeError, match=r"open it in binary mode"):
        A.load_audio(io.StringIO("text"))


def test_split_windows_long_clip_round_trip():
    samples = 2 * A.N_SAMPLES + 12345  # 61 s: two full windows and a partial one
    audio = _speechlike(samples)
    windows, valid = W.split_windows(audio)
    assert windows.shape == (3, A.N_SAMPLES) and windows.dtype == np.float32
    assert valid.dtype == np.int32 and valid.tolist() == [A.N_SAMPLES, A.N_SAMPLES, 12345]
    flat = windows.reshape(-1)
    np.testing.assert_array_equal(flat[:samples], audio)
    assert not flat[samples:].any()
    np.testing.assert_array_equal(np.concatenate([w[:v] for w, v in zip(windows, valid, strict=True)]), audio)
    # ceil(12345 / 160) = 78 mel frames -> 39 encoder frames in the last window.
    assert W.encoder_frames(valid).tolist() == [1500, 1500, 39]
    assert W.encoder_frames(valid).sum() == 3039


def test_split_windows_real_long_clip(fleurs_clips):
    clip = next(c for c in fleurs_clips if c.name == "fleurs-de-009.ogg")  # 43.38 s
    audio = A.load_audio(clip)
    windows, valid = W.split_windows(audio)
    assert windows.shape[0] == 2 and valid.sum() == audio.size == 694080
    np.testing.assert_array_equal(np.concatenate([w[:v] for w, v in zip(windows, valid, strict=True)]), audio)
    assert W.encoder_frames(valid).tolist() == [1500, 669]  # 694080 - 480000 = 214080 samples = 1338 mel frames


def test_split_windows_truncate(caplog):
    audio = _speechlike(A.N_SAMPLES + 5000)
    with caplog.at_level(logging.INFO, logger="engine.models.common.logmel"):
        windows, valid = W.split_windows(audio, long_audio="truncate")
    assert windows.shape == (1, A.N_SAMPLES) and valid.tolist() == [A.N_SAMPLES]
    np.testing.assert_array_equal(windows[0], audio[: A.N_SAMPLES])
    assert "keeping the first 30 s of 30.31 s" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engine.models.common.logmel"):
        windows, valid = W.split_windows(audio[:100], long_audio="truncate")
    assert valid.tolist() == [100] and not caplog.text


def test_split_windows_exact_multiple_and_errors():
    windows, valid = W.split_windows(np.ones(2 * A.N_SAMPLES, np.float32))
    assert windows.shape[0] == 2 and valid.tolist() == [A.N_SAMPLES, A.N_SAMPLES]
    with pytest.raises(ValueError, match=r"long_audio='chunk' is not one of 'window', 'truncate'"):
        W.split_windows(np.ones(10, np.float32), long_audio="chunk")
    with pytest.raises(ShapeError, match=r"audio must be f32\[samples\] \(mono\), got shape \(10, 2\)"):
        W.split_windows(np.ones((10, 2), np.float32))
    with pytest.raises(A.EmptyAudioError, match=r"0 samples"):
        W.split_windows(np.zeros(0, np.float32))


def test_encoder_frames_convention():
    assert W.encoder_frames(A.N_SAMPLES) == 1500 and isinstance(W.encoder_frames(A.N_SAMPLES), int)
    assert W.encoder_frames(10 * A.N_SAMPLES) == 1500  # capped at one window
    samples = np.array([0, 1, 160, 161, 320, 321, 16000, A.N_SAMPLES - 1])
    # mel frames: 0, 1, 1, 2, 2, 3, 100, 3000 -> encoder frames: ceil(/2)
    assert W.encoder_frames(samples).tolist() == [0, 1, 1, 1, 1, 2, 50, 1500]
    assert W.encoder_frames(samples).dtype == np.int32
    # conv2 (kernel 3, stride 2, padding 1) over m frames gives floor((m + 2 - 3) / 2) + 1 = ceil(m / 2) outputs.
    for m in range(1, 50):
        assert W.encoder_frames(m * W.HOP_LENGTH) == (m + 2 - 3) // 2 + 1
    with pytest.raises(ValueError, match=r">= 0"):
        W.encoder_frames(-1)
    with pytest.raises(TypeError, match=r"integer sample counts"):
        W.encoder_frames(1.5)


def test_probe_reads_the_header_of_a_path_never_the_whole_file(tmp_path):
    """Issue 82 F22: ``encode --plan`` ("reads only headers") read a 3 GB junk .wav whole (3.5 GB of memory)."""
    import tracemalloc

    from engine.data.audio import AudioDecodeError, probe_audio

    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(32 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(AudioDecodeError, match="junk.wav"):
            probe_audio(junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20), f"probing a 32 MiB file allocated {peak} bytes"
