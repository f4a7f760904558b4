"""Mu2SlamProcessor round trips and pipeline() on a tiny model trained here to say a few words.

The model learns tone clips: a 440 Hz burst says "la" (French) / "the" (English), a 1320 Hz burst says
"mi" / "my", noise alone says nothing. Clips are up to 10 s, so an 8 s chunk of a long file is in-domain and
the long-form output is known: one burst in a 2-minute file must come out exactly once.
"""

import json
import subprocess
import textwrap

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from conftest import PRESETS
from test_remote_code import fresh_python  # noqa: F401  (fixture)

import mu2slam_hf  # noqa: F401
from mu2slam_hf import (
    Mu2SlamConfig,
    Mu2SlamFeatureExtractor,
    Mu2SlamForConditionalGeneration,
    Mu2SlamProcessor,
    build_best_rq,
    train_char_tokenizer,
)

RATE = 16000
TONES = {"la": 440.0, "mi": 1320.0}
TRANSLATIONS = {"la": "the", "mi": "my", "": ""}
STEPS = 300


def tone_clip(word: str, seconds: float, rng: np.random.Generator, at: float | None = None) -> np.ndarray:
    """Low noise, plus a 0.6 s burst of the word's tone at `at` seconds (random when None)."""
    clip = 0.01 * rng.standard_normal(int(seconds * RATE)).astype(np.float32)
    if word:
        start = int((rng.uniform(0.2, seconds - 0.8) if at is None else at) * RATE)
        t = np.arange(int(0.6 * RATE)) / RATE
        clip[start : start + len(t)] += 0.5 * np.sin(2 * np.pi * TONES[word] * t).astype(np.float32)
    return clip


def make_processor(languages: list[str], codebook_size: int) -> Mu2SlamProcessor:
    tokenizer = train_char_tokenizer(["la mi the my"], vocab_size=64)
    codebook = build_best_rq(seed=0, codebook_size=codebook_size)
    return Mu2SlamProcessor(Mu2SlamFeatureExtractor(), tokenizer, codebook, languages=languages)


def train_tone_model(folder) -> tuple[Mu2SlamForConditionalGeneration, Mu2SlamProcessor]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = Mu2SlamConfig.from_pretrained(PRESETS / "tiny")
    processor = make_processor(["fr", "en"], base.codebook_size)
    config = Mu2SlamConfig.from_pretrained(
        PRESETS / "tiny", languages=["fr", "en"], text_vocab_size=len(processor.tokenizer)
    )
    model = Mu2SlamForConditionalGeneration(config).train()

    words = [["la", "mi", ""][i % 3] for i in range(96)]
    clips = [tone_clip(word, rng.uniform(1.0, 10.0), rng) for word in words]
    features = [processor(audio=clip, sampling_rate=RATE)["input_features"][0] for clip in clips]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(STEPS):
        rows = rng.choice(len(clips), size=8, replace=False)
        target_langs = ["fr", "en"] * 4
        texts = [
            words[r] if lang == "fr" else TRANSLATIONS[words[r]] for r, lang in zip(rows, target_langs, strict=True)
        ]
        batch = processor.feature_extractor.pad([{"input_features": features[r]} for r in rows], return_tensors="pt")
        loss = model(
            input_features=batch["input_features"],
            attention_mask=batch["attention_mask"],
            src_lang_ids=processor.language_ids("fr", 8),
            tgt_lang_ids=processor.language_ids(target_langs, 8),
            labels=processor.encode_targets(texts),
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def tone_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tone-model")
    model, processor = train_tone_model(folder)
    return folder, model, processor


def transcribe(model, processor, clip, tgt_lang="fr") -> str:
    batch = processor(audio=clip, sampling_rate=RATE, src_lang="fr")
    ids = model.generate(**batch, tgt_lang=tgt_lang)
    return processor.batch_decode(ids, skip_special_tokens=True)[0]


# --------------------------------------------------------------------------------------- processor


def test_processor_round_trip_is_bit_exact(tmp_path):
    from transformers import AutoProcessor

    processor = make_processor(["fr", "en", "de"], codebook_size=64)
    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "tokenizer.json", "speech_codebook.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is Mu2SlamProcessor and loaded.languages == ["fr", "en", "de"]
    rng = np.random.default_rng(1)
    audio = [rng.standard_normal(RATE).astype(np.float32), rng.standard_normal(7000).astype(np.float32)]
    ours, theirs = processor(audio=audio, sampling_rate=RATE), loaded(audio=audio, sampling_rate=RATE)
    assert torch.equal(ours["input_features"], theirs["input_features"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    codes = processor.speech_codes(ours["input_features"], ours["attention_mask"])
    assert torch.equal(codes, loaded.speech_codes(theirs["input_features"], theirs["attention_mask"]))
    text = ["la mi", "the"]
    assert torch.equal(processor(text=text)["input_ids"], loaded(text=text)["input_ids"])
    assert loaded.batch_decode(loaded(text=text)["input_ids"], skip_special_tokens=True) == text


def test_processor_outputs_fit_the_model():
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny")
    processor = make_processor(config.languages, config.codebook_size)
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny", text_vocab_size=len(processor.tokenizer))
    processor.check_model_config(config)
    rng = np.random.default_rng(2)
    audio = [rng.standard_normal(n).astype(np.float32) for n in (RATE, 20_000, 3_000)]
    batch = processor(audio=audio, sampling_rate=RATE, src_lang="fr", tgt_lang="en", text_target=["la", "mi", ""])
    codes = processor.speech_codes(batch["input_features"], batch["attention_mask"])
    lengths = config.speech_output_lengths(batch["attention_mask"].sum(-1))
    assert codes.shape[1] == config.speech_output_lengths(batch["input_features"].shape[1])
    assert torch.equal((codes != -100).sum(-1), lengths)  # one code per encoder frame
    model = Mu2SlamForConditionalGeneration(config)
    out = model(**batch)
    assert out.loss is not None and out.encoder_attention_mask.sum(-1).tolist() == lengths.tolist()
    assert batch["labels"][2].tolist()[:1] == [config.eos_token_id]  # empty text is just eos


def test_processor_rejects_bad_input_and_mismatched_models(tmp_path):
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny")
    processor = make_processor(config.languages, config.codebook_size)
    with pytest.raises(ValueError, match="Unknown language code 'xx'"):
        processor(audio=np.zeros(RATE, dtype=np.float32), sampling_rate=RATE, src_lang="xx")
    with pytest.raises(ValueError, match="Nothing to process"):
        processor()
    with pytest.raises(ValueError, match="16000|sampling"):
        processor(audio=np.zeros(RATE, dtype=np.float32), sampling_rate=22050)
    resampled = processor(audio=np.zeros(22050, dtype=np.float32), sampling_rate=22050, resample=True)
    assert resampled["input_features"].shape[1] == processor.feature_extractor.num_frames(RATE)
    # the tiny preset's text_vocab_size (128) is not this tokenizer's size: a clear error at load time
    Mu2SlamForConditionalGeneration(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="text_vocab_size.*does not belong|does not belong.*text_vocab_size"):
        Mu2SlamProcessor.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------- pipeline


def test_trained_model_says_its_words(tone_model):
    _, model, processor = tone_model
    rng = np.random.default_rng(123)
    for word in ("la", "mi", ""):
        clip = tone_clip(word, 4.0, rng)
        assert transcribe(model, processor, clip) == word
        assert transcribe(model, processor, clip, tgt_lang="en") == TRANSLATIONS[word]


def test_asr_pipeline_inputs_and_batching(tone_model, tmp_path):
    from transformers import pipeline

    folder, _, _ = tone_model
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    rng = np.random.default_rng(7)
    la, mi = tone_clip("la", 3.0, rng), tone_clip("mi", 5.0, rng)
    sf.write(tmp_path / "la.wav", la, RATE)
    french = {"src_lang": "fr", "tgt_lang": "fr"}
    assert asr(str(tmp_path / "la.wav"), generate_kwargs=french)["text"] == "la"
    assert asr(mi, generate_kwargs=french)["text"] == "mi"
    assert asr({"array": mi, "sampling_rate": RATE}, generate_kwargs=french)["text"] == "mi"
    batch = [str(tmp_path / "la.wav"), mi, la, tone_clip("", 2.0, rng), mi]
    outputs = asr(batch, batch_size=8, generate_kwargs=french)
    assert [o["text"] for o in outputs] == ["la", "mi", "la", "", "mi"]
    translated = asr(batch, batch_size=2, generate_kwargs={"src_lang": "fr", "tgt_lang": "en"})
    assert [o["text"] for o in translated] == ["the", "my", "the", "", "my"]


def test_pipeline_reads_audio_files_without_ffmpeg(tone_model, tmp_path, monkeypatch):
    """WAV and FLAC files (here 44.1 kHz stereo) are decoded by libsndfile and resampled by soxr, chunked or not;
    only what libsndfile cannot read goes to FFmpeg."""
    import transformers.pipelines.audio_utils as audio_utils
    from transformers import pipeline

    folder, _, _ = tone_model
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    french = {"src_lang": "fr", "tgt_lang": "fr"}
    la = tone_clip("la", 3.0, np.random.default_rng(7))
    stereo = np.stack([la, la], axis=1)
    sf.write(tmp_path / "la.flac", soxr.resample(stereo, RATE, 44_100), 44_100)
    sf.write(tmp_path / "la.wav", la, RATE)
    (tmp_path / "la.m4a").write_bytes(b"not a format libsndfile reads")

    def no_ffmpeg(*args, **kwargs):
        raise AssertionError("FFmpeg was called")

    monkeypatch.setattr(audio_utils, "ffmpeg_read", no_ffmpeg)
    monkeypatch.setattr("transformers.pipelines.automatic_speech_recognition.ffmpeg_read", no_ffmpeg, raising=False)
    for name in ("la.flac", "la.wav"):
        assert asr(str(tmp_path / name), generate_kwargs=french)["text"] == "la"
        assert asr(str(tmp_path / name), chunk_length_s=8, generate_kwargs=french)["text"] == "la"
    monkeypatch.setattr(audio_utils, "ffmpeg_read", lambda data, rate: la)
    assert asr(str(tmp_path / "la.m4a"), generate_kwargs=french)["text"] == "la"


def test_long_form_chunked_transcription(tone_model, tmp_path):
    from transformers import pipeline

    folder, _, _ = tone_model
    rng = np.random.default_rng(11)
    long = tone_clip("la", 120.0, rng, at=70.0)  # inside the chunk [64 s, 72 s)
    sf.write(tmp_path / "long.wav", long, RATE)
    asr = pipeline("automatic-speech-recognition", model=str(folder), ignore_warning=True)
    # Non-overlapping chunks (stride 0): each chunk's output is kept whole. Overlapping chunks are merged by the
    # package's pipeline class (tests/test_long_form.py).
    generate_kwargs = {"src_lang": "fr", "tgt_lang": "en"}
    out = asr(str(tmp_path / "long.wav"), chunk_length_s=8, stride_length_s=0, generate_kwargs=generate_kwargs)
    assert out["text"] == "the"
    quiet = asr(tone_clip("", 120.0, rng), chunk_length_s=8, stride_length_s=0, generate_kwargs=generate_kwargs)
    assert quiet["text"] == ""


@pytest.mark.slow
def test_pipeline_from_a_bare_folder_with_remote_code(tone_model, tmp_path, fresh_python):  # noqa: F811
    folder, model, processor = tone_model
    rng = np.random.default_rng(5)
    mi = tone_clip("mi", 3.0, rng)
    np.save(tmp_path / "mi.npy", mi)
    script = textwrap.dedent(
        f"""
        import json, sys, numpy as np
        from transformers import pipeline
        asr = pipeline("automatic-speech-recognition", model={str(folder)!r}, trust_remote_code=True)
        assert "mu2slam_hf" not in sys.modules
        audio = np.load({str(tmp_path / "mi.npy")!r})
        out = asr([audio, audio], batch_size=2, generate_kwargs={{"src_lang": "fr", "tgt_lang": "en"}})
        print("OUT", json.dumps([o["text"] for o in out]))
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([fresh_python, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("OUT"))
    assert json.loads(line[4:]) == ["my", "my"]
    assert transcribe(model, processor, mi, tgt_lang="en") == "my"
