"""Fit a CTC language model to a trained ASR model: count the character n-grams of the corpus's train text, choose
the fusion weight and length bonus on dev, and attach them to the model (saved with it).

Train text = the train split's text-only rows and ASR transcripts, each distinct sentence once, by language, and
those of any further corpora the recipe names (`language_model_text_rows`: written text, far more of it than the
transcripts, whose sentences are checked against the held-out ones). Dev
chooses among a small grid, against decoding without the language model; a grid point is kept only if it lowers
the dev CER (else the model keeps greedy CTC decoding as its default, and the language model is still saved for
users who want it). The chosen point is then tried with wider beams, and the narrowest beam with the lowest dev CER
kept: with the LM fused in, a narrow beam drops hypotheses the LM would later prefer. Where the run's dev
evaluation preferred another decoder (joint CTC/attention or attention alone), that decoder is scored on the same
dev clips, so the caller can choose between it and the CTC head with the language model.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

from ..asr_decoding import DEFAULT_CTC_BEAMS
from ..data.audio import decode_example
from ..data.manifest import iter_manifest, row_texts
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


def language_model_text_rows(folders: Sequence[str | os.PathLike], held_out: set[str]) -> Iterator[dict[str, Any]]:
    """The text-only rows and ASR transcripts of the train splits of corpus ``folders`` whose normalised text
    (`row_texts`) is not in ``held_out`` (the dev and test sentences the language model must not have read)."""
    for folder in folders:
        for row in iter_manifest(os.path.join(folder, "train.jsonl")):
            if row["task"] in ("text", "asr") and not row_texts(row) & held_out:
                yield row


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
    extra_rows: Iterable[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the language model of the dev set's languages from `train_rows`, choose weight and bonus on the ASR
    rows of `dev_examples` with a beam of `num_beams`, then the width among it and the wider of `wider_beams`, and
    attach it to `model` (`set_asr_language_model`).

    `extra_rows` (more text, e.g. `language_model_text_rows`): a second language model of the train text and this
    text is fitted the same way, and the one with the lower dev CER attached (the train text's on a tie): written
    text of another domain can lower or raise the CER of the run's own speech.

    `other_ctc_weight` (below 1: joint CTC/attention, 0: attention alone): also score that decoder (greedy) on the
    same dev rows, as ``dev_cer_other``.

    Returns:
        `{"order", "sentences": {language: count}, "dev_cer_greedy", "dev_cer", "lm_weight", "length_bonus",
        "num_beams", "grid": [{"lm_weight", "length_bonus", "dev_cer"}, ...], "beam_grid": [{"num_beams",
        "dev_cer"}, ...]}` (dev CER averaged over languages; `dev_cer` of the chosen weight, bonus and width; the beam
        grid is empty where no LM weight helped), with `"other_ctc_weight", "dev_cer_other"` when asked, and with
        `extra_rows` an ``"extra_text"`` entry: the second language model's fit, ``kept`` (whether it is the one
        attached) and ``train_text_dev_cer`` (the dev CER of the train text's own).
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

    def dev_cer(language_model: CharNgramLanguageModel | None, lm_weight: float, length_bonus: float, beams: int):
        model.set_asr_language_model(language_model, lm_weight, length_bonus, beams)
        results = evaluate_model(model, processor, dev, ("asr",), batch_size=batch_size, decoder="ctc")
        return averages(results, "asr")["cer"]

    first = CharNgramLanguageModel.from_texts(texts, processor.tokenizer, order)
    greedy = dev_cer(first, 0.0, 0.0, 1)
    fits = [(first, _fit_weights(dev_cer, first, texts, greedy, num_beams, wider_beams))]
    if extra_rows is not None:
        extra_texts = corpus_sentences(extra_rows, languages)
        more = {language: list(dict.fromkeys([*sentences, *extra_texts.get(language, ())]))
                for language, sentences in texts.items()}  # fmt: skip
        second = CharNgramLanguageModel.from_texts(more, processor.tokenizer, order)
        fits.append((second, _fit_weights(dev_cer, second, more, greedy, num_beams, wider_beams)))
    language_model, fit = min(fits, key=lambda pair: pair[1]["dev_cer"])  # the first (train text) on a tie
    if extra_rows is not None:
        extra = fits[1][1]
        fit = {**fit, "extra_text": {**extra, "kept": extra is fit, "train_text_dev_cer": fits[0][1]["dev_cer"]}}
    model.set_asr_language_model(language_model, fit["lm_weight"], fit["length_bonus"], fit["num_beams"])
    fit = {"order": order, **fit}
    if other_ctc_weight is not None:
        other = evaluate_model(model, processor, dev, ("asr",), batch_size=batch_size, max_new_tokens=max_new_tokens,
                               ctc_weight=other_ctc_weight)  # fmt: skip
        fit.update(other_ctc_weight=other_ctc_weight, dev_cer_other=averages(other, "asr")["cer"])
    return fit


def _fit_weights(
    dev_cer: Any,
    language_model: CharNgramLanguageModel,
    texts: dict[str, list[str]],
    greedy: float,
    num_beams: int,
    wider_beams: Sequence[int],
) -> dict[str, Any]:
    """The weight and bonus grid of one language model, then the beam width of its best point (`fit_ctc_language_model`'s
    fields, without ``order``); ``dev_cer(language_model, weight, bonus, beams)`` scores a point."""
    grid = [
        {"lm_weight": weight, "length_bonus": weight * ratio,
         "dev_cer": dev_cer(language_model, weight, weight * ratio, num_beams)}
        for weight in LM_WEIGHTS
        for ratio in LENGTH_BONUS_PER_WEIGHT
    ]  # fmt: skip
    best = min(grid, key=lambda point: point["dev_cer"])
    if best["dev_cer"] >= greedy:
        best = {"lm_weight": 0.0, "length_bonus": 0.0, "dev_cer": greedy}
    chosen, beam_grid = {"num_beams": num_beams, "dev_cer": best["dev_cer"]}, []
    if best["lm_weight"] > 0:
        wider = sorted(beams for beams in set(wider_beams) if beams > num_beams)
        beam_grid = [chosen] + [
            {"num_beams": beams, "dev_cer": dev_cer(language_model, best["lm_weight"], best["length_bonus"], beams)}
            for beams in wider
        ]
        # the narrowest of equally good widths: min keeps the first
        chosen = min(beam_grid, key=lambda point: point["dev_cer"])
    return {
        "sentences": {language: len(sentences) for language, sentences in texts.items()},
        "dev_cer_greedy": greedy,
        "dev_cer": chosen["dev_cer"],
        "lm_weight": best["lm_weight"],
        "length_bonus": best["length_bonus"],
        "num_beams": chosen["num_beams"],
        "grid": grid,
        "beam_grid": beam_grid,
    }


def preferred_asr_ctc_weight(fit: dict[str, Any]) -> float:
    """The ASR decoder (as `generate`'s ``ctc_weight``) to keep after a fit: 1, the CTC head (with the language model
    where it helped), unless the fit scored another decoder (``other_ctc_weight``) lower on the same dev clips."""
    other = fit.get("other_ctc_weight")
    return 1.0 if other is None or fit["dev_cer"] <= fit["dev_cer_other"] else float(other)


__all__ = ["corpus_sentences", "fit_ctc_language_model", "language_model_text_rows", "preferred_asr_ctc_weight"]
