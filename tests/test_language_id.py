"""Spoken language identification: the encoder without a language embedding, the head's loss, detection in
`generate` and `pipeline()` (with refusals instead of guesses), growth with new languages, save/load, evaluation."""

import numpy as np
import pytest
import torch
from conftest import PRESETS, make_model

from mu2slam_hf import (
    Mu2SlamConfig,
    Mu2SlamFeatureExtractor,
    Mu2SlamForConditionalGeneration,
    Mu2SlamProcessor,
    build_best_rq,
    train_char_tokenizer,
)
from mu2slam_hf.evaluation import evaluate_language_id, results_to_markdown
from mu2slam_hf.vocabulary import UNKNOWN_LANGUAGE_ID, grow_languages

RATE = 16000
PITCH = {"fr": 300.0, "en": 2400.0}  # each "language" speaks at its own pitch: learnable by a tiny head


def clip(language: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.4 * np.sin(2 * np.pi * PITCH[language] * rng.uniform(0.9, 1.1) * t)
    return (tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_pair() -> tuple[Mu2SlamForConditionalGeneration, Mu2SlamProcessor]:
    tokenizer = train_char_tokenizer(["bonjour hello"], vocab_size=64)
    base = Mu2SlamConfig.from_pretrained(PRESETS / "tiny")
    processor = Mu2SlamProcessor(
        Mu2SlamFeatureExtractor(), tokenizer, build_best_rq(seed=0, codebook_size=base.codebook_size), ["fr", "en"]
    )
    config = Mu2SlamConfig.from_pretrained(PRESETS / "tiny", languages=["fr", "en"], text_vocab_size=len(tokenizer))
    return make_model(config), processor


@pytest.fixture(scope="module")
def identified(tmp_path_factory):
    """A tiny model whose language-identification head (on the frozen random encoder) learnt the two pitches."""
    model, processor = make_pair()
    model.add_language_id_head()
    rng = np.random.default_rng(0)
    languages = ["fr", "en"] * 8
    batch = processor(audio=[clip(lang, rng.uniform(0.5, 2.0), rng) for lang in languages], sampling_rate=RATE)
    labels = processor.language_ids(languages, len(languages))
    optimizer = torch.optim.Adam(model.language_id_head.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = model(batch["input_features"], batch["attention_mask"], language_labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    folder = tmp_path_factory.mktemp("lid-model")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_unknown_language_is_the_encoder_without_a_language_embedding():
    model, processor = make_pair()
    features, mask = processor(audio=[clip("fr", 1.0, np.random.default_rng(1))], sampling_rate=RATE).values()
    unknown = model.model.encoder(features, mask, src_lang_ids=torch.tensor([UNKNOWN_LANGUAGE_ID])).last_hidden_state
    with torch.no_grad():
        model.model.encoder.embed_languages.weight[0].zero_()
    zeroed = model.model.encoder(features, mask, src_lang_ids=torch.tensor([0])).last_hidden_state
    torch.testing.assert_close(unknown, zeroed)
    with pytest.raises(ValueError, match=r"-1 \(language unknown\)"):
        model.model.encoder(features, mask, src_lang_ids=torch.tensor([-2]))
    with pytest.raises(ValueError, match="tgt_lang_ids"):  # the decoder always writes a known language
        model(features, mask, src_lang_ids=torch.tensor([0]), tgt_lang_ids=torch.tensor([-1]),
              labels=torch.tensor([[5, 2]]))  # fmt: skip


def test_language_loss_alone_and_beside_the_decoder_loss():
    model, processor = make_pair()
    model.add_language_id_head()
    rng = np.random.default_rng(2)
    batch = processor(audio=[clip("fr", 1.0, rng), clip("en", 0.7, rng)], sampling_rate=RATE, src_lang=["fr", "en"],
                      text_target=["bonjour", "hello"])  # fmt: skip
    labels = torch.tensor([0, 1])
    alone = model(batch["input_features"], batch["attention_mask"], language_labels=labels)
    expected = torch.nn.functional.cross_entropy(alone.language_logits, labels)
    torch.testing.assert_close(alone.language_id_loss, expected)
    assert alone.logits is None and alone.decoder_loss is None
    model.config.language_id_loss_weight = 0.5
    joint = model(**batch, language_labels=labels)
    torch.testing.assert_close(joint.loss, joint.decoder_loss + 0.5 * joint.language_id_loss)
    torch.testing.assert_close(joint.language_id_loss, alone.language_id_loss)
    ignored = model(batch["input_features"], batch["attention_mask"], language_labels=torch.tensor([0, -100]))
    torch.testing.assert_close(ignored.language_id_loss, torch.nn.functional.cross_entropy(alone.language_logits[:1],
                                                                                             labels[:1]))  # fmt: skip
    with pytest.raises(ValueError, match="language_labels"):
        model(batch["input_features"], batch["attention_mask"], language_labels=torch.tensor([0, 2]))


def test_without_a_head_generate_asks_for_the_language():
    model, processor = make_pair()
    batch = processor(audio=[clip("fr", 1.0, np.random.default_rng(3))], sampling_rate=RATE)
    with pytest.raises(ValueError, match="src_lang.*language-id.yaml"):
        model.generate(**batch, max_new_tokens=2)
    with pytest.raises(ValueError, match="no language-identification head"):
        model.detect_language(**batch)


def test_detected_language_drives_generate(identified):
    model, processor, _ = identified
    rng = np.random.default_rng(4)
    clips = [clip("en", 1.2, rng), clip("fr", 0.8, rng), clip("fr", 1.5, rng)]
    batch = processor(audio=clips, sampling_rate=RATE)
    codes, probabilities = model.detect_language(**batch)
    assert codes == ["en", "fr", "fr"]
    assert probabilities.shape == (3, 2) and torch.allclose(probabilities.sum(-1), torch.ones(3))
    detected = model.generate(**batch, max_new_tokens=4)
    given = model.generate(**batch, src_lang=codes, max_new_tokens=4)
    assert torch.equal(detected, given)
    with pytest.raises(ValueError, match=r"Could not identify the spoken language of 3 clip\(s\).*clip 0: en"):
        model.generate(**batch, max_new_tokens=4, language_detection_threshold=1.0)


def test_head_round_trips_and_grows_with_new_languages(identified, tmp_path):
    model, processor, folder = identified
    batch = processor(audio=[clip("en", 1.0, np.random.default_rng(5))], sampling_rate=RATE)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(folder).eval()
    assert loaded.config.language_id_head is True
    torch.testing.assert_close(loaded.language_logits(**batch), model.language_logits(**batch))
    grow_languages(loaded, ["de"])
    logits = loaded.language_logits(**batch)
    assert logits.shape == (1, 3)
    torch.testing.assert_close(logits[:, :2], model.language_logits(**batch))
    with pytest.raises(ValueError, match="already has"):
        loaded.add_language_id_head()


def test_pipeline_detects_and_returns_the_language(identified):
    from transformers import pipeline

    _, _, folder = identified
    rng = np.random.default_rng(6)
    asr = pipeline("automatic-speech-recognition", model=str(folder))
    outputs = asr([clip("fr", 1.0, rng), clip("en", 1.0, rng)], return_language=True, batch_size=2,
                  generate_kwargs={"max_new_tokens": 4})  # fmt: skip
    assert [output["language"] for output in outputs] == ["fr", "en"]
    given = asr(clip("fr", 1.0, rng), return_language=True, generate_kwargs={"src_lang": "en", "max_new_tokens": 4})
    assert given["language"] == "en"  # the caller's language is used, not second-guessed
    assert "language" not in asr(clip("fr", 1.0, rng), generate_kwargs={"max_new_tokens": 4})
    with pytest.raises(ValueError, match="Could not identify"):
        asr(clip("fr", 1.0, rng), generate_kwargs={"language_detection_threshold": 1.0, "max_new_tokens": 4})
    long_file = np.concatenate([clip("en", 3.0, rng) for _ in range(4)])  # identified chunk by chunk
    chunked = asr(long_file, chunk_length_s=3, return_language=True, return_timestamps="word",
                  generate_kwargs={"max_new_tokens": 4})  # fmt: skip
    assert chunked["language"] == "en" and len(chunked["chunks"]) > 1


def test_language_id_evaluation_reports_accuracy_and_confusion(identified, tmp_path):
    model, processor, _ = identified
    rng = np.random.default_rng(7)
    examples = []
    for index, language in enumerate(["fr", "en", "en", "fr"]):
        examples.append({"id": str(index), "task": "asr", "source_lang": language, "target_text": "",
                         "audio": {"array": clip(language, 1.0, rng), "sampling_rate": RATE}})  # fmt: skip
    results = evaluate_language_id(model, processor, examples, batch_size=3, model_name="m", data_name="d")
    assert {(m["source_lang"], m["value"], m["num_examples"]) for m in results["metrics"]} == {
        ("en", 100.0, 2),
        ("fr", 100.0, 2),
    }
    assert results["language_confusion"] == {"en": {"en": 2}, "fr": {"fr": 2}}
    markdown = results_to_markdown(results)
    assert "## LID ACCURACY" in markdown and "| en | 2 |" in markdown


def test_head_over_all_layers_repeats_half_rate_layers_to_the_output_rate(tiny_config):
    """With `encoder_half_rate_layers`, the head mixes each half-rate layer's states repeated to the output rate."""
    from mu2slam_hf.modeling_mu2slam import Mu2SlamLanguageIdHead

    tiny_config.language_id_all_layers, tiny_config.encoder_half_rate_layers = True, [1, 2]
    head = Mu2SlamLanguageIdHead(tiny_config)
    torch.nn.init.zeros_(head.layer_weights)
    full, half = torch.randn(2, 9, tiny_config.d_model), torch.randn(2, 5, tiny_config.d_model)
    expected = (2 * full + half.repeat_interleave(2, dim=1)[:, :9]) / 3
    torch.testing.assert_close(head.mix_layers((full, half, full)), expected)


def test_head_over_all_layers_weighs_every_encoder_state(tmp_path):
    model, processor = make_pair()
    model.config.language_id_all_layers = True
    model.add_language_id_head()
    head = model.language_id_head
    rng = np.random.default_rng(7)
    batch = processor(audio=[clip("fr", 1.0, rng), clip("en", 0.6, rng)], sampling_rate=RATE)
    unknown = torch.full((2,), UNKNOWN_LANGUAGE_ID)
    encoded = model.model.encoder(batch["input_features"], batch["attention_mask"], src_lang_ids=unknown,
                                  output_hidden_states=True)  # fmt: skip
    states = torch.stack(encoded.hidden_states)
    assert head.layer_weights.shape == (model.config.encoder_layers + 1,) == states.shape[:1]
    # Untrained: every state weighed equally.
    torch.testing.assert_close(model.language_logits(**batch), head(states.mean(0), encoded.attention_mask))
    with torch.no_grad():
        head.layer_weights.copy_(torch.tensor([-1e4] * (states.shape[0] - 1) + [0.0]))
    torch.testing.assert_close(model.language_logits(**batch), head(encoded.last_hidden_state, encoded.attention_mask))
    loss = model(batch["input_features"], batch["attention_mask"], language_labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert head.layer_weights.grad is not None
    with pytest.raises(ValueError, match="another encoder depth"):
        head.mix_layers(encoded.hidden_states[1:])
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.language_id_all_layers is True
    torch.testing.assert_close(loaded.language_id_head.layer_weights, head.layer_weights)
    torch.testing.assert_close(loaded.language_logits(**batch), model.eval().language_logits(**batch))
