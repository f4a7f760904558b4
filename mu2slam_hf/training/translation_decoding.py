"""Translation decoding chosen on dev: beam width and the repetition and length controls of AST and MT.

A model early in training, or one short of data, falls into loops ("the the the ..."): greedy decoding follows the
decoder's target-side language model once the source stops steering it. transformers' ``no_repeat_ngram_size``
forbids any n-gram from occurring twice; beam search with a length penalty trades length against score. Which of
them helps depends on the model and its tokenizer (a character model needs longer n-grams than a subword one), so
the fine-tuning run tries a small grid on its dev translations at the end and keeps the best by dev chrF (BLEU
breaks ties; chrF still moves when few 4-grams match). The choice is saved with the model
(``generation_config.translation_decoding``) and is what ``generate``, ``pipeline()`` and the evaluation use for
translation unless the caller passes these options.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..evaluation import generate_predictions, score_predictions

# Tried in order; ``None`` in no_repeat_ngram_size means "the best of the greedy candidates".
GREEDY_CANDIDATES = tuple({"num_beams": 1, "no_repeat_ngram_size": n} for n in (0, 4, 8, 16))
BEAM_CANDIDATES = tuple(
    {"num_beams": 4, "no_repeat_ngram_size": None, "length_penalty": penalty} for penalty in (1.0, 0.6)
)
TRANSLATION_TASKS = ("ast", "mt")


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
    beams with the best greedy n-gram size) and return ``{"chosen": options, "candidates": [...]}``, each candidate
    with its dev ``chrf``, ``bleu`` and ``seconds``. Options with ``no_repeat_ngram_size`` 0 leave it out."""
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
    return {"chosen": max(tried, key=_rank)["options"], "candidates": tried, "dev_examples": len(examples)}


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
