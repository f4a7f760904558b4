"""Mu2SlamFeatureExtractor: 80-bin log-mel features at 16 kHz, computed batched with torch.

Framing is Kaldi-like and unpadded (``center=False``): a clip of ``n`` samples gives
``1 + (n - n_fft) // hop_length`` frames, frame ``t`` covering samples ``[t * hop_length, t * hop_length + n_fft)``.
No frame ever reads past the end of its clip, so features computed in a zero-padded batch equal the features of
each clip computed alone, on every real frame. Padded frames are set to ``padding_value`` (0.0).

Input conventions (enforced with ``ValueError`` messages that name the fix):

* ``sampling_rate`` is required and must be 16000, unless ``resample=True`` (then soxr resamples).
* Float audio is taken as is (expected in [-1, 1]). Integer PCM is scaled by ``1 / 2 ** (bits - 1)``: int16 by
  1/32768 and int32 by 1/2147483648, to [-1, 1). Other integer types (int8, uint8, int64 e.g. from a Python list of
  ints) are refused: their scale is ambiguous.
* Array shapes. Without ``mono``: a 1-D array is one clip; a 2-D array is a batch ``(batch, samples)`` of mono clips
  (transformers' convention), so a ``(channels, samples)`` stereo array would be read as a batch: pass ``mono=``
  for it. A 2-D array whose last axis is at most ``MAX_CHANNELS`` long is soundfile's ``(samples, channels)``
  layout and is refused with an error naming ``mono=``. With ``mono="mean"`` (average the channels) or
  ``mono="first"``, a 2-D array is one multichannel clip in either layout and a 3-D array a batch of them.
* Empty clips, NaN/inf samples and clips shorter than the model's receptive field (7 frames = 1360 samples = 85 ms)
  are refused.
"""

from __future__ import annotations

import io
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import soundfile
import soxr
import torch
from transformers import AutoFeatureExtractor, BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.utils import TensorType, logging

from .configuration_mu2slam import Mu2SlamConfig, receptive_field
from .input_checks import audio_file_problem, decoded_length_problem
from .vocabulary import SAMPLING_RATE

logger = logging.get_logger(__name__)

AudioInput = np.ndarray | torch.Tensor | Sequence[float] | Sequence[np.ndarray | torch.Tensor | Sequence[float]]
MonoMode = Literal["mean", "first"]


def resample(array: np.ndarray, sampling_rate: int, target_rate: int) -> np.ndarray:
    """(N,) float32 audio from ``sampling_rate`` to ``target_rate`` (soxr, high quality): the package's one resampler."""
    return soxr.resample(array, sampling_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def to_mono_16k(array: np.ndarray, sampling_rate: int, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Float32 mono at ``target_rate``: channels (last axis of a 2-D array) averaged, then resampled."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array.mean(axis=1)
    return array if sampling_rate == target_rate else resample(array, sampling_rate, target_rate)


def read_audio(source: str | os.PathLike | bytes, target_rate: int = SAMPLING_RATE) -> np.ndarray:
    """A file path or encoded bytes as (N,) float32 mono at ``target_rate``: libsndfile decodes (WAV, FLAC, OGG
    Vorbis/Opus, MP3), soxr resamples. Raises ``soundfile.SoundFileError`` for what libsndfile cannot open, OS
    errors, and a ValueError for a file cut short (fewer samples than its header promises). (Here rather than in
    ``mu2slam_hf.data`` so that a model folder's remote-code pipeline reads files the same way.)"""
    is_bytes = isinstance(source, bytes | bytearray)
    name = "<bytes>" if is_bytes else os.fspath(source)
    with soundfile.SoundFile(io.BytesIO(source) if is_bytes else source) as sound:
        problem = audio_file_problem(sound, name)
        try:
            array = sound.read(dtype="float32", always_2d=False)
        except soundfile.LibsndfileError as error:  # e.g. "flac decoder lost sync" at the cut
            problem = problem or (
                f"audio {name} is cut short or corrupt: decoding stopped with '{error}'. Re-encode or re-download the "
                "file"
            )
        else:
            problem = problem or decoded_length_problem(len(array), sound.frames, name)
        if problem:
            raise ValueError(f"{problem}.")
        return to_mono_16k(array, sound.samplerate, target_rate)


# Floor on a clip's own per-bin standard deviation (``normalize_vars``): a bin that never changes in a clip (a band
# the recording lacks, digital silence) keeps its zero instead of being blown up.
UTTERANCE_MIN_STD = 1e-3
# A (samples, channels) array has at most this many channels; no real clip is this short (the minimum is 1360).
MAX_CHANNELS = 32
# Integer PCM types we know how to scale to [-1, 1): full scale is 2 ** (bits - 1).
_PCM_SCALES = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def num_frames(num_samples: int, n_fft: int = 400, hop_length: int = 160) -> int:
    """Log-mel frames of a clip of ``num_samples`` samples (unpadded framing); 0 when shorter than one window."""
    return 0 if num_samples < n_fft else 1 + (num_samples - n_fft) // hop_length


class Mu2SlamFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Log-mel feature extractor of Mu2SLAM: ``feature_size`` (80) mel bins at 16 kHz, 25 ms Hann window (``n_fft``
    400), 10 ms hop (160), power spectrum, Slaney mel filter bank (0-8 kHz), natural log floored at ``mel_floor``.
    Optionally normalised per mel bin by each clip's own statistics (``normalize_means``, ``normalize_vars``: the
    utterance CMVN of Speech2Text and Kaldi), then by corpus statistics (see [`compute_normalization_stats`]).

    Args:
        feature_size (`int`): number of mel bins.
        sampling_rate (`int`): the only sampling rate the features are defined for.
        n_fft (`int`): window and FFT length in samples.
        hop_length (`int`): hop between frames in samples.
        padding_value (`float`): value of padded frames in `input_features`.
        mel_floor (`float`): floor applied to mel energies before the log.
        min_frames (`int`): fewest frames a clip must give: the receptive field of the model's speech front end.
        normalize_means (`bool`): subtract each clip's mean over its real frames, per mel bin. A recording's gain
            and its microphone's colouring add a constant to each bin of the log-mel: this removes them, so a model
            trained on one kind of recording hears another as it heard the first.
        normalize_vars (`bool`): also divide by each clip's standard deviation per mel bin (needs ``normalize_means``).
        do_normalize (`bool`): subtract `feature_mean` and divide by `feature_std`, per mel bin (after the
            per-clip normalisation).
        feature_mean / feature_std (`list[float]`, *optional*): per-bin statistics, length `feature_size`.
        return_attention_mask (`bool`): return the frame mask (1 = real frame) by default.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = SAMPLING_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        padding_value: float = 0.0,
        mel_floor: float = 1e-10,
        min_frames: int = receptive_field(),
        normalize_means: bool = False,
        normalize_vars: bool = False,
        do_normalize: bool = False,
        feature_mean: list[float] | None = None,
        feature_std: list[float] | None = None,
        return_attention_mask: bool = True,
        **kwargs,
    ):
        super().__init__(
            feature_size=feature_size,
            sampling_rate=sampling_rate,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            **kwargs,
        )
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.mel_floor = mel_floor
        self.min_frames = min_frames
        self.normalize_means = bool(normalize_means)
        self.normalize_vars = bool(normalize_vars)
        self.do_normalize = do_normalize
        self.feature_mean = None if feature_mean is None else [float(v) for v in feature_mean]
        self.feature_std = None if feature_std is None else [float(v) for v in feature_std]
        self._check_normalization_stats()
        # (n_fft // 2 + 1, feature_size); dropped from the serialised config by `to_dict`.
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=feature_size,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        ).astype(np.float32)

    # ------------------------------------------------------------------ config

    @property
    def min_num_samples(self) -> int:
        """Fewest samples a clip needs: ``n_fft + (min_frames - 1) * hop_length`` (1360 = 85 ms by default)."""
        return self.n_fft + (self.min_frames - 1) * self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames this extractor makes of a clip of ``num_samples`` samples (at ``sampling_rate``)."""
        return num_frames(num_samples, self.n_fft, self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        return {key: value for key, value in output.items() if not key.startswith("_")}

    def _check_normalization_stats(self) -> None:
        if self.normalize_vars and not self.normalize_means:
            raise ValueError(
                "normalize_vars=True divides each clip's features by their standard deviation around the clip's "
                "mean: set normalize_means=True as well."
            )
        for name in ("feature_mean", "feature_std"):
            stats = getattr(self, name)
            if stats is not None and len(stats) != self.feature_size:
                raise ValueError(f"{name} has {len(stats)} values, expected feature_size={self.feature_size}.")
        if self.feature_std is not None and min(self.feature_std) <= 0:
            raise ValueError("feature_std must be positive in every mel bin.")
        if self.do_normalize and (self.feature_mean is None or self.feature_std is None):
            raise ValueError(
                "do_normalize=True needs feature_mean and feature_std: compute them with "
                "`feature_extractor.compute_normalization_stats(corpus_audio)` or pass do_normalize=False."
            )

    # ------------------------------------------------------------------ call

    def __call__(
        self,
        raw_speech: AudioInput,
        sampling_rate: int | None = None,
        *,
        resample: bool = False,
        mono: MonoMode | None = None,
        padding: bool | str = True,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | TensorType | None = None,
        return_attention_mask: bool | None = None,
        do_normalize: bool | None = None,
        device: str | torch.device | None = None,
        backend: Literal["torch", "numpy"] = "torch",
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch of clips.

        Args:
            raw_speech: one clip (1-D array/tensor or list of floats) or a batch: a list of clips or a 2-D array
                ``(batch, samples)``. With ``mono`` set, a clip may be 2-D ``(channels, samples)`` or
                ``(samples, channels)`` (the shorter axis is taken as channels), and a 3-D array is a batch of them.
            sampling_rate: sampling rate of ``raw_speech``; required.
            resample: resample with soxr (HQ) when ``sampling_rate`` is not 16000, instead of raising.
            mono: how to downmix multichannel clips: ``"mean"`` or ``"first"`` channel; ``None`` refuses them.
            padding: ``True``/``"longest"`` pads to the longest clip; ``False``/``"do_not_pad"`` returns one
                ``(T_i, feature_size)`` array per clip (only with ``return_tensors=None``).
            pad_to_multiple_of: round the padded frame count up to a multiple of this.
            return_tensors: ``"pt"`` (tensors stay on ``device``), ``"np"`` or ``None`` (numpy).
            return_attention_mask: include ``attention_mask``; defaults to ``self.return_attention_mask``.
            do_normalize: override ``self.do_normalize``.
            device: where the torch path computes (e.g. ``"cuda"``); default CPU.
            backend: ``"torch"`` (batched STFT) or ``"numpy"`` (same result, slower; no device).

        Returns:
            [`BatchFeature`] with ``input_features`` ``(batch, frames, feature_size)`` float32 and
            ``attention_mask`` ``(batch, frames)`` (1 = real frame; int64 for ``"pt"``, int32 otherwise).
        """
        if kwargs:
            raise TypeError(f"Unexpected arguments {sorted(kwargs)} for {type(self).__name__}.__call__.")
        pad = self._padding_flag(padding, return_tensors)
        clips = self.prepare_audio(raw_speech, sampling_rate, resample=resample, mono=mono)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        if backend == "torch":
            features, lengths = self._extract_torch(clips, device, do_normalize)
        elif backend == "numpy":
            if device is not None and torch.device(device).type != "cpu":
                raise ValueError(f"backend='numpy' runs on the CPU only; use backend='torch' for device={device}.")
            features, lengths = self._extract_numpy(clips, do_normalize)
        else:
            raise ValueError(f"backend must be 'torch' or 'numpy', got {backend!r}.")
        return self._to_batch_feature(
            features, lengths, pad, pad_to_multiple_of, return_tensors, return_attention_mask
        )

    @staticmethod
    def _padding_flag(padding: bool | str, return_tensors: str | TensorType | None) -> bool:
        if padding in (True, "longest"):
            return True
        if padding in (False, "do_not_pad"):
            if return_tensors is not None:
                raise ValueError("padding=False gives clips of different lengths: use it with return_tensors=None.")
            return False
        raise ValueError(f"padding must be True/'longest' or False/'do_not_pad', got {padding!r}.")

    def _to_batch_feature(
        self,
        features: torch.Tensor | np.ndarray,
        lengths: list[int],
        pad: bool,
        pad_to_multiple_of: int | None,
        return_tensors: str | TensorType | None,
        return_attention_mask: bool | None,
    ) -> BatchFeature:
        return_attention_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        as_torch = return_tensors is not None and TensorType(return_tensors) == TensorType.PYTORCH
        if as_torch:
            features = torch.as_tensor(features)
        else:
            features = features.cpu().numpy() if isinstance(features, torch.Tensor) else features
        if not pad:
            data = {"input_features": [features[i, :length] for i, length in enumerate(lengths)]}
            if return_attention_mask:
                data["attention_mask"] = [np.ones(length, dtype=np.int32) for length in lengths]
            return BatchFeature(data)
        if pad_to_multiple_of:
            extra = -features.shape[1] % pad_to_multiple_of
            if extra:
                features = _pad_time(features, extra, self.padding_value)
        data = {"input_features": features}
        if return_attention_mask:
            positions = np.arange(features.shape[1])[None, :] < np.asarray(lengths)[:, None]
            if as_torch:
                data["attention_mask"] = torch.as_tensor(positions, dtype=torch.long, device=features.device)
            else:
                data["attention_mask"] = positions.astype(np.int32)
        return BatchFeature(data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ input validation

    def prepare_audio(
        self,
        raw_speech: AudioInput,
        sampling_rate: int | None,
        *,
        resample: bool = False,
        mono: MonoMode | None = None,
    ) -> list[np.ndarray]:
        """Validate and convert the input to a list of mono float32 clips at ``self.sampling_rate``.

        Raises a ``ValueError`` naming the problem and its fix for a missing or wrong sampling rate, multichannel
        audio without ``mono``, an unsupported dtype, empty clips, NaN/inf samples and clips that are too short.
        """
        if mono not in (None, "mean", "first"):
            raise ValueError(f"mono must be None, 'mean' or 'first', got {mono!r}.")
        self._check_sampling_rate(sampling_rate, resample)
        clips = _split_batch(raw_speech, clip_ndim=1 if mono is None else 2)
        return [self._prepare_clip(clip, index, sampling_rate, mono) for index, clip in enumerate(clips)]

    def _check_sampling_rate(self, sampling_rate: int | None, resample: bool) -> None:
        if sampling_rate is None:
            raise ValueError(
                f"sampling_rate is required: pass the rate of your audio, e.g. sampling_rate={self.sampling_rate}. "
                f"Features are defined at {self.sampling_rate} Hz; other rates need resample=True."
            )
        if sampling_rate <= 0:
            raise ValueError(f"sampling_rate must be positive, got {sampling_rate}.")
        if sampling_rate != self.sampling_rate and not resample:
            raise ValueError(
                f"The audio is sampled at {sampling_rate} Hz but {type(self).__name__} expects "
                f"{self.sampling_rate} Hz. Resample it beforehand, or pass resample=True to resample with soxr."
            )

    def _prepare_clip(self, clip: Any, index: int, sampling_rate: int, mono: MonoMode | None) -> np.ndarray:
        name = f"clip {index}"
        array = _to_float32(clip, name)
        if array.ndim == 2:
            array = _downmix(array, mono, name)
        elif array.ndim != 1:
            raise ValueError(f"{name} has shape {array.shape}: expected a 1-D mono waveform (samples,).")
        if array.size == 0:
            raise ValueError(f"{name} is empty: every clip needs at least {self.min_num_samples} samples.")
        if not np.isfinite(array).all():
            bad = np.flatnonzero(~np.isfinite(array))
            raise ValueError(
                f"{name} has {bad.size} NaN/inf samples (first at sample {bad[0]}): clean or drop the clip."
            )
        if np.abs(array).max() > 1.0 + 1e-3:
            logger.warning_once(
                "Float audio with samples beyond [-1, 1]: if it holds integer PCM values (e.g. int16 stored as "
                "float), divide it by 32768 or pass the int16 array itself."
            )
        if sampling_rate != self.sampling_rate:
            array = resample(array, sampling_rate, self.sampling_rate)
        if array.shape[0] < self.min_num_samples:
            raise ValueError(
                f"{name} has {array.shape[0]} samples ({1000 * array.shape[0] / self.sampling_rate:.1f} ms at "
                f"{self.sampling_rate} Hz) but the model needs at least {self.min_num_samples} samples "
                f"({1000 * self.min_num_samples / self.sampling_rate:.0f} ms, {self.min_frames} frames): drop it or "
                "pad it with silence."
            )
        return array

    # ------------------------------------------------------------------ feature computation

    def _extract_torch(
        self, clips: list[np.ndarray], device: str | torch.device | None, do_normalize: bool
    ) -> tuple[torch.Tensor, list[int]]:
        """Log-mel of a zero-padded batch: returns ``(batch, frames, feature_size)`` float32 and the real frame
        counts, also when called under autocast (a bf16 mel product would keep 3 significant digits, and the
        features would differ from the float32 ones the model was trained on)."""
        device = torch.device("cpu" if device is None else device)
        with torch.autocast(device.type, enabled=False):
            return self._log_mel_torch(clips, device, do_normalize)

    def _log_mel_torch(
        self, clips: list[np.ndarray], device: torch.device, do_normalize: bool
    ) -> tuple[torch.Tensor, list[int]]:
        lengths = [self.num_frames(len(clip)) for clip in clips]
        padded = np.zeros((len(clips), max(len(clip) for clip in clips)), dtype=np.float32)
        for row, clip in zip(padded, clips, strict=True):
            row[: len(clip)] = clip  # numpy row copies: ~100x faster than assigning into torch row views
        waveforms = torch.from_numpy(padded).to(device)
        window = torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32, device=device)
        # rfft of unfolded frames == torch.stft(center=False), and much faster for the non-power-of-two n_fft 400.
        frames = waveforms.unfold(-1, self.n_fft, self.hop_length)  # (batch, frames, n_fft), a view
        spectrum = torch.fft.rfft(frames * window, dim=-1)  # (batch, frames, n_fft // 2 + 1)
        power = spectrum.real.square() + spectrum.imag.square()
        mel_filters = torch.from_numpy(self.mel_filters).to(device)
        features = torch.matmul(power, mel_filters).clamp_min_(self.mel_floor).log_()
        frame_counts = torch.tensor(lengths, device=device)
        real = torch.arange(features.shape[1], device=device)[None, :] < frame_counts[:, None]
        if self.normalize_means:
            features = self._normalize_utterances_torch(features, real, frame_counts)
        if do_normalize:
            mean = torch.tensor(self.feature_mean, dtype=torch.float32, device=device)
            std = torch.tensor(self.feature_std, dtype=torch.float32, device=device)
            features.sub_(mean).div_(std)
        return features.masked_fill_(~real[..., None], self.padding_value), lengths

    def _normalize_utterances_torch(
        self, features: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """``(batch, frames, bins)`` log-mel minus each clip's per-bin mean over its ``real`` ``(batch, frames)``
        frames (divided by its standard deviation with ``normalize_vars``); padded frames are left to the caller."""
        weights = real[..., None].to(features.dtype)
        counts = lengths.clamp_min(1).to(features.dtype)[:, None, None]
        mean = (features * weights).sum(1, keepdim=True) / counts
        features = features - mean
        if self.normalize_vars:
            std = ((features.square() * weights).sum(1, keepdim=True) / counts).sqrt().clamp_min(UTTERANCE_MIN_STD)
            features = features / std
        return features

    def _extract_numpy(self, clips: list[np.ndarray], do_normalize: bool) -> tuple[np.ndarray, list[int]]:
        """Numpy twin of `_extract_torch` (float64 internally): ``(batch, frames, feature_size)`` float32."""
        lengths = [self.num_frames(len(clip)) for clip in clips]
        window = np.hanning(self.n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window(periodic=True)
        features = np.full((len(clips), max(lengths), self.feature_size), self.padding_value, dtype=np.float32)
        for row, clip, length in zip(features, clips, lengths, strict=True):
            frames = np.lib.stride_tricks.sliding_window_view(clip.astype(np.float64), self.n_fft)[
                :: self.hop_length
            ]  # (frames, n_fft)
            spectrum = np.fft.rfft(frames * window, axis=-1)
            mel = (spectrum.real**2 + spectrum.imag**2) @ self.mel_filters.astype(np.float64)
            log_mel = np.log(np.maximum(mel, self.mel_floor))[:length]
            if self.normalize_means:
                log_mel = log_mel - log_mel.mean(0)
                if self.normalize_vars:
                    log_mel = log_mel / np.maximum(np.sqrt(np.square(log_mel).mean(0)), UTTERANCE_MIN_STD)
            if do_normalize:
                log_mel = (log_mel - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)
            row[:length] = log_mel
        return features, lengths

    # ------------------------------------------------------------------ normalisation statistics

    def compute_normalization_stats(
        self,
        audio: Iterable[np.ndarray | torch.Tensor | Sequence[float]],
        sampling_rate: int | None = None,
        *,
        batch_size: int = 16,
        resample: bool = False,
        mono: MonoMode | None = None,
        device: str | torch.device | None = None,
        min_std: float = 1e-5,
    ) -> tuple[list[float], list[float]]:
        """Per-mel-bin mean and standard deviation of the log-mel features of a corpus, over real frames.

        Stores them in ``feature_mean`` / ``feature_std`` and sets ``do_normalize=True``, so they travel with
        ``save_pretrained``. Accumulates in float64, ``batch_size`` clips at a time.

        Args:
            audio: an iterable of clips (each as accepted by ``__call__``), all at ``sampling_rate``.
            sampling_rate: rate of the clips; defaults to ``self.sampling_rate``.
            min_std: floor on the standard deviation (bins that never change, e.g. above a band limit).

        Returns:
            ``(feature_mean, feature_std)``, each a list of ``feature_size`` floats.
        """
        sampling_rate = self.sampling_rate if sampling_rate is None else sampling_rate
        self._check_sampling_rate(sampling_rate, resample)
        total = torch.zeros(self.feature_size, dtype=torch.float64)
        total_sq = torch.zeros(self.feature_size, dtype=torch.float64)
        count = 0
        for batch in _chunks(audio, batch_size):
            clips = [self._prepare_clip(clip, i, sampling_rate, mono) for i, clip in enumerate(batch)]
            features, lengths = self._extract_torch(clips, device, do_normalize=False)
            real = torch.cat([features[i, :length] for i, length in enumerate(lengths)]).to("cpu", torch.float64)
            total += real.sum(0)
            total_sq += real.square().sum(0)
            count += real.shape[0]
        if count == 0:
            raise ValueError("compute_normalization_stats got no audio: pass a non-empty iterable of clips.")
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt().clamp_min(min_std)
        self.feature_mean, self.feature_std = mean.tolist(), std.tolist()
        self.do_normalize = True
        logger.info(f"Log-mel normalisation statistics from {count} frames.")
        return self.feature_mean, self.feature_std


# ---------------------------------------------------------------------- helpers


def _split_batch(raw_speech: AudioInput, clip_ndim: int) -> list[Any]:
    """A batch as a list of clips. Top-level arrays with ``clip_ndim + 1`` dimensions are batches."""
    if isinstance(raw_speech, (np.ndarray, torch.Tensor)):
        if raw_speech.ndim == clip_ndim:
            return [raw_speech]
        if raw_speech.ndim == clip_ndim + 1:
            if clip_ndim == 1:
                _refuse_channels_last(tuple(raw_speech.shape))
            if len(raw_speech) == 0:
                raise ValueError("Got an empty batch: pass at least one clip.")
            return list(raw_speech)
        hint = "" if clip_ndim == 2 else " For multichannel audio pass mono='mean' (or 'first')."
        raise ValueError(
            f"Got an array of shape {tuple(raw_speech.shape)}: expected {clip_ndim}-D (one clip) or "
            f"{clip_ndim + 1}-D (a batch).{hint}"
        )
    if isinstance(raw_speech, (list, tuple)):
        if len(raw_speech) == 0:
            raise ValueError("Got an empty list: pass one clip or a non-empty list of clips.")
        if isinstance(raw_speech[0], numbers.Number):
            return [raw_speech]
        return list(raw_speech)
    raise ValueError(f"Expected audio as a numpy array, a torch tensor or a list, got {type(raw_speech).__name__}.")


def _refuse_channels_last(shape: tuple[int, ...]) -> None:
    """A 2-D batch whose rows are a few samples long is multichannel audio in soundfile's (samples, channels)."""
    samples, channels = shape
    if channels <= MAX_CHANNELS < samples:
        raise ValueError(
            f"Got an array of shape {shape}: this is {channels}-channel audio in soundfile's (samples, channels) "
            "layout, but a 2-D array is read as a batch (batch, samples) of mono clips. Pass mono='mean' to "
            "average the channels or mono='first' to keep the first one (or downmix it yourself: array.mean(axis=1))."
        )


def _to_float32(clip: Any, name: str) -> np.ndarray:
    """A clip as float32 numpy, integer PCM scaled to [-1, 1) by its full scale."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    array = np.asarray(clip)
    if array.dtype in _PCM_SCALES:
        return (array / _PCM_SCALES[array.dtype]).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} has integer dtype {array.dtype}, whose scale is ambiguous. Pass float audio in [-1, 1], or "
            "int16/int32 PCM (scaled by 1/32768 and 1/2**31)."
        )
    raise ValueError(f"{name} has dtype {array.dtype}: expected float audio in [-1, 1] or int16/int32 PCM.")


def _downmix(array: np.ndarray, mono: MonoMode | None, name: str) -> np.ndarray:
    """``(channels, samples)`` or ``(samples, channels)`` -> ``(samples,)``; the shorter axis is the channels."""
    if mono is None:
        raise ValueError(
            f"{name} has shape {array.shape}, which looks like multichannel audio. Pass mono='mean' to average "
            "the channels or mono='first' to keep the first one."
        )
    if array.shape[0] == array.shape[1]:
        raise ValueError(f"{name} has shape {array.shape}: cannot tell channels from samples.")
    channel_axis = 0 if array.shape[0] < array.shape[1] else 1
    if mono == "mean":
        return array.mean(axis=channel_axis, dtype=np.float32)
    return np.ascontiguousarray(np.take(array, 0, axis=channel_axis))


def _pad_time(features: torch.Tensor | np.ndarray, extra: int, value: float) -> torch.Tensor | np.ndarray:
    """Append ``extra`` frames of ``value`` to ``(batch, frames, bins)`` features."""
    if isinstance(features, torch.Tensor):
        return torch.nn.functional.pad(features, (0, 0, 0, extra), value=value)
    return np.pad(features, ((0, 0), (0, extra), (0, 0)), constant_values=value)


def _chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


AutoFeatureExtractor.register(Mu2SlamConfig, Mu2SlamFeatureExtractor, exist_ok=True)
Mu2SlamFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = ["Mu2SlamFeatureExtractor", "num_frames"]
