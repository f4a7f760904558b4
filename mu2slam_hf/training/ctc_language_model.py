"""Fit a CTC language model to a trained ASR model: count the character n-grams of the corpus's train text, choose
the fusion weight and length bonus on dev, and attach them to the model (saved with it).

Train text = the train split's text-only rows and ASR transcripts, each distinct sentence once, by language. Dev
chooses among a small grid, against decoding without the language model; a grid point is kept only if it lowers
the dev CER (else the model keeps greedy CTC decoding as its default, and the language model is still saved for
users who want it). The chosen point is then tried with wider beams, and the narrowest beam with the lowest dev CER
kept: with the LM fused in, a narrow beam drops hypotheses the LM would later prefer. Where the run's dev
evaluation preferred another decoder (joint CTC/attention or attention alone), that decoder is scored on the same
dev clips, so the caller can choose between it and the CTC head with the language model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from ..asr_decoding import DEFAULT_CTC_BEAMS
from ..data.audio import decode_example
from ..evaluation import averages, evaluate_model
from ..ngram_lm import CharNgramLanguageModel

LM_WEIGHTS = (0.2, 0.35, 0.5, 0.8)
LENGTH_BONUS_PER_WEIGHT = (0.5, 1.0, 2.0)  # the bonus as a multiple of the weight (it offsets the LM's cost per token)
WIDER_BEAMS = (16, 32)


def corpus_sentences(rows: Iterable[dict[str, Any]], languages: Collection[str]) -> dict[str, list[str]]:
    """Distinct sentences of `languages` in data-schema rows: text-only rows' `source_text` and ASR transcripts."""
    sentences: dict[str, dict[str, None]] = {language: {} for language in languages}
    for row in rows:
        if row["task"] not in ("text", "asr") or row["source_lang"] not in sentences:
            continue
        text = row.get("target_text") if row["task"] == "asr" else None
        text = text or row.get("source_text")
        if text:
            sentences[row["source_lang"]][text] = None
    return {language: list(texts) for language, texts in sentences.items() if texts}


def fit_ctc_language_model(
    model: Any,
    processor: Any,
    train_rows: Iterable[dict[str, Any]],
    dev_examples: Sequence[dict[str, Any]],
    order: int = 6,
    num_beams: int = DEFAULT_CTC_BEAMS,
    batch_size: int = 16,
    other_ctc_weight: float | None = None,
    max_new_tokens: int = 128,
    wider_beams: Sequence[int] = WIDER_BEAMS,
) -> dict[str, Any]:
    """Build the language model of the dev set's languages from `train_rows`, choose weight and bonus on the ASR
    rows of `dev_examples` with a beam of `num_beams`, then the width among it and the wider of `wider_beams`, and
    attach it to `model` (`set_asr_language_model`).

    `other_ctc_weight` (below 1: joint CTC/attention, 0: attention alone): also score that decoder (greedy) on the
    same dev rows, as ``dev_cer_other``.

    Returns:
        `{"order", "sentences": {language: count}, "dev_cer_greedy", "dev_cer", "lm_weight", "length_bonus",
        "num_beams", "grid": [{"lm_weight", "length_bonus", "dev_cer"}, ...], "beam_grid": [{"num_beams",
        "dev_cer"}, ...]}` (dev CER averaged over languages; `dev_cer` of the chosen weight, bonus and width; the beam
        grid is empty where no LM weight helped), with `"other_ctc_weight", "dev_cer_other"` when asked.
    """
    # Audio read once here, not once per grid point (evaluate_model leaves decoded examples as they are).
    dev = [decode_example(dict(example)) for example in dev_examples if example["task"] == "asr"]
    if not dev:
        raise ValueError("Choosing the CTC language model's weight needs ASR dev examples; the dev set has none.")
    languages = sorted({example["source_lang"] for example in dev})
    texts = corpus_sentences(train_rows, languages)
    missing = sorted(set(languages) - set(texts))
    if missing:
        raise ValueError(f"No train text of the dev languages {missing}: the CTC language model needs their text.")
    language_model = CharNgramLanguageModel.from_texts(texts, processor.tokenizer, order)

    def dev_cer(lm_weight: float, length_bonus: float, beams: int) -> float:
        model.set_asr_language_model(language_model, lm_weight, length_bonus, beams)
        results = evaluate_model(model, processor, dev, ("asr",), batch_size=batch_size, decoder="ctc")
        return averages(results, "asr")["cer"]

    greedy = dev_cer(0.0, 0.0, 1)
    grid = [
        {"lm_weight": weight, "length_bonus": weight * ratio, "dev_cer": dev_cer(weight, weight * ratio, num_beams)}
        for weight in LM_WEIGHTS
        for ratio in LENGTH_BONUS_PER_WEIGHT
    ]
    best = min(grid, key=lambda point: point["dev_cer"])
    if best["dev_cer"] >= greedy:
        best = {"lm_weight": 0.0, "length_bonus": 0.0, "dev_cer": greedy}
    chosen, beam_grid = {"num_beams": num_beams, "dev_cer": best["dev_cer"]}, []
    if best["lm_weight"] > 0:
        wider = sorted(beams for beams in set(wider_beams) if beams > num_beams)
        beam_grid = [chosen] + [
            {"num_beams": beams, "dev_cer": dev_cer(best["lm_weight"], best["length_bonus"], beams)} for beams in wider
        ]
        # the narrowest of equally good widths: min keeps the first
        chosen = min(beam_grid, key=lambda point: point["dev_cer"])
    model.set_asr_language_model(language_model, best["lm_weight"], best["length_bonus"], chosen["num_beams"])
    fit = {
        "order": order,
        "sentences": {language: len(sentences) for language, sentences in texts.items()},
        "dev_cer_greedy": greedy,
        "dev_cer": chosen["dev_cer"],
        "lm_weight": best["lm_weight"],
        "length_bonus": best["length_bonus"],
        "num_beams": chosen["num_beams"],
        "grid": grid,
        "beam_grid": beam_grid,
    }
    if other_ctc_weight is not None:
        other = evaluate_model(model, processor, dev, ("asr",), batch_size=batch_size, max_new_tokens=max_new_tokens,
                               ctc_weight=other_ctc_weight)  # fmt: skip
        fit.update(other_ctc_weight=other_ctc_weight, dev_cer_other=averages(other, "asr")["cer"])
    return fit


def preferred_asr_ctc_weight(fit: dict[str, Any]) -> float:
    """The ASR decoder (as `generate`'s ``ctc_weight``) to keep after a fit: 1, the CTC head (with the language model
    where it helped), unless the fit scored another decoder (``other_ctc_weight``) lower on the same dev clips."""
    other = fit.get("other_ctc_weight")
    return 1.0 if other is None or fit["dev_cer"] <= fit["dev_cer_other"] else float(other)


__all__ = ["corpus_sentences", "fit_ctc_language_model", "preferred_asr_ctc_weight"]
