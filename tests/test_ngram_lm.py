"""The CTC language model: a normalised character n-gram model, the prefix beam search it is fused into, and the
model's use of it (generate, save/load, clear errors)."""

import itertools
import math

import pytest
import torch
from test_ctc_decoding import speech_batch
from test_evaluation import CORPUS, LANGUAGES, audio_example, tiny_model, tiny_processor

from mu2slam_hf.ctc_decoding import ctc_greedy_decode, ctc_prefix_beam_search
from mu2slam_hf.evaluation import averages, evaluate_model
from mu2slam_hf.ngram_lm import END, CharNgramLanguageModel, CharNgramModel
from mu2slam_hf.training.ctc_language_model import (
    LM_WEIGHTS,
    corpus_sentences,
    fit_ctc_language_model,
    preferred_asr_ctc_weight,
)

TEXTS = ["the snail is blocking the way", "what is that snail doing", "a snail and a fish"]


@pytest.mark.parametrize("order", [1, 3, 5])
def test_char_ngram_probabilities_sum_to_one(order):
    model = CharNgramModel.from_texts(TEXTS, order)
    unseen = "\u00a7"  # one character never seen stands for all of them
    for history in ["", "t", "the sn", "zzz", "what is th"]:
        total = sum(math.exp(model.log_prob(history, char)) for char in model.alphabet)
        total += math.exp(model.log_prob(history, unseen))
        assert total == pytest.approx(1.0, abs=1e-9)
    assert model.log_prob("the sna", "i") > model.log_prob("the sna", "e")


def test_language_model_save_load_round_trip_and_corrupt_file(tmp_path):
    processor = tiny_processor()
    lm = CharNgramLanguageModel.from_texts({"fr": TEXTS, "de": TEXTS[:1]}, processor.tokenizer, order=4)
    lm.save(tmp_path / "lm.json")
    loaded = CharNgramLanguageModel.load(tmp_path / "lm.json")
    assert loaded.languages == ["de", "fr"] and loaded.token_texts == lm.token_texts
    for history, char in [("", "t"), ("the sn", "a"), ("what is", END)]:
        assert loaded.for_language("fr").log_prob(history, char) == lm.for_language("fr").log_prob(history, char)
    (tmp_path / "bad.json").write_text('{"languages": {"fr": {"order": 3, "counts": {"ab": 1}}}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable CTC language model"):
        CharNgramLanguageModel.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no text of language 'it'"):
        lm.for_language("it")


def _labelling_log_prob(log_probs: torch.Tensor, labels: tuple[int, ...]) -> float:
    if not labels:
        return float(log_probs[:, 0].sum())
    loss = torch.nn.functional.ctc_loss(
        log_probs[:, None], torch.tensor([labels]), torch.tensor([len(log_probs)]), torch.tensor([len(labels)]),
        reduction="sum", zero_infinity=False,
    )  # fmt: skip
    return -float(loss)


def test_prefix_beam_search_finds_the_most_probable_labelling():
    """A wide beam finds the labelling with the largest total probability over its alignments (brute force over
    every labelling), which can differ from the best path's."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(6):
        log_probs = (torch.randn(5, 3, generator=generator) * 2).log_softmax(-1)
        labellings = [seq for n in range(6) for seq in itertools.product((1, 2), repeat=n)]
        best = max(labellings, key=lambda seq: _labelling_log_prob(log_probs, seq))
        found = ctc_prefix_beam_search(log_probs, None, beam_size=64, candidates_per_frame=3, prune_below=-1e9)
        assert tuple(found) == best, trial


def test_prefix_beam_search_with_a_language_model_maximises_the_fused_score():
    """With the LM fused in, a wide beam finds the labelling with the best ``log p_ctc + w (log p_lm + log p_lm(end))
    + bonus * length`` (brute force), including a word marker at the start that writes nothing."""
    texts = [None, "a", "b", " a"]  # blank, two characters, and a token with a word marker
    lm = CharNgramModel.from_texts(["ab a", "ba", "a a b"], order=3)
    weight, bonus = 0.7, 0.4
    generator = torch.Generator().manual_seed(1)
    for trial in range(6):
        log_probs = (torch.randn(5, 4, generator=generator) * 2).log_softmax(-1)

        def fused(seq, log_probs=log_probs):
            text = "".join(texts[t] for t in seq).lstrip(" ")
            lm_score = lm.text_log_prob("", text) + lm.log_prob(text, END)
            return _labelling_log_prob(log_probs, seq) + weight * lm_score + bonus * len(seq)

        labellings = [seq for n in range(6) for seq in itertools.product((1, 2, 3), repeat=n)]
        best = max(labellings, key=fused)
        found = ctc_prefix_beam_search(
            log_probs, texts, 400, lm, weight, bonus, candidates_per_frame=4, prune_below=-1e9
        )
        assert fused(tuple(found)) == pytest.approx(fused(best), abs=1e-4), trial


def test_the_language_model_fixes_a_spelling_the_ctc_head_gets_wrong():
    """Frames that slightly prefer 'e' over 'a' in "snail" -> "sneil"; an LM of text with "snail" corrects it, and
    weight 0 keeps the CTC answer."""
    texts = [None, *"snaile "]
    index = {char: i for i, char in enumerate(texts) if char}
    spelled = "sn?il"
    log_probs = torch.full((2 * len(spelled), len(texts)), -9.0)
    for frame, char in enumerate(spelled):
        if char == "?":
            log_probs[2 * frame, index["e"]], log_probs[2 * frame, index["a"]] = math.log(0.55), math.log(0.44)
        else:
            log_probs[2 * frame, index[char]] = math.log(0.99)
        log_probs[2 * frame + 1, 0] = math.log(0.99)
    log_probs = log_probs.log_softmax(-1)
    lm = CharNgramModel.from_texts(["a snail", "the snail", "snails"], order=4)
    without = ctc_prefix_beam_search(log_probs, texts, 8, lm, lm_weight=0.0)
    fused = ctc_prefix_beam_search(log_probs, texts, 8, lm, lm_weight=0.5, length_bonus=0.5)
    assert "".join(texts[t] for t in without) == "sneil"
    assert "".join(texts[t] for t in fused) == "snail"


def _fitted(processor, model, weight=0.5, bonus=0.5, beams=4):
    lm = CharNgramLanguageModel.from_texts(corpus_sentences(_rows(), LANGUAGES), processor.tokenizer, order=4)
    model.set_asr_language_model(lm, weight, bonus, beams)
    return lm


def _rows():
    return [
        {"task": "text", "source_lang": language, "source_text": text} for language in LANGUAGES for text in CORPUS
    ]


def test_ctc_beam_search_in_generate_batch_equals_single_and_round_trips(tmp_path):
    processor = tiny_processor()
    model = tiny_model(processor, seed=4)
    clips, batch = speech_batch(processor)
    greedy = model.generate(**batch, ctc_weight=1.0)
    assert torch.equal(greedy, model._ctc_best_paths(model._encode_speech(
        batch["input_features"], batch["attention_mask"], None, batch["src_lang_ids"]), bos=1))  # fmt: skip
    _fitted(processor, model)
    fused = model.generate(**batch, ctc_weight=1.0)  # the attached model's defaults: beam 4, weight 0.5
    languages = ["fr", "de", "fr"]
    for row, clip in enumerate(clips):
        single = model.generate(**processor(audio=clip, sampling_rate=16000, src_lang=languages[row]), ctc_weight=1.0)
        assert single[0][single[0] != 0].tolist() == fused[row][fused[row] != 0].tolist()
    assert torch.equal(model.generate(**batch, ctc_weight=1.0, lm_weight=0.0, num_beams=1), greedy)
    model.set_asr_ctc_weight(1.0)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.asr_language_model is not None and loaded.generation_config.asr_lm_weight == 0.5
    assert torch.equal(loaded.generate(**batch), fused)


def test_language_model_misuse_is_a_clear_error():
    processor = tiny_processor()
    model = tiny_model(processor, seed=5)
    _, batch = speech_batch(processor)
    for ctc_weight in (1.0, 0.3):  # the CTC head's beam search, joint decoding
        with pytest.raises(ValueError, match="needs a CTC language model"):
            model.generate(**batch, ctc_weight=ctc_weight, lm_weight=0.3, max_new_tokens=4)
    _fitted(processor, model)
    with pytest.raises(ValueError, match="pass a ctc_weight"):  # the attention decoder alone has no LM fusion
        model.generate(**batch, ctc_weight=0.0, lm_weight=0.3, max_new_tokens=4)
    other = tiny_processor(texts=["xyz qrs", *CORPUS[:1]])
    foreign = CharNgramLanguageModel.from_texts({"fr": TEXTS}, other.tokenizer)
    if len(other.tokenizer) != len(processor.tokenizer):
        with pytest.raises(ValueError, match="tokenizer of"):
            model.set_asr_language_model(foreign)
    only_fr = CharNgramLanguageModel.from_texts({"fr": TEXTS}, processor.tokenizer)
    model.set_asr_language_model(only_fr, 0.5, 0.5, 4)
    with pytest.raises(ValueError, match="no text of language 'de'"):
        model.generate(**batch, ctc_weight=1.0)


def test_greedy_ctc_decoding_is_unchanged_by_an_unweighted_language_model():
    processor = tiny_processor()
    model = tiny_model(processor, seed=6)
    _, batch = speech_batch(processor)
    _fitted(processor, model, weight=0.0, bonus=0.0, beams=8)
    encoded = model._encode_speech(batch["input_features"], batch["attention_mask"], None, batch["src_lang_ids"])
    log_probs, lengths = model.ctc_log_probs(encoded)
    expected = ctc_greedy_decode(log_probs, lengths)
    ids = model.generate(**batch, ctc_weight=1.0)
    assert [row[1:][row[1:] != 0].tolist()[:-1] for row in ids] == expected


def test_a_folder_that_lost_its_language_model_decodes_without_it_and_says_so(tmp_path, caplog):
    from mu2slam_hf.hub.folder import UPLOAD_FILES
    from mu2slam_hf.ngram_lm import LM_FILE_NAME

    assert LM_FILE_NAME in UPLOAD_FILES  # published with the model
    processor = tiny_processor()
    model = tiny_model(processor, seed=7)
    _, batch = speech_batch(processor)
    _fitted(processor, model)
    model.save_pretrained(tmp_path)
    (tmp_path / LM_FILE_NAME).unlink()
    with caplog.at_level("WARNING"):
        loaded = type(model).from_pretrained(tmp_path).eval()
    assert LM_FILE_NAME in caplog.text and loaded.asr_language_model is None
    assert torch.equal(loaded.generate(**batch, ctc_weight=1.0), model.generate(**batch, ctc_weight=1.0, lm_weight=0))


def test_fine_tuning_from_a_folder_leaves_its_language_model_behind(tmp_path):
    """The folder's LM and its weights were chosen for the folder's own weights and text: a run initialised from it
    scores the CTC head alone on dev (not the old LM's beam search, which may lack the run's languages) and ends
    with the LM it fits itself, or none."""
    from mu2slam_hf.training.assets import init_from_checkpoint

    processor = tiny_processor()
    model = tiny_model(processor, seed=9)
    _fitted(processor, model)
    model.set_asr_ctc_weight(1.0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert type(model).from_pretrained(tmp_path).asr_language_model is not None  # users get it with the folder
    initialised, _ = init_from_checkpoint(str(tmp_path), {})
    assert initialised.asr_language_model is None and initialised.generation_config.asr_lm_weight == 0.0
    _, batch = speech_batch(processor)
    greedy = initialised.generate(**batch, ctc_weight=1.0, num_beams=1, lm_weight=0.0)
    assert torch.equal(initialised.generate(**batch, ctc_weight=1.0), greedy)


def test_fitting_chooses_the_grid_point_with_the_lowest_dev_cer_or_none():
    processor = tiny_processor()
    model = tiny_model(processor, seed=8)
    dev = [audio_example(f"d{i}", "asr", lang, lang, CORPUS[i], 0.6, seed=i) for i, lang in enumerate(LANGUAGES)]
    fit = fit_ctc_language_model(model, processor, _rows(), [*dev, {**dev[0], "task": "ast"}], order=3, num_beams=2,
                                 wider_beams=(4,))  # fmt: skip
    assert fit["sentences"] == {language: len(CORPUS) for language in LANGUAGES}
    assert len(fit["grid"]) == len(LM_WEIGHTS) * 3
    best = min(point["dev_cer"] for point in fit["grid"])
    if best < fit["dev_cer_greedy"]:
        # the chosen point is tried at each width; the narrowest of the lowest dev CERs is kept
        assert [point["num_beams"] for point in fit["beam_grid"]] == [2, 4] and fit["beam_grid"][0]["dev_cer"] == best
        chosen = min(fit["beam_grid"], key=lambda point: point["dev_cer"])
        assert fit["lm_weight"] > 0 and fit["dev_cer"] == chosen["dev_cer"] and fit["num_beams"] == chosen["num_beams"]
    else:  # no weight helps: the model keeps greedy CTC decoding by default
        assert fit["dev_cer"] == fit["dev_cer_greedy"] and fit["lm_weight"] == 0 and fit["beam_grid"] == []
    assert model.asr_language_model is not None and model.generation_config.asr_lm_weight == fit["lm_weight"]
    assert model.generation_config.asr_ctc_beams == fit["num_beams"]
    assert preferred_asr_ctc_weight(fit) == 1.0  # no other decoder was scored
    with pytest.raises(ValueError, match="No train text of the dev languages"):
        fit_ctc_language_model(model, processor, _rows()[:1], dev, order=3)


def test_a_fit_scores_the_decoder_dev_preferred_on_its_clips_and_the_better_one_is_kept():
    processor = tiny_processor()
    model = tiny_model(processor, seed=8)
    dev = [audio_example(f"d{i}", "asr", lang, lang, CORPUS[i], 0.6, seed=i) for i, lang in enumerate(LANGUAGES)]
    fit = fit_ctc_language_model(model, processor, _rows(), dev, order=3, num_beams=2, other_ctc_weight=0.3,
                                 max_new_tokens=8)  # fmt: skip
    joint = evaluate_model(model, processor, dev, ("asr",), batch_size=16, max_new_tokens=8, ctc_weight=0.3)
    assert fit["other_ctc_weight"] == 0.3 and fit["dev_cer_other"] == averages(joint, "asr")["cer"]
    assert preferred_asr_ctc_weight(fit) == (1.0 if fit["dev_cer"] <= fit["dev_cer_other"] else 0.3)
    # joint decoding ahead on the same clips stays the default; the CTC head with its LM ahead (or equal) replaces it
    assert preferred_asr_ctc_weight({"dev_cer": 25.0, "other_ctc_weight": 0.3, "dev_cer_other": 22.0}) == 0.3
    assert preferred_asr_ctc_weight({"dev_cer": 20.0, "other_ctc_weight": 0.0, "dev_cer_other": 22.0}) == 1.0
    assert preferred_asr_ctc_weight({"dev_cer": 22.0, "other_ctc_weight": 0.3, "dev_cer_other": 22.0}) == 1.0
