"""TaskMixture: per-task counts, temperature language sampling, determinism and resumption."""

import json
from collections import Counter

import numpy as np
import pytest

from mu2slam_hf.data import make_example, text_token_lengths, to_dataset
from mu2slam_hf.data.mixing import TaskMixture, temperature_probabilities
from mu2slam_hf.tokenization_mu2slam import train_char_tokenizer

SIZES = {"en": 2000, "de": 200, "cs": 20}


def _text(sizes):
    return [
        make_example(f"t-{lang}-{i}", "text", lang, source_text="x") for lang, n in sizes.items() for i in range(n)
    ]


def _mt(sizes):
    return [make_example(f"m-{lang}-{i}", "mt", lang, source_text="x", target_text="y", target_lang="en")
            for lang, n in sizes.items() for i in range(n)]  # fmt: skip


def _speech(n):
    return [make_example(f"s-{i}", "speech", "fr", audio=f"{i}.flac") for i in range(n)]


def test_temperature_probabilities():
    p = temperature_probabilities({"a": 1000, "b": 10}, 1.0)
    assert p["a"] == pytest.approx(1000 / 1010)
    p = temperature_probabilities({"a": 1000, "b": 10}, 2.0)
    assert p["a"] / p["b"] == pytest.approx(10.0)


def test_language_sampling_matches_temperature_distribution():
    mixture = TaskMixture(
        {"text": to_dataset(_text(SIZES))}, examples_per_step={"text": 8}, language_temperature={"text": 3}
    )
    langs = Counter()
    for _ in range(2500):
        langs.update(example["source_lang"] for example in mixture.next_batch()["text"])
    expected = temperature_probabilities(SIZES, 3.0)
    observed = [langs[lang] for lang in SIZES]
    total = sum(observed)
    assert total == 20_000
    expected_counts = [expected[lang] * total for lang in SIZES]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected_counts, strict=True))
    assert chi2 < 13.82  # chi-square, 2 degrees of freedom, p = 0.001
    assert expected["cs"] > 0.1  # T=3 lifts the 1% language to over 10%


def test_examples_per_step_and_pair_keys():
    mixture = TaskMixture({"speech": _speech(50), "text": _text(SIZES), "mt": _mt({"de": 30, "cs": 3})}, seed=1)
    step = mixture.next_batch()
    assert {task: len(v) for task, v in step.items()} == {"speech": 4, "text": 8, "mt": 1}
    assert set(mixture.probabilities["mt"]) == {"cs-en", "de-en"}
    ratio = mixture.probabilities["mt"]["de-en"] / mixture.probabilities["mt"]["cs-en"]
    assert ratio == pytest.approx(np.sqrt(10))


def test_each_pass_covers_every_example_once():
    mixture = TaskMixture({"speech": _speech(12)}, examples_per_step={"speech": 4})
    seen = [e["id"] for _ in range(3) for e in mixture.next_batch()["speech"]]
    assert sorted(seen) == sorted(f"s-{i}" for i in range(12))


def test_deterministic_and_resumable():
    sources = {"speech": _speech(30), "text": _text(SIZES), "mt": _mt({"de": 30, "cs": 3})}
    a, b = TaskMixture(sources, seed=7), TaskMixture(sources, seed=7)
    assert [a.next_indices() for _ in range(20)] == [b.next_indices() for _ in range(20)]
    assert TaskMixture(sources, seed=8).next_indices() != TaskMixture(sources, seed=7).next_indices()
    for _ in range(37):
        a.next_indices()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_indices() for _ in range(50)]
    resumed = TaskMixture(sources, seed=7)
    resumed.load_state_dict(state)
    assert resumed.step == 57
    assert [resumed.next_indices() for _ in range(50)] == expected


def test_length_budgets_draw_bucketed_batches_of_text_tokens_and_speech_seconds():
    texts = [("ab " * (1 + i % 23)).strip() for i in range(300)]
    mt = [make_example(f"m-{i}", "mt", "de", source_text=t, target_text=t[: 1 + i % 5], target_lang="en")
          for i, t in enumerate(texts)]  # fmt: skip
    asr = [make_example(f"a-{i}", "asr", "fr", audio=f"{i}.flac", target_text="x", duration=1 + i % 9)
           for i in range(100)]  # fmt: skip
    tokenizer = train_char_tokenizer(texts, vocab_size=64)
    lengths = text_token_lengths(to_dataset(mt), tokenizer)
    assert lengths[0] == len(tokenizer(texts[0])["input_ids"]) and lengths.max() == 23 * 3 - 1 + 1  # chars + eos
    assert np.array_equal(lengths, text_token_lengths(mt, tokenizer))  # a dataset and a list read alike
    tokenizer.backend_tokenizer.enable_padding(length=100)  # a saved tokenizer may carry padding and truncation
    tokenizer.backend_tokenizer.enable_truncation(max_length=10)
    assert np.array_equal(lengths, text_token_lengths(mt, tokenizer))
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.backend_tokenizer.no_truncation()
    shuffled = to_dataset(mt).shuffle(seed=1).select(range(0, 300, 7))  # a dataset with an indices mapping
    assert np.array_equal(text_token_lengths(shuffled, tokenizer), text_token_lengths(list(shuffled), tokenizer))

    def mixture():
        return TaskMixture({"mt": to_dataset(mt), "asr": to_dataset(asr)}, {}, {}, seed=3, seconds_per_step={"asr": 20},
                           tokens_per_step={"mt": 200}, token_lengths={"mt": lengths})  # fmt: skip

    first, seen = mixture(), Counter()
    steps = [first.next_indices() for _ in range(len(first.bucketed["mt"]))]
    for step in steps:
        assert max(lengths[i] for i in step["mt"]) * len(step["mt"]) <= 200 or len(step["mt"]) == 1
        assert max(1 + i % 9 for i in step["asr"]) * len(step["asr"]) <= 20
        seen.update(step["mt"])
    assert sorted(seen) == list(range(len(mt))) and set(seen.values()) == {1}  # one epoch: each pair once
    resumed = mixture()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [resumed.next_indices() for _ in range(3)] == [first.next_indices() for _ in range(3)]
    with pytest.raises(ValueError, match=r"tokens_per_step\['mt'\] needs token_lengths\['mt'\]"):
        TaskMixture({"mt": to_dataset(mt)}, {}, {}, tokens_per_step={"mt": 200})


def test_bucketed_batches_sample_languages_by_temperature():
    """Length-bucketed tasks follow `language_temperature` too: each epoch gives every language its share of the
    examples (a large language a new subset each epoch, a small one repeated), padding stays low, and at T=1 the
    batches are those of one pass over every example."""
    sizes = {"cs": 600, "de": 150, "en": 50}
    asr = [make_example(f"a-{lang}-{i}", "asr", lang, audio=f"{lang}{i}.flac", target_text="x", duration=1 + i % 7)
           for lang, n in sizes.items() for i in range(n)]  # fmt: skip
    dataset = to_dataset(asr)

    def mixture(temperature):
        return TaskMixture({"asr": dataset}, {}, {"asr": temperature}, seed=5, seconds_per_step={"asr": 20})

    proportional = mixture(1.0)
    batches = proportional.bucketed["asr"].epoch_batches(0)
    assert [proportional.next_indices()["asr"] for _ in range(len(batches))] == batches

    uniform = mixture(100.0)
    shares = uniform.epoch_shares["asr"]
    assert shares == {lang: round(p * 800) for lang, p in temperature_probabilities(sizes, 100.0).items()}
    assert min(shares.values()) > 260  # near even: 263-270 each
    language = {i: example["source_lang"] for i, example in enumerate(asr)}
    seconds = {i: example["duration"] for i, example in enumerate(asr)}
    epochs = []
    for epoch in range(3):
        drawn = [uniform.next_indices()["asr"]]
        while uniform.state_dict()["cursors"]["asr"]["*"] != [epoch + 1, 0]:  # (epoch, position) of the next batch
            drawn.append(uniform.next_indices()["asr"])
        epochs.append(Counter(i for batch in drawn for i in batch))
        assert Counter(language[i] for i in epochs[-1].elements()) == Counter(shares)
        padded = sum(max(seconds[i] for i in batch) * len(batch) for batch in drawn)
        assert 1 - sum(seconds[i] for batch in drawn for i in batch) / padded < 0.1
    czech = [{i for i in epoch if language[i] == "cs"} for epoch in epochs]
    assert not czech[0] & czech[1] and len(czech[0] | czech[1] | czech[2]) == 600  # 270 an epoch: 3 cover all 600
    assert max(epochs[0][i] for i in epochs[0] if language[i] == "en") >= 5  # 50 clips fill a share of 263

    resumed = mixture(100.0)
    resumed.load_state_dict(json.loads(json.dumps(uniform.state_dict())))
    assert [resumed.next_indices() for _ in range(5)] == [uniform.next_indices() for _ in range(5)]
