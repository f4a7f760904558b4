"""Mu2SlamFeatureExtractor: frame counts, batching, backends, normalisation, persistence and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor
from transformers.audio_utils import spectrogram, window_function

from mu2slam_hf import Mu2SlamConfig, Mu2SlamFeatureExtractor
from mu2slam_hf.feature_extraction_mu2slam import num_frames

SR = 16000
LENGTHS = (1360, 1500, 4321, 16000, 23456)


@pytest.fixture(scope="module")
def extractor() -> Mu2SlamFeatureExtractor:
    return Mu2SlamFeatureExtractor()


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(max(LENGTHS)) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    return [(tone[:n] + 0.05 * rng.standard_normal(n)).astype(np.float32) for n in LENGTHS]


def test_frame_count_formula(extractor):
    config = Mu2SlamConfig()
    assert extractor.min_num_samples == 1360  # 25 ms + 6 * 10 ms = 85 ms
    assert extractor.num_frames(extractor.min_num_samples) == config.min_input_frames == 7
    assert [num_frames(n) for n in (399, 400, 559, 560, 16000)] == [0, 1, 1, 2, 98]


def test_batched_equals_one_by_one(extractor, clips):
    batch = extractor(clips, sampling_rate=SR, return_tensors="pt")
    features, mask = batch["input_features"], batch["attention_mask"]
    assert features.shape == (len(clips), num_frames(max(LENGTHS)), 80) and features.dtype == torch.float32
    assert mask.sum(-1).tolist() == [num_frames(n) for n in LENGTHS]
    for i, clip in enumerate(clips):
        alone = extractor(clip, sampling_rate=SR, return_tensors="pt")["input_features"][0]
        assert alone.shape[0] == num_frames(len(clip))
        torch.testing.assert_close(features[i, : alone.shape[0]], alone, atol=1e-5, rtol=0)
        assert torch.all(features[i, alone.shape[0] :] == 0)


def test_matches_transformers_reference_spectrogram(extractor, clips):
    reference = spectrogram(
        clips[2].astype(np.float64),
        window_function(400, "hann"),
        frame_length=400,
        hop_length=160,
        power=2.0,
        center=False,
        mel_filters=extractor.mel_filters.astype(np.float64),
        log_mel="log",
        mel_floor=1e-10,
    ).T
    ours = extractor(clips[2], sampling_rate=SR, return_tensors="np")["input_features"][0]
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_numpy_backend_agrees_with_torch(extractor, clips):
    torch_features = extractor(clips, sampling_rate=SR, return_tensors="np")
    numpy_features = extractor(clips, sampling_rate=SR, return_tensors="np", backend="numpy")
    np.testing.assert_array_equal(torch_features["attention_mask"], numpy_features["attention_mask"])
    np.testing.assert_allclose(torch_features["input_features"], numpy_features["input_features"], atol=1e-4)


def test_features_are_float32_under_autocast(extractor, clips):
    """A model evaluated under bf16 autocast (training's dev decoding, a user's pipeline) gets the same float32
    features it was trained on, not a bf16 mel product."""
    reference = extractor(clips, sampling_rate=SR, return_tensors="pt")["input_features"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = extractor(clips, sampling_rate=SR, return_tensors="pt")["input_features"]
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, reference, atol=0, rtol=0)


def test_output_forms(extractor, clips):
    as_numpy = extractor(clips[:2], sampling_rate=SR)
    assert isinstance(as_numpy["input_features"], np.ndarray) and as_numpy["attention_mask"].dtype == np.int32
    unpadded = extractor(clips[:2], sampling_rate=SR, padding=False)
    assert [f.shape for f in unpadded["input_features"]] == [(num_frames(n), 80) for n in LENGTHS[:2]]
    padded = extractor(clips[:2], sampling_rate=SR, pad_to_multiple_of=8, return_tensors="pt")
    assert padded["input_features"].shape[1] % 8 == 0 and padded["attention_mask"].dtype == torch.long
    no_mask = extractor(clips[:2], sampling_rate=SR, return_attention_mask=False)
    assert "attention_mask" not in no_mask
    # A 2-D array is a batch of equal-length mono clips; a list of floats is one clip.
    assert extractor(np.stack([clips[0], clips[0]]), sampling_rate=SR)["input_features"].shape[0] == 2
    assert extractor(clips[0].tolist(), sampling_rate=SR)["input_features"].shape[0] == 1


def test_pad_works_for_collators(extractor, clips):
    examples = [{"input_features": f} for f in extractor(clips[:3], sampling_rate=SR, padding=False)["input_features"]]
    collated = extractor.pad(examples, return_tensors="pt")
    direct = extractor(clips[:3], sampling_rate=SR, return_tensors="pt")
    torch.testing.assert_close(collated["input_features"], direct["input_features"])
    assert torch.equal(collated["attention_mask"].long(), direct["attention_mask"])


def test_save_load_round_trip(tmp_path, clips):
    extractor = Mu2SlamFeatureExtractor()
    extractor.compute_normalization_stats(clips, sampling_rate=SR, batch_size=2)
    extractor.save_pretrained(tmp_path)
    for loaded in (Mu2SlamFeatureExtractor.from_pretrained(tmp_path), AutoFeatureExtractor.from_pretrained(tmp_path)):
        assert type(loaded) is Mu2SlamFeatureExtractor
        assert loaded.to_dict() == extractor.to_dict()
        np.testing.assert_array_equal(
            loaded(clips, sampling_rate=SR)["input_features"], extractor(clips, sampling_rate=SR)["input_features"]
        )


def test_normalization_stats(clips):
    extractor = Mu2SlamFeatureExtractor()
    mean, std = extractor.compute_normalization_stats(iter(clips), sampling_rate=SR, batch_size=2)
    assert extractor.do_normalize and len(mean) == len(std) == 80 and min(std) > 0
    raw = Mu2SlamFeatureExtractor()(clips, sampling_rate=SR, return_tensors="pt")
    real = raw["input_features"][raw["attention_mask"].bool()].double()
    np.testing.assert_allclose(mean, real.mean(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std, real.std(0, unbiased=False).numpy(), rtol=1e-5, atol=1e-6)
    normalized = extractor(clips, sampling_rate=SR, return_tensors="pt")
    values = normalized["input_features"][normalized["attention_mask"].bool()]
    torch.testing.assert_close(values.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
    torch.testing.assert_close(values.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)
    assert torch.all(normalized["input_features"][~normalized["attention_mask"].bool()] == 0)
    unnormalized = extractor(clips, sampling_rate=SR, return_tensors="pt", do_normalize=False)
    torch.testing.assert_close(unnormalized["input_features"], raw["input_features"])


def test_int16_is_scaled_by_full_scale(extractor, clips):
    pcm = np.round(clips[1] * 32767).astype(np.int16)
    from_int = extractor(pcm, sampling_rate=SR)["input_features"]
    from_float = extractor(pcm.astype(np.float32) / 32768, sampling_rate=SR)["input_features"]
    np.testing.assert_allclose(from_int, from_float, atol=1e-5)


def test_downmix(extractor, clips):
    left, right = clips[1], clips[1] * 0.5
    expected = extractor((left + right) / 2, sampling_rate=SR)["input_features"]
    for stereo in (np.stack([left, right]), np.stack([left, right], axis=1)):  # (C, n) and (n, C)
        np.testing.assert_allclose(
            extractor(stereo, sampling_rate=SR, mono="mean")["input_features"], expected, atol=1e-5
        )
    first = extractor(np.stack([left, right], axis=1), sampling_rate=SR, mono="first")["input_features"]
    np.testing.assert_allclose(first, extractor(left, sampling_rate=SR)["input_features"], atol=1e-6)


def test_resampling_when_asked(extractor):
    clip = np.random.default_rng(1).standard_normal(44100).astype(np.float32) * 0.1  # 1 s at 44.1 kHz
    features = extractor(clip, sampling_rate=44100, resample=True)["input_features"]
    assert features.shape == (1, num_frames(16000), 80)


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (np.zeros(16000, np.float32), {"sampling_rate": None}, "sampling_rate is required"),
        (np.zeros(16000, np.float32), {"sampling_rate": 8000}, "resample=True"),
        (np.zeros((2, 16000), np.float32), {"sampling_rate": SR, "mono": None}, None),  # a batch of two: valid
        ([np.zeros((2, 16000), np.float32)], {"sampling_rate": SR}, "mono='mean'"),
        (np.zeros((2, 2, 16000), np.float32), {"sampling_rate": SR}, "mono='mean'"),
        (np.zeros((4, 4), np.float32), {"sampling_rate": SR, "mono": "mean"}, "cannot tell channels"),
        (np.zeros(16000, np.float32), {"sampling_rate": SR, "mono": "sum"}, "mono must be"),
        (np.zeros(0, np.float32), {"sampling_rate": SR}, "is empty"),
        ([], {"sampling_rate": SR}, "empty list"),
        (np.full(16000, np.nan, np.float32), {"sampling_rate": SR}, "NaN/inf"),
        (
            np.r_[np.zeros(100), np.inf, np.zeros(9000)].astype(np.float32),
            {"sampling_rate": SR},
            "first at sample 100",
        ),
        (np.zeros(1359, np.float32), {"sampling_rate": SR}, "at least 1360 samples (85 ms"),
        (np.zeros(16000, np.int64), {"sampling_rate": SR}, "int16/int32 PCM"),
        (np.zeros(16000, np.uint8), {"sampling_rate": SR}, "scale is ambiguous"),
        (np.zeros(16000, np.complex64), {"sampling_rate": SR}, "expected float audio"),
        ("audio.wav", {"sampling_rate": SR}, "numpy array, a torch tensor or a list"),
        (
            np.zeros(16000, np.float32),
            {"sampling_rate": SR, "padding": False, "return_tensors": "pt"},
            "padding=False",
        ),
        (np.zeros(16000, np.float32), {"sampling_rate": SR, "backend": "jax"}, "backend must be"),
    ],
)
def test_bad_input_raises_helpful_value_error(extractor, audio, kwargs, message):
    if message is None:
        assert extractor(audio, **kwargs)["input_features"].shape[0] == 2
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("*", r"\*")):
        extractor(audio, **kwargs)


def test_resampled_clip_too_short_is_refused(extractor):
    with pytest.raises(ValueError, match="at least 1360 samples"):
        extractor(np.zeros(3000, np.float32), sampling_rate=44100, resample=True)  # 1088 samples at 16 kHz


def test_normalize_without_stats_is_refused():
    with pytest.raises(ValueError, match="compute_normalization_stats"):
        Mu2SlamFeatureExtractor(do_normalize=True)
    with pytest.raises(ValueError, match="feature_mean has 3 values"):
        Mu2SlamFeatureExtractor(feature_mean=[0.0] * 3, feature_std=[1.0] * 3)


@pytest.mark.parametrize("normalize_vars", [False, True])
def test_per_clip_normalization(clips, normalize_vars):
    """Each clip's real frames get zero mean (and unit spread) per mel bin, in a padded batch as alone and in the
    numpy twin; a clip played louder or through a tilted microphone (a per-bin offset of its log-mel) gives the same
    features."""
    extractor = Mu2SlamFeatureExtractor(normalize_means=True, normalize_vars=normalize_vars)
    batch = extractor(clips, sampling_rate=SR, return_tensors="pt")
    features = batch["input_features"]
    numpy_twin = extractor(clips, sampling_rate=SR, backend="numpy")["input_features"]
    torch.testing.assert_close(features, torch.from_numpy(numpy_twin), atol=1e-4, rtol=0)
    for i, clip in enumerate(clips):
        alone = extractor(clip, sampling_rate=SR, return_tensors="pt")["input_features"][0]
        torch.testing.assert_close(features[i, : alone.shape[0]], alone, atol=1e-5, rtol=0)
        assert torch.all(features[i, alone.shape[0] :] == 0)
        torch.testing.assert_close(alone.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
        if normalize_vars:
            torch.testing.assert_close(alone.std(0, unbiased=False), torch.ones(80), atol=1e-3, rtol=0)
    louder = extractor([clip * 2.5 for clip in clips], sampling_rate=SR, return_tensors="pt")["input_features"]
    torch.testing.assert_close(louder, features, atol=1e-4, rtol=0)
    assert not torch.allclose(
        Mu2SlamFeatureExtractor()([c * 2.5 for c in clips], sampling_rate=SR, return_tensors="pt")["input_features"],
        Mu2SlamFeatureExtractor()(clips, sampling_rate=SR, return_tensors="pt")["input_features"],
    )


def test_per_clip_normalization_comes_before_corpus_statistics_and_is_saved(tmp_path, clips):
    extractor = Mu2SlamFeatureExtractor(normalize_means=True, mel_floor=1e-6)
    extractor.compute_normalization_stats(clips, sampling_rate=SR, batch_size=2)
    per_clip = Mu2SlamFeatureExtractor(normalize_means=True, mel_floor=1e-6)(
        clips, sampling_rate=SR, return_tensors="pt"
    )
    real = per_clip["input_features"][per_clip["attention_mask"].bool()].double()
    np.testing.assert_allclose(extractor.feature_mean, real.mean(0).numpy(), atol=1e-5)
    extractor.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.normalize_means, loaded.normalize_vars, loaded.mel_floor) == (True, False, 1e-6)
    np.testing.assert_array_equal(loaded(clips, sampling_rate=SR)["input_features"],
                                  extractor(clips, sampling_rate=SR)["input_features"])  # fmt: skip


def test_mel_floor_lifts_digital_silence(clips):
    silence_then_tone = np.concatenate([np.zeros(4000, np.float32), clips[3]])
    for floor in (1e-10, 1e-6):
        features = Mu2SlamFeatureExtractor(mel_floor=floor)(silence_then_tone, sampling_rate=SR)["input_features"][0]
        np.testing.assert_allclose(features[:10], np.log(floor), rtol=1e-6)


def test_clip_variance_without_clip_mean_is_refused():
    with pytest.raises(ValueError, match="set normalize_means=True as well"):
        Mu2SlamFeatureExtractor(normalize_vars=True)
