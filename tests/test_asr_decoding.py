"""The model's default ASR decoder: one validated object, read the same from a model and from generation_config.json."""

import json

import pytest
import torch
from conftest import make_model, random_batch

from mu2slam_hf import Mu2SlamForConditionalGeneration
from mu2slam_hf.asr_decoding import DEFAULT_CTC_BEAMS, JOINT_CTC_WEIGHT, AsrDecodingOptions


def test_options_read_the_flat_keys_of_generation_config_json():
    saved = {"asr_ctc_weight": 1, "asr_lm_weight": 0.35, "asr_lm_length_bonus": 0.7, "asr_ctc_beams": 4}
    options = AsrDecodingOptions.from_generation_config(saved)
    assert options == AsrDecodingOptions(ctc_weight=1.0, lm_weight=0.35, lm_length_bonus=0.7, ctc_beams=4)
    assert options.decoder == "ctc" and options.evaluation_options() == {"decoder": "ctc"}
    unset = AsrDecodingOptions.from_generation_config({})
    assert unset == AsrDecodingOptions() and unset.ctc_beams == DEFAULT_CTC_BEAMS and unset.decoder == "attention"
    assert unset.default_ctc_weight() == 0.0  # generate: the attention decoder
    assert unset.evaluation_options() == {"decoder": "attention", "ctc_weight": JOINT_CTC_WEIGHT}
    assert AsrDecodingOptions(ctc_weight=0.3).decoder == "joint"


@pytest.mark.parametrize(
    "bad", [{"ctc_weight": 1.5}, {"ctc_weight": -0.1}, {"lm_weight": -1.0}, {"ctc_beams": 0}, {"ctc_beams": 2.5}]
)
def test_options_refuse_values_out_of_range(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AsrDecodingOptions(**bad)


def test_ctc_search_defaults():
    options = AsrDecodingOptions(ctc_weight=1.0, lm_weight=0.5, lm_length_bonus=0.25, ctc_beams=6)
    assert options.ctc_search(None, None, None, True, 1) == (0.5, 0.25, 6)
    assert options.ctc_search(None, None, None, False, 1) == (0.0, 0.0, 1)  # no language model attached
    assert options.ctc_search(0.0, None, 3, True, 1) == (0.0, 0.0, 3)


def test_a_model_saves_and_reloads_its_options(tiny_config, tmp_path):
    model = make_model(tiny_config)
    assert model.asr_decoding == AsrDecodingOptions()
    model.set_asr_ctc_weight(0.3)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["asr_ctc_weight"] == 0.3 and "asr_lm_weight" not in saved
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.asr_decoding == AsrDecodingOptions(ctc_weight=0.3)
    with pytest.raises(ValueError, match=r"ctc_weight must be in \[0, 1\]"):
        loaded.set_asr_ctc_weight(2.0)


def test_an_old_folder_decodes_with_its_saved_ctc_weight(tiny_config, tmp_path):
    """A generation_config.json written before the options object (the flat `asr_ctc_weight`) decodes the same."""
    model = make_model(tiny_config).eval()
    model.save_pretrained(tmp_path)
    generation_file = tmp_path / "generation_config.json"
    saved = {**json.loads(generation_file.read_text()), "asr_ctc_weight": 1.0, "_from_model_config": False}
    generation_file.write_text(json.dumps(saved))
    loaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path).eval()
    features, mask = random_batch(tiny_config)
    batch = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 3]))
    assert loaded.asr_decoding.ctc_weight == 1.0
    assert torch.equal(loaded.generate(**batch), model.generate(**batch, ctc_weight=1.0))
