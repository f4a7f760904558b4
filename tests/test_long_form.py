"""CTC forced alignment, word timestamps and long files in overlapping chunks through pipeline().

The pipeline tests run a tiny model whose encoder is an oracle that reads a tone language: every character is a
tone of its own frequency, silence is blank. Its CTC head is then certain of every frame and joint decoding with
ctc_weight=1 writes exactly what the tones say, so the true words and their times are known, and chunked decoding
must give what unchunked decoding gives.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from test_ctc_decoding import collapse
from test_evaluation import tiny_model, tiny_processor
from test_remote_code import fresh_python  # noqa: F401  (fixture)

import mu2slam_hf  # noqa: F401
from mu2slam_hf import Mu2SlamSpeechRecognitionPipeline, ctc_word_timestamps, transcribe
from mu2slam_hf.ctc_decoding import FrameClock, ctc_forced_align, ctc_token_spans, pause_segments, word_spans
from mu2slam_hf.modeling_mu2slam import Mu2SlamEncoderOutput
from mu2slam_hf.pipeline_mu2slam import merge_on_longest_common_run

RATE = 16000
WORDS = ["la", "mi", "do", "re", "sol", "fa", "si", "lido", "mare"]
CHAR_S, CHAR_GAP_S, WORD_GAP_S, SPACE_S = 0.12, 0.1, 0.25, 0.12
CONFIDENCE = 30.0  # CTC logit of the oracle's label: log-probs ~0 for it, ~-30 for every other token


# -------------------------------------------------------------------------------------------- alignment


def brute_force_best_path(log_probs: torch.Tensor, tokens: list[int]) -> tuple[list[int], float]:
    frames, vocab = log_probs.shape
    best, best_score = None, -math.inf
    for path in itertools.product(range(vocab), repeat=frames):
        if collapse(path) == tokens:
            score = sum(log_probs[t, label].item() for t, label in enumerate(path))
            if score > best_score:
                best, best_score = list(path), score
    return best, best_score


@pytest.mark.parametrize(("seed", "tokens"), [(0, [1, 2]), (1, [1, 1]), (2, [2, 1, 2]), (3, [3]), (4, [])])
def test_viterbi_equals_the_best_of_all_alignments(seed, tokens):
    torch.manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(6, 4, dtype=torch.float64) * 2, -1)
    path = ctc_forced_align(log_probs, tokens).tolist()
    expected, expected_score = brute_force_best_path(log_probs, tokens)
    assert path == expected
    assert sum(log_probs[t, label].item() for t, label in enumerate(path)) == pytest.approx(expected_score)


def test_alignment_recovers_the_frames_the_emissions_peak_at():
    frames, vocab = 40, 9
    truth = [(5, 3, 5), (6, 10, 11), (6, 14, 15), (7, 20, 23), (8, 30, 31)]  # token, start, end (a repeated 6)
    labels = torch.zeros(frames, dtype=torch.long)
    for token, start, end in truth:
        labels[start:end] = token
    generator = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.one_hot(labels, vocab).float() * 4 + torch.randn(frames, vocab, generator=generator)
    log_probs = torch.log_softmax(logits, -1)
    path = ctc_forced_align(log_probs, [token for token, _, _ in truth])
    assert ctc_token_spans(path) == truth


def test_alignment_rejects_what_cannot_fit():
    log_probs = torch.log_softmax(torch.zeros(3, 4), -1)
    with pytest.raises(ValueError, match="Cannot align 2 tokens .1 repeated. to 2 frames"):
        ctc_forced_align(log_probs[:2], [1, 1])
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_align(log_probs, [1, 0])
    assert ctc_forced_align(log_probs, [1, 1]).tolist() == [1, 0, 1]


def test_token_and_word_spans():
    assert ctc_token_spans([0, 3, 3, 0, 3, 4, 4, 0, 5, 0]) == [(3, 1, 3), (3, 4, 5), (4, 5, 7), (5, 8, 9)]
    space = "\u2581"
    chars = ["h", "i", space, "y", "o", "u"]
    spans = [(0, 1), (2, 3), (5, 6), (8, 9), (10, 11), (12, 14)]
    assert word_spans(chars, spans) == [([0, 1], 0, 3), ([3, 4, 5], 8, 14)]
    pieces = [f"{space}he", "llo", f"{space}wor", "ld", "!"]
    spans = [(0, 2), (3, 4), (6, 7), (8, 9), (9, 10)]
    assert word_spans(pieces, spans) == [([0, 1], 0, 4), ([2, 3, 4], 6, 10)]


def blank_runs_log_probs(labels: list[int]) -> torch.Tensor:
    """(T, 3) log-probs certain of each frame's label (0 = blank)."""
    return torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(labels), 3).float() * 20, -1)


def test_pause_segments_cut_in_the_middle_of_long_blank_runs():
    #         speech  pause of 6     speech  pause of 2  speech  trailing pause of 5
    labels = [1, 2, 1] + [0] * 6 + [2, 1] + [0] * 2 + [1] + [0] * 5
    log_probs = blank_runs_log_probs(labels)
    assert pause_segments(log_probs, min_pause_frames=4) == [(0, 6), (6, 19)]  # the trailing pause is no cut
    assert pause_segments(log_probs, min_pause_frames=7) == [(0, 19)]
    assert pause_segments(log_probs[:3], min_pause_frames=1) == [(0, 3)]
    # Too long a range is cut again, in its longest blank run of its middle half, between words.
    words = [1, 1, 0, 2, 0, 0, 0, 1, 2, 0, 0, 1, 0, 2, 2]
    pieces = pause_segments(blank_runs_log_probs(words), min_pause_frames=10, max_frames=8)
    assert pieces == [(0, 5), (5, 10), (10, 15)] and all(end - start <= 8 for start, end in pieces)
    no_blank = blank_runs_log_probs([1] * 9)  # no blank at all: halves
    assert pause_segments(no_blank, min_pause_frames=2, max_frames=4) == [(0, 4), (4, 6), (6, 9)]


def test_frame_clock_follows_the_front_end_and_the_feature_hop(tiny_config):
    processor = tiny_processor()
    clock = FrameClock.for_model(tiny_config, processor.feature_extractor)
    # 2 convolutions of stride 2 over 10 ms frames: 40 ms per frame; frame 0 sees samples [0, 1360), centre 42.5 ms
    assert clock.seconds_per_frame == pytest.approx(0.04)
    assert clock.offset_s + clock.seconds_per_frame / 2 == pytest.approx(680 / RATE)
    assert clock.seconds(10, 15) == pytest.approx((0.4225, 0.6225), abs=1e-3)
    assert clock.seconds(0, 30, duration_s=1.0) == pytest.approx((0.0225, 1.0), abs=1e-3)
    tiny_config.ctc_upsampling = 2  # two CTC label slots a frame share its 40 ms; the first centred at 32.5 ms
    slots = FrameClock.for_model(tiny_config, processor.feature_extractor)
    assert slots.seconds_per_frame == pytest.approx(0.02)
    assert slots.offset_s + slots.seconds_per_frame / 2 == pytest.approx(0.0325)
    tiny_config.ctc_upsampling = 1
    processor.feature_extractor.hop_length = 320
    assert FrameClock.for_model(tiny_config, processor.feature_extractor).seconds_per_frame == pytest.approx(0.08)


def test_ctc_align_transcribes_like_greedy_ctc_and_batches():
    processor = tiny_processor()
    model = tiny_model(processor, seed=3)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(s * RATE))).astype(np.float32) for s in (0.9, 0.5)]
    batch = processor(audio=clips, sampling_rate=RATE, src_lang="fr")
    own = model.ctc_align(**batch)
    greedy = model.ctc_greedy_decode(**batch)
    assert [[token for token, _, _ in row] for row in own] == [row[row != 0].tolist() for row in greedy]
    labels = processor.tokenizer(["hello", "cat"], add_special_tokens=False, padding=True, return_tensors="pt")
    forced = model.ctc_align(**batch, labels=labels["input_ids"])
    for row, text in zip(forced, ["hello", "cat"], strict=True):
        assert processor.tokenizer.decode([token for token, _, _ in row]) == text
        assert all(a[2] <= b[1] for a, b in zip(row, row[1:], strict=False))  # in order, never overlapping
    single = processor(audio=clips[1], sampling_rate=RATE, src_lang="fr")
    assert model.ctc_align(**single, labels=labels["input_ids"][1:]) == forced[1:]
    with pytest.raises(ValueError, match="labels"):
        model.ctc_align(**batch, labels=torch.full((2, 2), 10_000))


# ------------------------------------------------------------------------------------------- the oracle


class ToneOracleEncoder(torch.nn.Module):
    """Encoder states that make the CTC head certain: per encoder frame, the token whose tone sounds at its centre
    (the middle log-mel frame it sees), or blank for silence."""

    def __init__(self, config, bin_to_token: dict[int, int]):
        super().__init__()
        self.config = config
        # buffers, so that a pipeline that moves the model to a GPU moves them too
        self.register_buffer("bins", torch.tensor(sorted(bin_to_token)), persistent=False)
        self.register_buffer("tokens", torch.tensor([bin_to_token[b] for b in sorted(bin_to_token)]), persistent=False)

    def forward(self, input_features, attention_mask=None, **kwargs) -> Mu2SlamEncoderOutput:
        frames = self.config.speech_output_lengths(input_features.shape[1])
        stride = self.config.frontend_stride**2
        positions = torch.arange(frames, device=input_features.device)
        centres = input_features[:, stride * positions + self.config.min_input_frames // 2]  # (B, S, F)
        peak, peak_bin = centres.max(-1)
        sounding = peak - centres.median(-1).values > 4.0
        nearest = (peak_bin.unsqueeze(-1) - self.bins).abs().argmin(-1)
        labels = torch.where(sounding, self.tokens[nearest], torch.zeros_like(peak_bin))
        states = torch.nn.functional.one_hot(labels, self.config.d_model).float() * CONFIDENCE
        lengths = self.config.speech_output_lengths(attention_mask.sum(-1)) if attention_mask is not None else None
        mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        if lengths is not None:
            mask = (positions < lengths.unsqueeze(-1)).long()
        return Mu2SlamEncoderOutput(last_hidden_state=states, attention_mask=mask, speech_length=frames)


def tone(frequency: float, seconds: float) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * RATE)) / RATE).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.float32)


class ToneLanguage:
    """Characters as tones (`▁` too, between words), and the oracle model that hears them."""

    def __init__(self):
        self.processor = tiny_processor(texts=[" ".join(WORDS)])
        tokenizer = self.processor.tokenizer
        characters = sorted({c for word in WORDS for c in word}) + ["\u2581"]
        self.frequency = {c: 300.0 * 1.25**index for index, c in enumerate(characters)}
        self.token = {c: tokenizer.convert_tokens_to_ids(c) for c in characters}
        bins = {}
        for c, frequency in self.frequency.items():
            features = self.processor(audio=tone(frequency, 0.2), sampling_rate=RATE)["input_features"][0]
            bins[int(features[5].argmax())] = self.token[c]
        assert len(bins) == len(characters), "two characters' tones fall in one mel bin"
        self.model = tiny_model(self.processor)
        config = self.model.config
        with torch.no_grad():
            self.model.model.shared.weight[: config.text_vocab_size] = torch.eye(
                config.text_vocab_size, config.d_model
            )
        self.model.model.encoder = ToneOracleEncoder(config, bins)

    def say(self, words: list[str], lead_s: float = 0.3) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """A clip saying `words`, and each word's true (start, end) in seconds."""
        parts, times, now = [silence(lead_s)], [], lead_s
        for index, word in enumerate(words):
            if index:
                gap = [silence(WORD_GAP_S), tone(self.frequency["\u2581"], SPACE_S), silence(WORD_GAP_S)]
                parts += gap
                now += sum(len(p) for p in gap) / RATE
            start = now
            for c in word:
                parts += [tone(self.frequency[c], CHAR_S), silence(CHAR_GAP_S)]
                now += CHAR_S + CHAR_GAP_S
            times.append((start, now - CHAR_GAP_S))
        parts.append(silence(0.3))
        noise = 1e-3 * np.random.default_rng(0).standard_normal(sum(len(p) for p in parts)).astype(np.float32)
        return np.concatenate(parts) + noise, times


@pytest.fixture(scope="module")
def tones():
    return ToneLanguage()


@pytest.fixture(scope="module")
def asr(tones):
    from transformers import pipeline

    return pipeline(
        "automatic-speech-recognition",
        model=tones.model,
        tokenizer=tones.processor.tokenizer,
        feature_extractor=tones.processor.feature_extractor,
    )


ASR = {"src_lang": "fr", "tgt_lang": "fr", "ctc_weight": 1.0}


def sentence(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [WORDS[i] for i in rng.integers(0, len(WORDS), count)]


# --------------------------------------------------------------------------------------------- pipeline


def test_pipeline_word_timestamps_match_the_true_words(tones, asr):
    assert isinstance(asr, Mu2SlamSpeechRecognitionPipeline)
    words = sentence(6, seed=0)
    clip, times = tones.say(words)
    out = asr(clip, return_timestamps="word", generate_kwargs=ASR)
    assert out["text"] == " ".join(words)
    assert [chunk["text"] for chunk in out["chunks"]] == words
    stamps = [chunk["timestamp"] for chunk in out["chunks"]]
    assert all(0 <= start < end <= len(clip) / RATE for start, end in stamps)
    assert all(a[1] <= b[0] for a, b in zip(stamps, stamps[1:], strict=False))
    errors = np.abs(np.array(stamps) - np.array(times))
    assert errors.max() < 0.06, errors


def test_timestamps_outside_the_pipeline_align_given_texts(tones):
    words = sentence(4, seed=1)
    clip, times = tones.say(words)
    (own,) = ctc_word_timestamps(tones.model, tones.processor, [clip], "fr")
    (forced,) = ctc_word_timestamps(tones.model, tones.processor, [clip], "fr", texts=[" ".join(words)])
    assert own == forced and [w["text"] for w in own] == words
    assert np.abs(np.array([w["timestamp"] for w in own]) - np.array(times)).max() < 0.06


def test_long_form_chunks_merge_without_repeated_or_cut_words(tones, asr):
    words = sentence(16, seed=2)
    clip, times = tones.say(words)  # ~18 s: 8 chunks of 4 s with 1 s strides, borders inside words
    whole = asr(clip, return_timestamps="word", generate_kwargs=ASR)
    chunked = asr(clip, chunk_length_s=4, stride_length_s=1, return_timestamps="word", generate_kwargs=ASR)
    assert whole["text"] == chunked["text"] == " ".join(words)
    assert [c["text"] for c in chunked["chunks"]] == words
    np.testing.assert_allclose([c["timestamp"] for c in chunked["chunks"]], times, atol=0.06)
    plain = asr(clip, chunk_length_s=4, stride_length_s=1, generate_kwargs=ASR)
    assert plain == {"text": " ".join(words)}
    default_stride = asr(clip, chunk_length_s=6, generate_kwargs=ASR)
    assert default_stride["text"] == " ".join(words)


def test_long_form_transcribes_the_stretches_between_pauses_one_by_one(tones, asr, monkeypatch):
    """The chunks only find the pauses; each sentence between two is decoded alone, as a clip of its own."""
    sentences = [sentence(4, seed=seed) for seed in (5, 6, 7)]
    parts, truth, now = [], [], 0.0
    for words in sentences:
        clip, times = tones.say(words)  # 0.3 s of silence before and after
        parts += [clip, silence(0.6)]
        truth += [(start + now, end + now) for start, end in times]
        now += len(clip) / RATE + 0.6
    clip = np.concatenate(parts)
    decoded = []
    generate = tones.model.generate

    def spy(*args, **kwargs):
        decoded.extend(int(length) for length in kwargs["attention_mask"].sum(-1))
        return generate(*args, **kwargs)

    monkeypatch.setattr(tones.model, "generate", spy)
    out = asr(clip, chunk_length_s=7, stride_length_s=1.5, return_timestamps="word", generate_kwargs=ASR)
    words = [word for words in sentences for word in words]
    assert out["text"] == " ".join(words) and [c["text"] for c in out["chunks"]] == words
    np.testing.assert_allclose([c["timestamp"] for c in out["chunks"]], truth, atol=0.06)
    assert len(decoded) == 3, decoded  # 17 s in 7 s chunks (borders inside sentences), 3 sentences decoded
    assert all(abs(frames / 100 - len(clip) / RATE / 3) < 0.5 for frames in decoded)


def test_pause_s_sets_the_shortest_pause_a_long_file_is_cut_at(tones, asr, monkeypatch):
    """Sentences parted by 1.2 s of silence: cut there by default; decoded as one stretch when pauses must be longer
    (the chunk length bounds a stretch, so it is set above the file's length here)."""
    sentences = [sentence(4, seed=seed) for seed in (5, 6)]
    clip = np.concatenate([part for words in sentences for part in (tones.say(words)[0], silence(0.6))])
    decoded = []
    generate = tones.model.generate

    def spy(*args, **kwargs):
        decoded.append(len(kwargs["attention_mask"]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(tones.model, "generate", spy)
    text = " ".join(word for words in sentences for word in words)
    assert asr(clip, chunk_length_s=30, generate_kwargs=ASR)["text"] == text
    assert decoded == [2]
    decoded.clear()
    one_stretch = asr(clip, chunk_length_s=30, pause_s=2.0, generate_kwargs=ASR)["text"]
    assert decoded == [1]
    # The tones say the space between words, not between sentences: decoded as one stretch, the two run together.
    assert one_stretch.replace(" ", "") == text.replace(" ", "") and one_stretch != text
    for bad in (0, -0.4, "0.4", True):
        with pytest.raises(ValueError, match="pause_s"):
            asr(clip, chunk_length_s=30, pause_s=bad, generate_kwargs=ASR)


def test_chunk_frames_join_into_the_whole_files_frames(tones, asr, monkeypatch):
    """Chunks start on the encoder's frame grid, so their features outside the strides are the file's own."""
    clip, _ = tones.say(sentence(12, seed=8))
    joined = []
    join = asr._joined_chunks
    monkeypatch.setattr(asr, "_joined_chunks", lambda outputs: joined.append(join(outputs)) or joined[-1])
    asr(clip, chunk_length_s=4.1, stride_length_s=0.7, generate_kwargs=ASR)
    _, _, features, starts, duration = joined[0]
    whole = tones.processor(audio=clip, sampling_rate=RATE)["input_features"][0]
    torch.testing.assert_close(features, whole)
    extractor = tones.processor.feature_extractor  # frame k covers n_fft samples from k * hop: centre minus half a hop
    first = (extractor.n_fft - extractor.hop_length) / 2 / RATE
    torch.testing.assert_close(starts, first + torch.arange(len(whole)) * extractor.hop_length / RATE)
    assert duration == pytest.approx(len(clip) / RATE, abs=0.03)


def test_inputs_longer_than_30_s_are_cut_into_chunks_without_being_asked(tones, asr):
    """Decoded as one input, a long file would lose the sentence-by-sentence decoding (and the attention decoder
    would stop at its longest target)."""
    sentences = [sentence(4, seed=seed) for seed in range(10, 17)]
    clip = np.concatenate([part for words in sentences for part in (tones.say(words)[0], silence(0.6))])
    assert len(clip) / RATE > 30
    out = asr(clip, return_timestamps="word", generate_kwargs=ASR)
    assert out == asr(clip, chunk_length_s=8, return_timestamps="word", generate_kwargs=ASR)
    assert out["text"] == " ".join(word for words in sentences for word in words)


def test_long_form_with_the_ctc_language_model(tones, asr):
    """CTC beam search with an n-gram LM goes through the same chunking and timing as the best path."""
    from mu2slam_hf.ngram_lm import CharNgramLanguageModel

    words = sentence(12, seed=3)
    clip, times = tones.say(words)
    texts = [" ".join(sentence(8, seed=seed)) for seed in range(20)]
    tones.model.set_asr_language_model(CharNgramLanguageModel.from_texts({"fr": texts}, tones.processor.tokenizer))
    try:
        options = {"chunk_length_s": 4, "stride_length_s": 1, "return_timestamps": "word"}
        chunked = asr(clip, **options, generate_kwargs={**ASR, "num_beams": 4, "lm_weight": 0.3})
    finally:
        tones.model.set_asr_language_model(None)
    assert chunked["text"] == " ".join(words) and [c["text"] for c in chunked["chunks"]] == words
    np.testing.assert_allclose([c["timestamp"] for c in chunked["chunks"]], times, atol=0.06)


def test_batched_and_single_inputs_give_the_same_output(tones, asr):
    clips = [tones.say(sentence(n, seed=n))[0] for n in (2, 7, 4)]
    options = {"chunk_length_s": 3, "stride_length_s": 0.75, "return_timestamps": "word", "generate_kwargs": ASR}
    single = [asr(clip, **options) for clip in clips]
    assert asr(clips, batch_size=4, **options) == single
    assert transcribe(tones.model, tones.processor, clips, "fr", chunk_length_s=3, stride_length_s=0.75,
                      return_timestamps="word", batch_size=2, ctc_weight=1.0) == single  # fmt: skip


def test_pipeline_rejects_what_it_cannot_time(tones, asr):
    clip, _ = tones.say(["la"])
    with pytest.raises(ValueError, match="'word'"):
        asr(clip, return_timestamps="char", generate_kwargs=ASR)
    with pytest.raises(ValueError, match="speech recognition only"):
        asr(clip, return_timestamps="word", generate_kwargs={"src_lang": "fr", "tgt_lang": "en"})


def test_translation_chunks_merge_on_their_longest_common_run():
    assert merge_on_longest_common_run([[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7]]) == [1, 2, 3, 4, 5, 6, 7]
    assert merge_on_longest_common_run([[1, 2], [3, 4]]) == [1, 2, 3, 4]
    assert merge_on_longest_common_run([[1, 2, 9, 3], [9, 3, 8], []]) == [1, 2, 9, 3, 8]


@pytest.mark.slow
def test_remote_code_pipeline_times_words_once_the_model_is_loaded(tmp_path, fresh_python):  # noqa: F811
    import json
    import subprocess
    import textwrap

    processor = tiny_processor()
    model = tiny_model(processor, seed=4)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert (folder / "pipeline_mu2slam.py").is_file()  # a relative import of modeling_mu2slam.py: exported with it
    clip = (0.1 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    script = textwrap.dedent(
        f"""
        import json, sys, numpy as np
        from transformers import AutoModelForSpeechSeq2Seq, pipeline
        AutoModelForSpeechSeq2Seq.from_pretrained({str(folder)!r}, trust_remote_code=True)
        asr = pipeline("automatic-speech-recognition", model={str(folder)!r}, trust_remote_code=True)
        assert "mu2slam_hf" not in sys.modules
        clip = np.load({str(tmp_path / "clip.npy")!r})
        out = asr(clip, return_timestamps="word", chunk_length_s=1.5, generate_kwargs={{"src_lang": "fr"}})
        print("OUT", json.dumps({{"class": type(asr).__name__, "chunks": out["chunks"]}}))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([fresh_python, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("OUT"))[4:])
    assert out["class"] == "Mu2SlamSpeechRecognitionPipeline"
    stamps = [tuple(chunk["timestamp"]) for chunk in out["chunks"]]
    assert all(0 <= start <= end <= 3.0 for start, end in stamps) and stamps == sorted(stamps)
