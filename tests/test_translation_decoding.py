"""Translation decoding chosen on dev (`training.translation_decoding`)."""

import pytest
from test_evaluation import CORPUS, audio_example, tiny_model, tiny_processor

from mu2slam_hf.evaluation import evaluate_model
from mu2slam_hf.training.translation_decoding import BEAM_CANDIDATES, GREEDY_CANDIDATES, choose_translation_decoding


def _dev():
    mt = [{"id": f"m{i}", "task": "mt", "source_lang": "de", "target_lang": "en", "source_text": CORPUS[i],
           "target_text": CORPUS[i + 1]} for i in range(3)]  # fmt: skip
    return mt + [audio_example("a0", "ast", "fr", "en", CORPUS[0], 0.5, seed=0)]


def test_the_dev_best_candidate_is_chosen_and_becomes_what_evaluation_decodes_with():
    processor = tiny_processor()
    model = tiny_model(processor, seed=3)
    dev = _dev()
    fit = choose_translation_decoding(model, processor, [*dev, {**dev[-1], "task": "asr"}], max_new_tokens=12)
    assert fit["dev_examples"] == 4  # the ASR row is not a translation
    assert len(fit["candidates"]) == len(GREEDY_CANDIDATES) + len(BEAM_CANDIDATES) + 1
    grid_best = max(fit["candidates"][:-1], key=lambda c: (c["chrf"], c["bleu"], -c["seconds"]))
    limited = fit["candidates"][-1]  # the grid's best with the length limit fitted on the dev references
    assert set(fit["max_length_ratio"]) == {"speech", "text"} and min(fit["max_length_ratio"].values()) > 0
    assert limited["options"] == {**grid_best["options"], "max_length_ratio": fit["max_length_ratio"]}
    keeps_limit = (limited["chrf"], limited["bleu"]) >= (grid_best["chrf"], grid_best["bleu"])
    best = limited if keeps_limit else grid_best
    assert fit["chosen"] == best["options"]
    assert all("no_repeat_ngram_size" not in c["options"] or c["options"]["no_repeat_ngram_size"] > 0
               for c in fit["candidates"])  # fmt: skip
    greedy_sizes = [c["options"].get("no_repeat_ngram_size", 0) for c in fit["candidates"][: len(GREEDY_CANDIDATES)]]
    assert greedy_sizes == [0, 4, 8, 16]
    model.set_translation_decoding(fit["chosen"])
    default = evaluate_model(model, processor, dev, ("ast", "mt"), max_new_tokens=12)
    chosen_chrf = [m["value"] for m in default["metrics"] if m["name"] == "chrf"]
    assert sum(chosen_chrf) / len(chosen_chrf) == pytest.approx(best["chrf"])


def test_no_translation_rows_is_a_clear_error():
    processor = tiny_processor()
    with pytest.raises(ValueError, match="needs dev examples of AST or MT"):
        choose_translation_decoding(tiny_model(processor), processor, [{**_dev()[-1], "task": "asr"}])
