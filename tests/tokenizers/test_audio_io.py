"""Audio reading and bad input: every bad file is a MediaError naming it, or a configured trim/skip."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from omniseq.tokenizers.audio_io import AudioIOConfig, load_audio
from omniseq.tokenizers.base import MediaError

SR = 16000


def tone(seconds: float = 0.5, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


@pytest.mark.parametrize(
    "fmt,subtype", [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")]
)
def test_reads_wav_flac_ogg_mp3(tmp_path, fmt, subtype):
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, tone(sr=22050), 22050, format=fmt, subtype=subtype)
    clip = load_audio(path, SR)
    assert clip.sample_rate == SR and clip.samples.dtype == np.float32
    assert abs(clip.seconds - 0.5) < 0.1  # lossy formats pad a little
    assert 0.3 < np.abs(clip.samples).max() <= 0.6


@pytest.mark.parametrize("subtype,tol", [("PCM_U8", 1e-2), ("PCM_24", 1e-6), ("FLOAT", 0)])
def test_8_bit_24_bit_and_float_wav(tmp_path, subtype, tol):
    x = tone()
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, SR, subtype=subtype)
    np.testing.assert_allclose(load_audio(path, SR).samples, x, atol=tol + 1e-7)


@pytest.mark.parametrize("channels", [2, 6])
def test_stereo_and_multichannel_are_mixed_down(tmp_path, channels):
    x = np.stack([tone(amp=0.1 * (c + 1)) for c in range(channels)], axis=1)  # [T, C]
    path = tmp_path / f"c{channels}.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    clip = load_audio(path, SR)
    assert clip.samples.shape == (x.shape[0],)
    np.testing.assert_allclose(clip.samples, x.mean(axis=1), atol=1e-6)


def test_silence_is_kept_by_default_and_rejected_with_min_rms(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    assert not load_audio(path, SR).samples.any()
    with pytest.raises(MediaError, match=r"silence\.wav.*silent"):
        load_audio(path, SR, AudioIOConfig(min_rms=1e-3))


def test_clipping_is_clamped(tmp_path):
    path = tmp_path / "clipped.wav"
    sf.write(path, 3 * tone(), SR, subtype="FLOAT")  # float WAV can hold |x| > 1
    y = load_audio(path, SR).samples
    assert np.abs(y).max() == pytest.approx(1.0)


def test_nan_samples_name_the_file(tmp_path):
    x = tone()
    x[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SR, subtype="FLOAT")
    with pytest.raises(MediaError, match=r"nan\.wav.*sample 100"):
        load_audio(path, SR)


def test_empty_files_name_the_file(tmp_path):
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(MediaError, match=r"zero\.wav.*empty"):
        load_audio(tmp_path / "zero.wav", SR)
    sf.write(tmp_path / "noframes.wav", np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(MediaError, match=r"noframes\.wav.*no audio samples"):
        load_audio(tmp_path / "noframes.wav", SR)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"not audio at all" * 100)
    with pytest.raises(MediaError, match=r"junk\.wav.*unreadable"):
        load_audio(tmp_path / "junk.wav", SR)
    with pytest.raises(MediaError, match=r"absent\.flac.*not found"):
        load_audio(tmp_path / "absent.flac", SR)


def test_over_the_length_limit_errors_or_trims(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, tone(seconds=3.0, sr=8000), 8000)
    with pytest.raises(MediaError, match=r"long\.wav.*max_seconds"):
        load_audio(path, SR, AudioIOConfig(max_seconds=2.0))
    clip = load_audio(path, SR, AudioIOConfig(max_seconds=2.0, on_too_long="trim"))
    assert clip.samples.shape == (2 * SR,)


def test_arrays_need_a_rate_and_accept_channels_first():
    with pytest.raises(MediaError, match="sample rate"):
        load_audio(tone(), SR)
    stereo = np.stack([tone(), -tone()])  # [C, T] as torch lays it out
    assert load_audio((stereo, SR), SR).samples.shape == (stereo.shape[1],)


@pytest.mark.parametrize(
    "dtype, full_scale", [(np.int16, 32768), (np.int32, 2**31), (np.uint8, 128)], ids=["int16", "int32", "uint8"]
)
def test_integer_pcm_arrays_are_scaled_not_clipped(dtype, full_scale):
    # scipy.io.wavfile gives int16: a bare cast would clip nearly every sample to +-1
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)
    pcm = np.round(wave * full_scale + (full_scale if dtype == np.uint8 else 0)).astype(dtype)
    clip = load_audio((pcm, 8000), 8000)
    assert np.abs(clip.samples - wave).max() < 2 / full_scale + 1e-6


def test_int64_samples_are_refused_not_scaled_into_silence():
    # int16-range samples in an int64 array (or a Python list of ints) were divided by 2^63: RMS 1e-15
    pcm = np.round(0.3 * np.sin(np.arange(800) / 5) * 32767).astype(np.int64)
    for media in (pcm, [int(v) for v in pcm]):
        with pytest.raises(MediaError, match="int64 samples: pass int16 or int32 PCM .* or float"):
            load_audio((media, 8000), 8000)
    assert np.abs(load_audio((pcm.astype(np.int16), 8000), 8000).samples).max() > 0.25  # the way it says to


@pytest.mark.parametrize("rate", [0, -16000])
def test_a_sample_rate_below_one_is_refused(rate):
    with pytest.raises(MediaError, match=rf"<array \(100,\)>: sample rate must be > 0 Hz, got {rate}"):
        load_audio((tone()[:100], rate), SR)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_a_clip_with_nothing_left_after_resampling_is_a_media_error(rate):
    # one sample at 44.1 / 48 kHz resamples to none at 16 kHz; a codec's convs then failed with a RuntimeError
    from omniseq.tokenizers.audio import RVQAudioTokenizer, RVQCodecConfig

    with pytest.raises(MediaError, match=rf"1 sample\(s\) at {rate} Hz is too short"):
        load_audio((np.full(1, 0.1, np.float32), rate), SR)
    tok = RVQAudioTokenizer(RVQCodecConfig(channels=4, latent_dim=8, num_quantizers=2, layers_used=2, codebook_size=16))
    with pytest.raises(MediaError, match="too short"):
        tok.encode(np.full(1, 0.1, np.float32), sample_rate=rate)
