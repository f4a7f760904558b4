"""Corruptions of training audio (mu2slam_hf.data.augmentation): each does what its name says, seeded draws repeat."""

import numpy as np
import pytest
import soundfile as sf

from mu2slam_hf.data.augmentation import (
    AudioAugmentation,
    add_noise,
    coloured_noise,
    mu_law_decode,
    mu_law_encode,
    reverberate,
    room_impulse_response,
    telephone_channel,
)

RATE = 16000


def tone(frequency: float, seconds: float = 1.0, level: float = 0.3) -> np.ndarray:
    return (level * np.sin(2 * np.pi * frequency * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


def band_energy(signal: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(signal)) ** 2
    frequencies = np.fft.rfftfreq(signal.size, 1 / RATE)
    return float(spectrum[(frequencies >= low) & (frequencies <= high)].sum())


def test_add_noise_reaches_the_asked_signal_to_noise_ratio():
    clip, rng = tone(440), np.random.default_rng(0)
    for colour in ("white", "pink", "brown"):
        noisy = add_noise(clip, coloured_noise(clip.size, colour, rng), 12.0)
        snr = 10 * np.log10(np.mean(clip**2) / np.mean((noisy - clip) ** 2))
        assert snr == pytest.approx(12.0, abs=1e-3) and noisy.dtype == np.float32
    silent = np.zeros(100, dtype=np.float32)
    assert add_noise(silent, coloured_noise(100, "white", rng), 10.0) is silent


def test_coloured_noise_spectra_fall_with_frequency():
    rng = np.random.default_rng(1)
    for colour, slower in (("white", False), ("pink", True), ("brown", True)):
        noise = coloured_noise(4 * RATE, colour, rng)
        low, high = band_energy(noise, 100, 1000), band_energy(noise, 4100, 5000)
        assert (low > 3 * high) == slower, colour


def test_room_reverberation_decays_by_60_db_in_rt60_and_keeps_length_and_peak():
    rng = np.random.default_rng(2)
    response = room_impulse_response(0.5, rng)
    assert response.size == RATE // 2 and np.sum(response**2) == pytest.approx(1.0, rel=1e-5)
    envelope = np.abs(response[1:]) / np.abs(response[1:]).max()
    assert envelope[-800:].max() < 10 ** (-40 / 20)  # the last 50 ms are far below the start
    clip = tone(300, 0.5)
    wet = reverberate(clip, 0.5, rng)
    assert wet.shape == clip.shape and np.abs(wet).max() == pytest.approx(np.abs(clip).max(), rel=1e-5)
    assert not np.allclose(wet, clip)


def test_telephone_channel_keeps_the_voice_band_only():
    speech_band, low, high = tone(1000), tone(100), tone(6000)
    assert telephone_channel(speech_band).shape == speech_band.shape
    assert band_energy(telephone_channel(speech_band), 900, 1100) > 0.5 * band_energy(speech_band, 900, 1100)
    assert band_energy(telephone_channel(low), 0, 8000) < 0.01 * band_energy(low, 0, 8000)
    assert band_energy(telephone_channel(high), 0, 8000) < 0.01 * band_energy(high, 0, 8000)
    levels = np.linspace(-1, 1, 1001)
    assert np.abs(mu_law_decode(mu_law_encode(levels)) - levels).max() < 0.04  # 8 bits, companded
    assert set(np.unique(mu_law_encode(levels))) <= set(range(256))


def test_the_same_seed_corrupts_the_same_way_and_probabilities_hold():
    augmentation = AudioAugmentation(reverb_probability=0.5, noise_probability=0.5, telephone_probability=0.5)
    clips = [tone(300 + 100 * i, 0.3) for i in range(4)]
    first = augmentation(clips, np.random.default_rng(7))
    again = augmentation(clips, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(a.shape == c.shape for a, c in zip(first, clips, strict=True))
    draws = augmentation.draw(10_000, np.random.default_rng(0))
    assert np.mean([d is not None for d in draws]) == pytest.approx(1 - 0.5**3, abs=0.02)
    for field in ("reverb", "noise", "telephone"):  # each at its own probability, independently of the others
        assert np.mean([d is not None and getattr(d, field) for d in draws]) == pytest.approx(0.5, abs=0.02)
    assert AudioAugmentation().active is False and AudioAugmentation.from_dict({}) is None
    assert all(d is not None for d in AudioAugmentation(gain_db=(-3.0, 3.0)).draw(3, np.random.default_rng(0)))


def test_noise_files_are_read_from_a_folder(tmp_path):
    sf.write(tmp_path / "hum.wav", tone(50, 0.2), RATE)
    augmentation = AudioAugmentation(noise_probability=1.0, babble_fraction=0.0, noise_dir=str(tmp_path))
    clip = tone(1000, 0.5)
    noisy = augmentation([clip], np.random.default_rng(0))[0]
    assert band_energy(noisy - clip, 40, 60) > 0.9 * band_energy(noisy - clip, 0, 8000)  # the hum, not white noise
    with pytest.raises(ValueError, match="holds no audio files"):
        AudioAugmentation(noise_probability=1.0, noise_dir=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"noise_probability": 1.5}, r"noise_probability is a probability in \[0, 1\]"),
        ({"noise_snr_db": [20, 5]}, r"noise_snr_db is a \[low, high\] range"),
        ({"reverb_rt60_s": [0.0, 0.5]}, r"reverb_rt60_s must lie in \(0, 3\]"),
        ({"gain_db": 3}, r"gain_db is a \[low, high\] range"),
        ({"noise": 0.5}, r"unknown keys \['noise'\]"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        AudioAugmentation.from_dict(options)
