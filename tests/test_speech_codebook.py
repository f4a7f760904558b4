"""Mu2SlamSpeechCodebook: alignment with the speech front end, padding, builders, usage report, persistence."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mu2slam_hf import (
    CODE_PAD_VALUE,
    Mu2SlamConfig,
    Mu2SlamSpeechCodebook,
    VocabularyLayout,
    build_best_rq,
    fit_kmeans,
)
from mu2slam_hf.configuration_mu2slam import subsampled_lengths
from mu2slam_hf.speech_codebook import CODEBOOK_CONFIG_NAME, CODEBOOK_WEIGHTS_NAME, kmeans, stack_log_mel_frames


@pytest.fixture(scope="module")
def best_rq() -> Mu2SlamSpeechCodebook:
    return build_best_rq(seed=0, codebook_size=64)


@pytest.fixture(scope="module")
def corpus() -> list[torch.Tensor]:
    """Log-mel-like utterances with structure: a few spectral shapes, switched every few frames."""
    generator = torch.Generator().manual_seed(0)
    shapes = torch.randn(8, 80, generator=generator) * 3
    utterances = []
    for length in (90, 120, 150, 200, 260, 310):
        states = torch.randint(8, (length // 5 + 1,), generator=generator).repeat_interleave(5)[:length]
        utterances.append(shapes[states] + 0.5 * torch.randn(length, 80, generator=generator))
    return utterances


def _pad_batch(utterances: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([u.shape[0] for u in utterances])
    features = torch.zeros(len(utterances), int(lengths.max()), 80)
    for row, utterance in zip(features, utterances, strict=True):
        row[: utterance.shape[0]] = utterance
    return features, (torch.arange(features.shape[1])[None] < lengths[:, None]).long()


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_codes_align_with_front_end_and_batching(best_rq, lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    utterances = [torch.randn(n, 80, generator=generator) for n in lengths]
    features, mask = _pad_batch(utterances)
    codes = best_rq(features, mask)
    assert codes.shape == (len(lengths), max(int(subsampled_lengths(max(lengths))), 0))
    for row, n in zip(codes, lengths, strict=True):
        real = max(int(subsampled_lengths(n)), 0)
        assert torch.all(row[:real] >= 0) and torch.all(row[:real] < best_rq.codebook_size)
        assert torch.all(row[real:] == CODE_PAD_VALUE)
    for row, utterance in zip(codes, utterances, strict=True):
        alone = best_rq(utterance[None])[0]
        assert torch.equal(row[: alone.shape[0]], alone)


def test_code_sees_exactly_the_front_end_receptive_field(best_rq):
    """Changing frames outside [4t, 4t + 7) never changes code t; changing one inside changes the stacked input."""
    features = torch.randn(1, 40, 80)
    stacked, _ = best_rq.stack_frames(features)
    t = 3
    torch.testing.assert_close(stacked[0, t].view(7, 80), features[0, 4 * t : 4 * t + 7])
    perturbed = features.clone()
    perturbed[0, : 4 * t] += 100
    perturbed[0, 4 * t + 7 :] -= 100
    assert best_rq(perturbed)[0, t] == best_rq(features)[0, t]


def test_matches_model_config_geometry(best_rq):
    config = Mu2SlamConfig(codebook_size=64)
    best_rq.check_compatible(config)
    for frames in (7, 8, 10, 11, 100, 1001):
        assert best_rq.stack_frames(torch.zeros(1, frames, 80))[0].shape[1] == config.speech_output_lengths(frames)
    with pytest.raises(ValueError, match="codebook_size: codebook 64 vs config 1024"):
        best_rq.check_compatible(Mu2SlamConfig())


def test_codes_map_into_the_vocabulary(best_rq):
    layout = VocabularyLayout(text_vocab_size=100, codebook_size=best_rq.codebook_size)
    codes = best_rq(torch.randn(2, 50, 80))
    assert set(layout.code_to_id(codes).flatten().tolist()) <= set(layout.speech_code_ids())


def test_best_rq_is_reproducible_from_the_seed(corpus):
    first, again, other = build_best_rq(7, 32), build_best_rq(7, 32), build_best_rq(8, 32)
    for name in ("codebook", "projection", "mean", "std"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.codebook, other.codebook) and not torch.equal(first.projection, other.projection)
    features, mask = _pad_batch(corpus)
    assert torch.equal(first(features, mask), again(features, mask))
    assert not torch.equal(first(features, mask), other(features, mask))
    torch.testing.assert_close(first.codebook.norm(dim=-1), torch.ones(32))


def test_best_rq_normalisation_from_data_and_usage_report(corpus):
    codebook = build_best_rq(0, 32, normalization_data=corpus)
    stacked = torch.cat([stack_log_mel_frames(u[None])[0][0] for u in corpus])
    torch.testing.assert_close(codebook.mean, stacked.mean(0), atol=1e-5, rtol=0)
    usage = codebook.usage
    assert usage.num_vectors == stacked.shape[0] == sum(int(subsampled_lengths(u.shape[0])) for u in corpus)
    assert 1 <= usage.perplexity <= 32 and 0 <= usage.dead_codes < 32
    assert build_best_rq(0, 32, normalization_data=corpus).usage == usage


def test_kmeans_lowers_distortion_vs_random_codebook(corpus):
    fitted = fit_kmeans(corpus, codebook_size=16, num_iters=10, seed=0)
    random_codewords = torch.randn(16, fitted.input_dim, generator=torch.Generator().manual_seed(0))
    random = Mu2SlamSpeechCodebook(random_codewords, mean=fitted.mean, std=fitted.std)
    init_only = fit_kmeans(corpus, codebook_size=16, num_iters=0, seed=0)
    assert fitted.distortion(corpus) < init_only.distortion(corpus) < random.distortion(corpus)
    assert fitted.usage.distortion == pytest.approx(fitted.distortion(corpus))
    assert fitted.usage.dead_codes == 0 and fitted.usage.perplexity > 4
    again = fit_kmeans(corpus, codebook_size=16, num_iters=10, seed=0)
    assert torch.equal(fitted.codebook, again.codebook)


def test_kmeans_on_arbitrary_vectors():
    generator = torch.Generator().manual_seed(1)
    centers = torch.randn(4, 12, generator=generator) * 10
    vectors = (centers[:, None] + torch.randn(4, 50, 12, generator=generator)).reshape(200, 12)
    codebook = fit_kmeans(vectors, codebook_size=4, seed=3)
    assert codebook.input_type == "vectors" and codebook.input_dim == 12
    codes = codebook(vectors.view(4, 50, 12), torch.ones(4, 50))  # hidden states (batch, positions, dim)
    assert all(len(set(row.tolist())) == 1 for row in codes) and len(set(codes[:, 0].tolist())) == 4
    assert codebook.usage.perplexity == pytest.approx(4.0)
    centroids = kmeans(vectors, 4, seed=3)
    assert centroids.shape == (4, 12)


def test_kmeans_needs_enough_vectors():
    with pytest.raises(ValueError, match="needs at least that many vectors"):
        fit_kmeans(torch.randn(10, 4), codebook_size=16)


@pytest.mark.parametrize("builder", ["best_rq", "kmeans_log_mel", "kmeans_vectors"])
def test_save_load_round_trip(tmp_path, corpus, builder):
    if builder == "best_rq":
        codebook, inputs = build_best_rq(3, 32, normalization_data=corpus), _pad_batch(corpus)
    elif builder == "kmeans_log_mel":
        codebook, inputs = fit_kmeans(corpus, 16, num_iters=3), _pad_batch(corpus)
    else:
        vectors = torch.randn(300, 24)
        codebook, inputs = fit_kmeans(vectors, 16, num_iters=3), (vectors.view(3, 100, 24), None)
    codebook.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CODEBOOK_CONFIG_NAME, CODEBOOK_WEIGHTS_NAME,
                                                                 "checksums.json"])  # fmt: skip
    saved = json.loads((tmp_path / CODEBOOK_CONFIG_NAME).read_text())
    assert saved["pad_value"] == CODE_PAD_VALUE and saved["codebook_size"] == codebook.codebook_size
    loaded = Mu2SlamSpeechCodebook.from_pretrained(tmp_path)
    assert loaded.to_dict() == codebook.to_dict() and loaded.usage == codebook.usage
    for name, tensor in codebook.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert torch.equal(loaded(*inputs), codebook(*inputs))


def test_bad_inputs_raise(best_rq, tmp_path):
    with pytest.raises(ValueError, match=r"input_features must have shape \(batch, frames, 80\)"):
        best_rq(torch.randn(2, 30, 40))
    with pytest.raises(ValueError, match="takes 7 frames x 80 bins = 560 dims"):
        Mu2SlamSpeechCodebook(torch.randn(8, 100))
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        Mu2SlamSpeechCodebook.from_pretrained(tmp_path)


def test_codebook_is_frozen(best_rq):
    assert not list(best_rq.parameters()) and all(not b.requires_grad for b in best_rq.buffers())
