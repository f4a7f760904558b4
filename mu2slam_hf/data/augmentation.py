"""Corruptions of training audio that the field uses for robustness to real recording conditions.

Each training clip independently gets, with its probability: room reverberation (a synthetic room impulse
response: a direct path and exponentially decaying noise with a reverberation time drawn from a range, the
simulation ESPnet's and Kaldi's recipes fall back on without a recorded RIR set), additive noise at a signal-to-
noise ratio drawn from a range (coloured noise, or another clip of the same batch as babble, or a file of a noise
corpus such as MUSAN when ``noise_dir`` is given), a telephone channel (8 kHz band, 300-3,400 Hz, G.711 mu-law
8-bit codec), and a gain. The order is the physical one: the room, then the noise, then the channel, then the
level. Draws come from one numpy generator per batch, seeded by the training step, so a resumed run corrupts the
same clips the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..feature_extraction_mu2slam import SAMPLING_RATE, read_audio, resample

NOISE_COLOURS = ("white", "pink", "brown")
NOISE_FILE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
TELEPHONE_RATE, TELEPHONE_LOW_HZ, TELEPHONE_HIGH_HZ = 8000, 300.0, 3400.0
MU_LAW_LEVELS = 255  # G.711: 8-bit mu-law


class Corruptions(NamedTuple):
    """The corruptions one clip was drawn to get (its gain aside, which every clip gets when set)."""

    reverb: bool
    noise: bool
    telephone: bool


@dataclass(frozen=True)
class AudioAugmentation:
    """Which corruptions a training clip gets, and how strong they are.

    Args:
        reverb_probability: chance of a synthetic room (0: never).
        reverb_rt60_s: range of the room's reverberation time (seconds to decay by 60 dB).
        noise_probability: chance of additive noise.
        noise_snr_db: range of the signal-to-noise ratio (dB).
        babble_fraction: of the noisy clips, the share whose noise is another clip of the batch (speech babble);
            the rest get coloured noise, or a noise file where ``noise_dir`` is set.
        noise_dir: a folder of noise recordings (wav/flac/ogg/mp3, any rate; read once, resampled to 16 kHz).
        telephone_probability: chance of the telephone channel.
        gain_db: range of a gain applied to every clip ((0, 0): none).
    """

    reverb_probability: float = 0.0
    reverb_rt60_s: tuple[float, float] = (0.2, 0.8)
    noise_probability: float = 0.0
    noise_snr_db: tuple[float, float] = (5.0, 25.0)
    babble_fraction: float = 0.3
    noise_dir: str | None = None
    telephone_probability: float = 0.0
    gain_db: tuple[float, float] = (0.0, 0.0)
    _noises: list[np.ndarray] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("reverb_probability", "noise_probability", "babble_fraction", "telephone_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"audio_augmentation.{name} is a probability in [0, 1], got {value!r}.")
        for name in ("reverb_rt60_s", "noise_snr_db", "gain_db"):
            low, high = _range(self, name)
            if low > high:
                raise ValueError(f"audio_augmentation.{name} is a [low, high] range, got [{low}, {high}].")
        low, high = _range(self, "reverb_rt60_s")
        if low <= 0 or high > 3.0:
            raise ValueError(f"audio_augmentation.reverb_rt60_s must lie in (0, 3] seconds, got [{low}, {high}].")
        if self.noise_dir is not None:
            object.__setattr__(self, "_noises", load_noises(self.noise_dir))

    @classmethod
    def from_dict(cls, options: dict[str, Any] | None) -> AudioAugmentation | None:
        """An augmentation from a recipe's ``audio_augmentation`` mapping; None for an empty or absent one."""
        if not options:
            return None
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"audio_augmentation: unknown keys {unknown}; the keys are {sorted(known)}.")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})

    @property
    def active(self) -> bool:
        return bool(self.reverb_probability or self.noise_probability or self.telephone_probability
                    or self.gain_db != (0.0, 0.0))  # fmt: skip

    def draw(self, count: int, rng: np.random.Generator) -> list[Corruptions | None]:
        """Which corruptions each of ``count`` clips gets (None: none), drawn before the clips are decoded, so that
        the clean ones can keep using cached features."""
        probabilities = (self.reverb_probability, self.noise_probability, self.telephone_probability)
        hits = rng.random((count, len(probabilities))) < np.asarray(probabilities)
        gain = self.gain_db != (0.0, 0.0)
        return [Corruptions(*map(bool, row)) if row.any() or gain else None for row in hits]

    def __call__(self, clips: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Each clip (N,) float32 at 16 kHz with its own draws; the other clips of ``clips`` serve as babble."""
        drawn = self.draw(len(clips), rng)
        return [clip if corruptions is None else self.corrupt(clip, corruptions, index, clips, rng)
                for index, (clip, corruptions) in enumerate(zip(clips, drawn, strict=True))]  # fmt: skip

    def corrupt(
        self,
        clip: np.ndarray,
        corruptions: Corruptions,
        index: int,
        batch: Sequence[np.ndarray],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """One clip (N,) with its ``corruptions``, in the physical order: room, noise, channel, level. ``batch[index]``
        is the clip itself; the others may be its babble."""
        out = clip.astype(np.float32)
        if corruptions.reverb:
            out = reverberate(out, rng.uniform(*self.reverb_rt60_s), rng)
        if corruptions.noise:
            out = add_noise(out, self._noise_for(len(out), index, batch, rng), rng.uniform(*self.noise_snr_db))
        if corruptions.telephone:
            out = telephone_channel(out)
        gain = rng.uniform(*self.gain_db)
        return (out * 10 ** (gain / 20)).astype(np.float32) if gain else out

    def _noise_for(self, length: int, index: int, batch: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        others = [clip for i, clip in enumerate(batch) if i != index and clip.size]
        if others and rng.random() < self.babble_fraction:
            return fit_length(others[rng.integers(len(others))], length, rng)
        if self._noises:
            return fit_length(self._noises[rng.integers(len(self._noises))], length, rng)
        return coloured_noise(length, NOISE_COLOURS[rng.integers(len(NOISE_COLOURS))], rng)


def _range(augmentation: AudioAugmentation, name: str) -> tuple[float, float]:
    value = getattr(augmentation, name)
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise ValueError(f"audio_augmentation.{name} is a [low, high] range, got {value!r}.")
    return float(value[0]), float(value[1])


def load_noises(noise_dir: str | os.PathLike) -> list[np.ndarray]:
    """Every noise recording under ``noise_dir`` at 16 kHz mono; a clear error for a folder without any."""
    paths = sorted(p for p in Path(noise_dir).rglob("*") if p.suffix.lower() in NOISE_FILE_SUFFIXES)
    if not paths:
        raise ValueError(
            f"audio_augmentation.noise_dir {str(noise_dir)!r} holds no audio files ({', '.join(NOISE_FILE_SUFFIXES)}): "
            "point it at a noise corpus (e.g. MUSAN's noise folder) or leave it unset for generated noise."
        )
    noises = [read_audio(str(path)) for path in paths]
    return [noise for noise in noises if noise.size and np.any(noise)]


def fit_length(noise: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``length``-sample stretch of ``noise``, repeated where it is shorter."""
    if noise.size < length:
        noise = np.tile(noise, length // noise.size + 1)
    start = rng.integers(noise.size - length + 1)
    return noise[start : start + length]


def coloured_noise(length: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (N,) with a power spectrum of 1 (white), 1/f (pink) or 1/f^2 (brown)."""
    white = rng.standard_normal(length).astype(np.float32)
    if colour == "white" or length < 2:
        return white
    spectrum = np.fft.rfft(white)
    frequencies = np.arange(1, spectrum.size, dtype=np.float64)
    exponent = 0.5 if colour == "pink" else 1.0
    spectrum[1:] /= frequencies**exponent
    spectrum[0] = 0.0
    return np.fft.irfft(spectrum, n=length).astype(np.float32)


def add_noise(clip: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``clip`` with ``noise`` (same length) scaled to ``snr_db`` below the clip's power; a silent clip or noise is
    returned as it is."""
    clip_power, noise_power = float(np.mean(clip**2)), float(np.mean(noise**2))
    if clip_power == 0.0 or noise_power == 0.0:
        return clip
    scale = np.sqrt(clip_power / (noise_power * 10 ** (snr_db / 10)))
    return (clip + scale * noise).astype(np.float32)


def room_impulse_response(rt60_s: float, rng: np.random.Generator, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """A synthetic room impulse response (M,): the direct path, then Gaussian noise decaying by 60 dB in ``rt60_s``
    seconds (Schroeder's statistical model of late reverberation), normalised to unit energy."""
    length = max(int(rt60_s * sampling_rate), 2)
    times = np.arange(length) / sampling_rate
    tail = rng.standard_normal(length) * np.exp(-6.908 * times / rt60_s)  # ln(1000) = 6.908: -60 dB at rt60
    tail[0] = 0.0
    response = tail * 0.3
    response[0] = 1.0
    return (response / np.sqrt(np.sum(response**2))).astype(np.float32)


def reverberate(clip: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """``clip`` heard in a synthetic room of reverberation time ``rt60_s``: the same length, the same peak level."""
    if clip.size == 0:
        return clip
    response = room_impulse_response(rt60_s, rng)
    size = clip.size + response.size - 1
    wet = np.fft.irfft(np.fft.rfft(clip, size) * np.fft.rfft(response, size), size)[: clip.size]
    peak, wet_peak = float(np.max(np.abs(clip))), float(np.max(np.abs(wet)))
    return (wet * (peak / wet_peak) if wet_peak > 0 else wet).astype(np.float32)


def telephone_channel(clip: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """``clip`` as a narrow-band phone line carries it: 8 kHz, band-passed to 300-3,400 Hz, G.711 mu-law 8-bit,
    then back at ``sampling_rate`` (the same length)."""
    if clip.size == 0:
        return clip
    narrow = resample(clip, sampling_rate, TELEPHONE_RATE).astype(np.float64)
    spectrum = np.fft.rfft(narrow)
    frequencies = np.fft.rfftfreq(narrow.size, 1 / TELEPHONE_RATE)
    spectrum[(frequencies < TELEPHONE_LOW_HZ) | (frequencies > TELEPHONE_HIGH_HZ)] = 0.0
    band = np.fft.irfft(spectrum, n=narrow.size)
    peak = float(np.max(np.abs(band))) or 1.0
    coded = mu_law_decode(mu_law_encode(band / peak)) * peak
    wide = resample(coded.astype(np.float32), TELEPHONE_RATE, sampling_rate)
    return _same_length(wide, clip.size)


def mu_law_encode(signal: np.ndarray) -> np.ndarray:
    """Signal in [-1, 1] -> integer codes 0..255 (G.711 mu-law)."""
    mu = MU_LAW_LEVELS
    companded = np.sign(signal) * np.log1p(mu * np.abs(np.clip(signal, -1, 1))) / np.log1p(mu)
    return np.round((companded + 1) / 2 * mu).astype(np.int64)


def mu_law_decode(codes: np.ndarray) -> np.ndarray:
    mu = MU_LAW_LEVELS
    companded = codes.astype(np.float64) / mu * 2 - 1
    return np.sign(companded) * ((1 + mu) ** np.abs(companded) - 1) / mu


def _same_length(array: np.ndarray, length: int) -> np.ndarray:
    if array.size >= length:
        return array[:length].astype(np.float32)
    return np.pad(array, (0, length - array.size)).astype(np.float32)
