"""The unified vocabulary layout shared by the encoder input, the decoder and every head.

One id space serves text and speech::

    [0, NUM_SPECIAL_TOKENS)                 special tokens (pad, bos, eos, unk, [MASK])
    [NUM_SPECIAL_TOKENS, text_vocab_size)   text tokens of the text tokenizer
    [text_vocab_size, vocab_size)           speech codes: code c has id text_vocab_size + c

The text tokenizer owns ids ``[0, text_vocab_size)`` (specials included, at the ids below); the speech
codebook owns the codes. This module is the single place that defines the layout: the config, the
tokenizers, the processor and the data builders all derive their ids from :class:`VocabularyLayout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN = "<pad>", "<s>", "</s>", "<unk>", "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, MASK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)

SPEECH_MODALITY, TEXT_MODALITY = 0, 1
MODALITIES = {"speech": SPEECH_MODALITY, "text": TEXT_MODALITY}

# Label value of positions no loss counts (PyTorch's cross-entropy `ignore_index` default, transformers' convention):
# padding of `labels`, `mlm_labels`, `ctc_labels` and of speech-code targets.
IGNORE_INDEX = -100
# Encoder language id of speech whose language is not known (spoken language identification): the segment gets no
# language embedding. Only the encoder takes it; the decoder always writes a known language.
UNKNOWN_LANGUAGE_ID = -1
# Audio sampling rate of the whole pipeline (Hz): the feature extractor, the data schema and the corpus builders.
SAMPLING_RATE = 16_000

# Languages of CoVoST 2 (xx-en and en-xx), VoxPopuli ASR and the Fish Fillets benchmark, as ISO 639-1 codes.
DEFAULT_LANGUAGES = (
    "en", "de", "fr", "es", "it", "nl", "ru", "cs", "pl", "sv", "pt", "ca", "zh", "ja", "ar", "fa",
    "et", "mn", "tr", "lv", "sl", "ta", "id", "cy", "ro", "hu", "fi", "hr", "sk", "bg",
)  # fmt: skip


def language_index(languages: Sequence[str], code: str, owner: str = "model") -> int:
    """The one language resolver: index of ``code`` in ``languages`` (its language-embedding id), or a ValueError
    that lists the known codes. Config, processor and generate all resolve through it."""
    if code not in languages:
        raise ValueError(
            f"Unknown language code {code!r}. This {owner} knows {len(languages)} languages: {', '.join(languages)}. "
            "Pass one of these (ISO 639-1 codes)."
        )
    return list(languages).index(code)


def language_indices(
    languages: Sequence[str], codes: str | Sequence[str], batch_size: int, owner: str = "model"
) -> list[int]:
    """Language ids of a batch from one code for every example or one code per example."""
    codes = [codes] * batch_size if isinstance(codes, str) else list(codes)
    if len(codes) != batch_size:
        raise ValueError(f"Got {len(codes)} language codes for a batch of {batch_size}.")
    return [language_index(languages, code, owner) for code in codes]


@dataclass(frozen=True)
class VocabularyLayout:
    """Where specials, text tokens and speech codes live in the unified vocabulary.

    Args:
        text_vocab_size: size of the text tokenizer's vocabulary, its special tokens included.
        codebook_size: number of speech codes of the frozen speech tokenizer.
    """

    text_vocab_size: int
    codebook_size: int

    def __post_init__(self):
        if self.text_vocab_size <= NUM_SPECIAL_TOKENS:
            raise ValueError(
                f"text_vocab_size={self.text_vocab_size} leaves no room for text tokens after the "
                f"{NUM_SPECIAL_TOKENS} special tokens {SPECIAL_TOKENS}; train a tokenizer with a larger vocabulary."
            )
        if self.codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {self.codebook_size}.")

    @property
    def speech_code_offset(self) -> int:
        return self.text_vocab_size

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.codebook_size

    def code_to_id(self, codes):
        """Speech code(s) in ``[0, codebook_size)`` -> unified vocabulary id(s). Works on ints and tensors."""
        return codes + self.speech_code_offset

    def id_to_code(self, ids):
        return ids - self.speech_code_offset

    def text_token_ids(self) -> range:
        """Ids a text decoder may emit besides eos: the text tokens proper."""
        return range(NUM_SPECIAL_TOKENS, self.text_vocab_size)

    def speech_code_ids(self) -> range:
        return range(self.speech_code_offset, self.vocab_size)


def check_vocabulary_matches(
    config,
    text_vocab_size: int | None = None,
    codebook_size: int | None = None,
    languages: list[str] | None = None,
    num_mel_bins: int | None = None,
) -> None:
    """Raise a ValueError listing every way a tokenizer / codebook / processor disagrees with a model config.

    `config` is a `Mu2SlamConfig` or its dict; arguments left at None are not checked.
    """
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    expected = {
        "text_vocab_size (len(tokenizer))": (text_vocab_size, get("text_vocab_size")),
        "codebook_size": (codebook_size, get("codebook_size")),
        "languages": (languages, get("languages")),
        "num_mel_bins": (num_mel_bins, get("num_mel_bins")),
    }
    mismatches = [
        f"{name}: {ours!r} here vs {theirs!r} in the model config"
        for name, (ours, theirs) in expected.items()
        if ours is not None and theirs is not None and list_or_value(ours) != list_or_value(theirs)
    ]
    if mismatches:
        raise ValueError(
            "The tokenizer/processor does not belong to this model: "
            + "; ".join(mismatches)
            + ". Load the processor saved with the model, or retrain/resize so that they match."
        )


def list_or_value(value):
    return list(value) if isinstance(value, (list, tuple)) else value


# ------------------------------------------------------------------------------------------- growing a model


def grow_text_vocabulary(model: Any, count: int) -> None:
    """Grow a `Mu2SlamForConditionalGeneration`'s text vocabulary by `count` ids (tokens just added to the tokenizer),
    keeping every trained row.

    The unified vocabulary puts the speech codes after the text ids, so the new rows go between them and the
    speech-code rows move up by `count` with their weights. New rows start at the mean of the text rows
    (transformers' mean resizing); the MLM and CTC biases of new ids at the mean of theirs.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}.")
    if count:
        text = model.config.text_vocab_size
        replace_text_vocabulary(model, [[i] for i in range(text)] + [[]] * count)


def replace_text_vocabulary(model: Any, initial_rows: Sequence[Sequence[int]]) -> None:
    """Give a `Mu2SlamForConditionalGeneration` a new text vocabulary of ``len(initial_rows)`` ids (a new
    tokenizer's), keeping the speech codes and every other weight.

    New text id ``i`` starts as the mean of the old text rows ``initial_rows[i]`` (for a subword, the old ids of its
    characters), in the shared embedding (tied to the decoder's output and the MLM and CTC heads) and in the MLM
    and CTC biases; an empty list starts it at the mean of the old text rows. The speech-code rows move to the new
    end of the text ids with their weights. Special ids (0-4) should map to themselves.
    """
    old_text = model.config.text_vocab_size
    bad = sorted({row for rows in initial_rows for row in rows if not 0 <= row < old_text})
    if bad:
        raise ValueError(f"initial_rows name ids outside the old text vocabulary [0, {old_text}): {bad[:10]}.")
    if len(initial_rows) <= NUM_SPECIAL_TOKENS:
        raise ValueError(f"A text vocabulary needs more than the {NUM_SPECIAL_TOKENS} special ids.")
    old = model.model.shared
    new_text = len(initial_rows)
    replaced = type(old)(new_text + old.num_embeddings - old_text, old.embedding_dim, old.padding_idx, old.embed_scale)
    mlm_decoder = nn.Linear(old.embedding_dim, replaced.num_embeddings)
    with torch.no_grad():
        replaced.weight.copy_(_rows_from(old.weight, old_text, initial_rows))
        mlm_decoder.bias.copy_(_rows_from(model.mlm_head.decoder.bias, old_text, initial_rows))
        ctc_bias = nn.Parameter(_rows_from(model.ctc_head.bias, old_text, initial_rows))
    replaced.to(old.weight.device, old.weight.dtype)
    model.model.set_input_embeddings(replaced)
    model.lm_head = nn.Linear(old.embedding_dim, replaced.num_embeddings, bias=False)
    model.lm_head.weight = replaced.weight
    mlm_decoder.weight = replaced.weight
    model.mlm_head.decoder = mlm_decoder.to(old.weight.device)
    model.ctc_head.bias, model.ctc_head.text_vocab_size = ctc_bias, new_text
    model.config.text_vocab_size = new_text


def _rows_from(rows: torch.Tensor, text_size: int, initial_rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """New text rows (each the mean of the named old rows, or of every old text row), then the rows from
    ``text_size`` on (speech codes; none for the CTC bias) unchanged."""
    fallback = rows[:text_size].mean(0)
    text = [rows[list(ids)].mean(0) if ids else fallback for ids in initial_rows]
    return torch.cat([torch.stack(text), rows[text_size:]])


def grow_languages(model: Any, codes: list[str]) -> None:
    """Append language codes to a `Mu2SlamForConditionalGeneration` (new language-embedding rows and, with a
    language-identification head, new classes, started at the mean of the trained ones)."""
    known = [code for code in codes if code in model.config.languages]
    if known or len(set(codes)) != len(codes):
        raise ValueError(f"grow_languages: {sorted(set(known))} already known or codes repeated in {codes}.")
    for module in (model.model.encoder, model.model.decoder):
        old = module.embed_languages
        grown = nn.Embedding(old.num_embeddings + len(codes), old.embedding_dim)
        with torch.no_grad():
            grown.weight.copy_(_with_rows_after(old.weight, old.num_embeddings, len(codes)))
        module.embed_languages = grown.to(old.weight.device, old.weight.dtype)
    if model.language_id_head is not None:
        model.language_id_head.classifier = _grown_classifier(model.language_id_head.classifier, len(codes))
    model.config.languages = [*model.config.languages, *codes]


def _grown_classifier(old: nn.Linear, extra: int) -> nn.Linear:
    """`old` with `extra` new output rows (new classes), started at the mean of the trained rows."""
    grown = nn.Linear(old.in_features, old.out_features + extra)
    with torch.no_grad():
        grown.weight.copy_(_with_rows_after(old.weight, old.out_features, extra))
        grown.bias.copy_(_with_rows_after(old.bias.unsqueeze(-1), old.out_features, extra).squeeze(-1))
    return grown.to(old.weight.device, old.weight.dtype)


def _with_rows_after(rows: torch.Tensor, index: int, count: int) -> torch.Tensor:
    """`rows` (N, ...) with `count` rows inserted at `index`, each the mean of `rows[:index]`."""
    mean = rows[:index].mean(0, keepdim=True).expand(count, *rows.shape[1:])
    return torch.cat([rows[:index], mean, rows[index:]])
