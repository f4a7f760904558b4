"""Character n-gram language models for shallow fusion with the CTC head.

The CTC head of a model trained on a few hundred sentences per language hears the sounds but cannot know the
spelling of words it has not seen ("Dang, that snail is blocking the way." -> "dan, that snel is blochin the we").
A character n-gram model of the language's text, added to the CTC prefix beam search with a weight
(``log p_ctc + lm_weight * log p_lm + length_bonus * characters``), supplies that spelling. Characters, not words:
a character model scores words it has never seen, and needs no word vocabulary.

Estimation is interpolated Witten-Bell (Witten & Bell, 1991; Chen & Goodman, 1999, section 2.4.2): the probability
of character c after context h mixes the maximum-likelihood estimate of the longest context with the estimate of
the context one character shorter, the weight of the shorter one growing with the number of distinct characters
seen after h. It needs only counts, so the model is saved as the counts of its longest n-grams (every shorter
count is a sum of those: each position of the padded text contributes one n-gram of every order).
KenLM would need a C++ build with Boost on every machine that estimates a model; these models are small enough
for dictionaries of counts.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .tokenization_mu2slam import SPACE_PIECE

START = "\x02"  # pads the context before a sentence's first character
END = "\x03"  # the end of a sentence, scored as one more character
LM_FILE_NAME = "ctc_language_model.json"


class CharNgramModel:
    """An interpolated Witten-Bell character n-gram model of one language.

    Args:
        counts: occurrences of each n-gram of exactly `order` characters in the padded training text
            (`START * (order - 1) + sentence + END`).
        order: n, the longest n-gram (context of `order - 1` characters).
    """

    def __init__(self, counts: Mapping[str, int], order: int):
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}.")
        self.order = order
        self.ngram_counts = Counter(counts)
        self._followers: dict[str, Counter] = defaultdict(Counter)
        for ngram, count in self.ngram_counts.items():
            if len(ngram) != order:
                raise ValueError(f"n-gram {ngram!r} does not have {order} characters: not a model of this order.")
            for start in range(order):  # the n-gram's suffixes: the counts of every shorter order
                self._followers[ngram[start:-1]][ngram[-1]] += count
        if not self._followers:
            raise ValueError("A character language model needs at least one sentence of text.")
        self._totals = {context: (sum(nexts.values()), len(nexts)) for context, nexts in self._followers.items()}
        self.alphabet = frozenset(self._followers[""])
        self._cache: dict[tuple[str, str], float] = {}

    @classmethod
    def from_texts(cls, texts: Iterable[str], order: int = 6) -> CharNgramModel:
        """Count the n-grams of `texts` (one sentence each; empty ones are skipped)."""
        counts: Counter = Counter()
        for text in texts:
            if text:
                padded = START * (order - 1) + text + END
                counts.update(padded[i : i + order] for i in range(len(padded) - order + 1))
        return cls(counts, order)

    def log_prob(self, history: str, char: str) -> float:
        """log p(char | the text so far); `char` = END scores the end of the sentence. An unseen character gets
        the share of the uniform floor over the alphabet plus one."""
        width = self.order - 1
        context = (START * width + history[len(history) - width :])[-width:] if width else ""
        key = (context, char)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = math.log(self._interpolated(context, char))
        return cached

    def text_log_prob(self, history: str, text: str) -> float:
        """log p(text | history), character by character (a multi-character token)."""
        total = 0.0
        for index, char in enumerate(text):
            total += self.log_prob(history + text[:index], char)
        return total

    def _interpolated(self, context: str, char: str) -> float:
        probability = 1.0 / (len(self.alphabet) + 1)
        for length in range(len(context) + 1):
            suffix = context[len(context) - length :]
            totals = self._totals.get(suffix)
            if totals is None:
                break
            seen, distinct = totals
            keep = seen / (seen + distinct)
            probability = keep * self._followers[suffix][char] / seen + (1 - keep) * probability
        return probability


def token_texts(tokenizer: Any) -> list[str | None]:
    """The text each id of `tokenizer` writes inside a sentence (SentencePiece's word marker as a space), `None` for
    special tokens, which a transcript never contains."""
    special = set(tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return [None if index in special else piece.replace(SPACE_PIECE, " ") for index, piece in enumerate(pieces)]


class CharNgramLanguageModel:
    """One character n-gram model per language, and the text of each token id of the tokenizer it was built for:
    what `generate(..., lm_weight=...)` fuses into the CTC prefix beam search, saved beside a model as
    `ctc_language_model.json`.

    Example:
        ```python
        lm = CharNgramLanguageModel.from_texts({"en": english, "fr": french}, processor.tokenizer, order=6)
        model.set_asr_language_model(lm, lm_weight=0.3, length_bonus=0.3)
        ```
    """

    def __init__(self, models: Mapping[str, CharNgramModel], token_texts: list[str | None]):
        if not models:
            raise ValueError("A language model needs the text of at least one language.")
        self.models = dict(models)
        self.token_texts = list(token_texts)

    @classmethod
    def from_texts(cls, texts: Mapping[str, Iterable[str]], tokenizer: Any, order: int = 6) -> CharNgramLanguageModel:
        """`texts`: sentences by language code; `tokenizer`: the model's text tokenizer."""
        models = {language: CharNgramModel.from_texts(sentences, order) for language, sentences in texts.items()}
        return cls(models, token_texts(tokenizer))

    @property
    def languages(self) -> list[str]:
        return sorted(self.models)

    def for_language(self, language: str) -> CharNgramModel:
        if language not in self.models:
            raise ValueError(
                f"The CTC language model has no text of language {language!r} (it has {self.languages}): decode "
                "this language with lm_weight=0, or rebuild the language model with its text."
            )
        return self.models[language]

    def save(self, path: str | os.PathLike) -> None:
        payload = {
            "format": "char-ngram-witten-bell",
            "token_texts": self.token_texts,
            "languages": {
                language: {"order": model.order, "counts": dict(sorted(model.ngram_counts.items()))}
                for language, model in sorted(self.models.items())
            },
        }
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharNgramLanguageModel:
        try:
            with open(path, encoding="utf-8") as handle:
                payload = json.load(handle)
            languages = payload["languages"]
            models = {code: CharNgramModel(entry["counts"], int(entry["order"])) for code, entry in languages.items()}
            return cls(models, payload["token_texts"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path} is not a readable CTC language model ({type(error).__name__}: {error}). Rebuild it with "
                "`CharNgramLanguageModel.from_texts(...).save(path)` or delete it to decode without one."
            ) from error


__all__ = ["CharNgramLanguageModel", "CharNgramModel", "LM_FILE_NAME", "token_texts"]
