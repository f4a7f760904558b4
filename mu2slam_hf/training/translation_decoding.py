"""Translation decoding chosen on dev: beam width and the repetition and length controls of AST and MT.

A model early in training, or one short of data, falls into loops ("the the the ..."): greedy decoding follows the
decoder's target-side language model once the source stops steering it. transformers' ``no_repeat_ngram_size``
forbids any n-gram from occurring twice; beam search with a length penalty trades length against score. Which of
them helps depends on the model and its tokenizer (a character model needs longer n-grams than a subword one), so
the fine-tuning run tries a small grid on its dev translations at the end and keeps the best by dev chrF (BLEU
breaks ties; chrF still moves when few 4-grams match). The best of the grid is then tried with a length limit
relative to each row's source (``max_length_ratio``, fitted on the dev references' lengths) and keeps it unless dev
scores lower with it: a translation that stops reading its source (out of domain, say) then ends near its source's
length instead of running on to the model's `max_new_tokens`. The choice is saved with the model
(``generation_config.translation_decoding``) and is what ``generate``, ``pipeline()`` and the evaluation use for
translation unless the caller passes these options.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..evaluation import generate_predictions, score_predictions, source_and_target_lengths

# Tried in order; ``None`` in no_repeat_ngram_size means "the best of the greedy candidates".
GREEDY_CANDIDATES = tuple({"num_beams": 1, "no_repeat_ngram_size": n} for n in (0, 4, 8, 16))
BEAM_CANDIDATES = tuple(
    {"num_beams": 4, "no_repeat_ngram_size": None, "length_penalty": penalty} for penalty in (1.0, 0.6)
)
TRANSLATION_TASKS = ("ast", "mt")
# The length limit's ratio is this times the longest dev reference's tokens per source position: room above every
# dev translation, so the limit ends runaways and not translations.
LENGTH_RATIO_MARGIN = 1.5


def dev_score(records: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(mean chrF, mean BLEU) over the directions of translation ``records`` (prediction records)."""
    entries = score_predictions(records)
    chrf = [e["value"] for e in entries if e["name"] == "chrf"]
    bleu = [e["value"] for e in entries if e["name"] == "bleu"]
    return sum(chrf) / max(len(chrf), 1), sum(bleu) / max(len(bleu), 1)


def choose_translation_decoding(
    model: Any,
    processor: Any,
    dev_examples: Sequence[dict[str, Any]],
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Decode the AST/MT ``dev_examples`` with each candidate of `GREEDY_CANDIDATES` and `BEAM_CANDIDATES` (the
    beams with the best greedy n-gram size), then the best of them with the length limit of `fit_max_length_ratio`,
    and return ``{"chosen": options, "candidates": [...], "max_length_ratio": ratios, ...}``, each candidate with
    its dev ``chrf``, ``bleu`` and ``seconds``. The limit is chosen unless its dev chrF, then BLEU, is lower.
    Options with ``no_repeat_ngram_size`` 0 leave it out."""
    examples = [example for example in dev_examples if example["task"] in TRANSLATION_TASKS]
    if not examples:
        raise ValueError("choose_translation_decoding needs dev examples of AST or MT.")
    tried: list[dict[str, Any]] = []
    for candidate in GREEDY_CANDIDATES:
        tried.append(_try(model, processor, examples, batch_size, max_new_tokens, candidate))
    best_n = max(tried, key=_rank)["options"].get("no_repeat_ngram_size", 0)
    for candidate in BEAM_CANDIDATES:
        options = {**candidate, "no_repeat_ngram_size": best_n}
        tried.append(_try(model, processor, examples, batch_size, max_new_tokens, options))
    best = max(tried, key=_rank)
    ratios = fit_max_length_ratio(model, processor, examples, batch_size)
    limited = {**best["options"], "max_length_ratio": ratios}
    tried.append(_try(model, processor, examples, batch_size, max_new_tokens, limited))
    chosen = tried[-1] if _rank(tried[-1])[:2] >= _rank(best)[:2] else best
    return {
        "chosen": chosen["options"],
        "candidates": tried,
        "dev_examples": len(examples),
        "max_length_ratio": ratios,
    }


def fit_max_length_ratio(
    model: Any, processor: Any, dev_examples: Sequence[dict[str, Any]], batch_size: int = 16
) -> dict[str, float]:
    """``{"speech": ratio, "text": ratio}`` (the input modalities ``dev_examples`` have): `LENGTH_RATIO_MARGIN`
    times the largest ratio of a reference's tokens to its source's encoder positions (`generate`'s
    ``max_length_ratio``)."""
    ratios: dict[str, float] = {}
    for record in source_and_target_lengths(model, processor, dev_examples, batch_size):
        modality = "speech" if record["speech"] else "text"
        ratio = record["target_tokens"] / max(record["source_positions"], 1)
        ratios[modality] = max(ratios.get(modality, 0.0), ratio)
    return {modality: round(LENGTH_RATIO_MARGIN * ratio, 4) for modality, ratio in sorted(ratios.items())}


def _rank(candidate: dict[str, Any]) -> tuple[float, float, float]:
    """Best chrF, then BLEU, then the faster option."""
    return candidate["chrf"], candidate["bleu"], -candidate["seconds"]


def _try(
    model: Any,
    processor: Any,
    examples: list[dict[str, Any]],
    batch_size: int,
    max_new_tokens: int | None,
    candidate: dict[str, Any],
) -> dict[str, Any]:
    options = {key: value for key, value in candidate.items() if not (key == "no_repeat_ngram_size" and not value)}
    start = time.perf_counter()
    records = generate_predictions(model, processor, examples, batch_size, max_new_tokens, translation=options)
    chrf, bleu = dev_score(records)
    return {"options": options, "chrf": chrf, "bleu": bleu, "seconds": time.perf_counter() - start}
