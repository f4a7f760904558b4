"""Text tokenizers of Mu2SLAM: character level ("Mu2SLAM-char", 4,096) and Unigram word pieces ("Mu2SLAM-spm", 64k).

Both are trained with the Hugging Face ``tokenizers`` library and wrapped as :class:`Mu2SlamTokenizer`, a
``PreTrainedTokenizerFast``, so ``save_pretrained`` / ``from_pretrained`` / ``AutoTokenizer`` work. Shared layout:

* the special tokens of :mod:`mu2slam_hf.vocabulary` at ids 0-4: ``<pad>`` ``<s>`` ``</s>`` ``<unk>`` ``[MASK]``;
* normalisation: NFKC, every whitespace run collapsed to one space, leading/trailing whitespace stripped;
* spaces are the piece ``▁`` (U+2581), so decoding gives the normalised text back (a literal ``▁`` in the input
  also decodes to a space);
* characters never seen in training become ``<unk>`` (id 3); decoding with ``skip_special_tokens=True`` drops them;
* encoding appends ``</s>`` (id 2) through the backend's ``TemplateProcessing`` post-processor, stored in
  ``tokenizer.json`` (transformers takes the post-processor from there, not from ``add_eos_token``): the decoder
  targets end with eos. ``add_special_tokens=False`` leaves it out; no ``<s>`` is ever added;
* special-token strings inside the text (``"close the </s> door"``) are encoded as the characters they are made of
  (transformers' ``split_special_tokens=True``), never as control tokens.

``len(tokenizer)`` is the text vocabulary size, specials included: it is what ``Mu2SlamConfig.text_vocab_size``
must equal. Training can give fewer ids than asked when the corpus is small (a character corpus with fewer distinct
characters, a Unigram corpus with too few pieces): the trainers log a warning and the tokenizer has the actual size.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging

from .configuration_mu2slam import Mu2SlamConfig, check_saved_files, pretrained_location
from .input_checks import TOKENIZER_FILES, record_checksums, verify_checksums
from .vocabulary import (
    BOS_TOKEN,
    EOS_ID,
    EOS_TOKEN,
    MASK_TOKEN,
    NUM_SPECIAL_TOKENS,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_ID,
    UNK_TOKEN,
)

logger = logging.get_logger(__name__)

SPACE_PIECE = "\u2581"  # ▁, as in SentencePiece


UNKNOWN_SPANS_CHUNK = 4096  # texts encoded at once by `unknown_spans`


class Mu2SlamTokenizer(PreTrainedTokenizerFast):
    """A ``PreTrainedTokenizerFast`` over a Mu2SLAM text tokenizer (see the module docstring for its layout).

    Build one with :func:`train_char_tokenizer` / :func:`train_unigram_tokenizer`, or load one with
    ``Mu2SlamTokenizer.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir)``.
    """

    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    # No __init__ of its own: transformers would then rebuild the backend from scratch at load (losing `<unk>`).
    # `from_backend` and `from_pretrained` set `split_special_tokens=True`: user text is encoded as text ("close the
    # </s> door" does not end at "</s>"); the special tokens the package adds go in by id (the post-processor's eos).

    @classmethod
    def from_backend(cls, backend: Tokenizer) -> Mu2SlamTokenizer:
        """Wrap a ``tokenizers.Tokenizer`` that has the specials at ids 0-4 (its post-processor is kept as is)."""
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            if backend.token_to_id(token) != expected_id:
                raise ValueError(f"{token!r} must have id {expected_id}, got {backend.token_to_id(token)}.")
        return cls(
            tokenizer_object=backend,
            pad_token=PAD_TOKEN,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=UNK_TOKEN,
            mask_token=MASK_TOKEN,
            split_special_tokens=True,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, check_integrity: bool = True, **kwargs
    ) -> Mu2SlamTokenizer:
        """`PreTrainedTokenizerFast.from_pretrained`, with clear errors for a missing folder, a local folder without
        ``tokenizer.json`` (a model saved without its processor) and a tokenizer.json changed since it was saved
        (``check_integrity=False`` skips that check, see `mu2slam_hf.input_checks`)."""
        check_saved_files(pretrained_model_name_or_path, TOKENIZER_FILES, "tokenizer")
        verify_checksums(pretrained_model_name_or_path, TOKENIZER_FILES, check_integrity)
        kwargs.setdefault("split_special_tokens", True)
        with pretrained_location(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs) -> tuple[str, ...]:
        """`PreTrainedTokenizerFast.save_pretrained`, recording the sha256 of tokenizer.json in checksums.json."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        record_checksums(save_directory, TOKENIZER_FILES)
        return files

    def unknown_spans(self, texts: list[str]) -> list[list[str]]:
        """For each text, the pieces of it that this tokenizer writes as ``<unk>`` (characters it never saw).

        Only the texts holding a character the tokenizer cannot write on its own are encoded: a character or
        Unigram tokenizer (no byte fallback) writes ``<unk>`` only for such characters, so the other texts have
        none, and a corpus of hundreds of thousands of texts is scanned in seconds rather than encoded in minutes.
        Those texts are encoded a chunk at a time: an encoding holds its ids, offsets and token strings, so a
        corpus's texts encoded at once took gigabytes."""
        spans: list[list[str]] = [[] for _ in texts]
        suspects = self._texts_with_unknown_characters(texts)
        for start in range(0, len(suspects), UNKNOWN_SPANS_CHUNK):
            chunk = suspects[start : start + UNKNOWN_SPANS_CHUNK]
            encodings = self.backend_tokenizer.encode_batch([texts[i] for i in chunk], add_special_tokens=False)
            for i, e in zip(chunk, encodings, strict=True):
                offsets = zip(e.ids, e.offsets, strict=True)
                spans[i] = [texts[i][begin:end] for token, (begin, end) in offsets if token == UNK_ID]
        return spans

    def _texts_with_unknown_characters(self, texts: list[str]) -> list[int]:
        """Indices of the texts that hold, once normalised as the tokenizer does, a character it writes as
        ``<unk>`` when encoded alone."""
        normalizer = self.backend_tokenizer.normalizer
        normalized = [normalizer.normalize_str(text) for text in texts] if normalizer else list(texts)
        unknown = {
            char
            for char in set().union(*normalized)
            if UNK_ID in self.backend_tokenizer.encode(char, add_special_tokens=False).ids
        }
        if not unknown:
            return []
        pattern = re.compile("[" + "".join(re.escape(char) for char in sorted(unknown)) + "]")
        return [i for i, text in enumerate(normalized) if pattern.search(text)]

    def unknown_text_report(self, texts: Iterable[tuple[str, str]]) -> UnknownTextReport:
        """Count, per language, the ``(language, text)`` pairs that hold text this tokenizer cannot write."""
        report = UnknownTextReport()
        pairs = list(texts)
        spans = self.unknown_spans([text for _, text in pairs])
        for (language, text), unknown in zip(pairs, spans, strict=True):
            report.add(language, text, unknown)
        return report

    def normalize_text(self, text: str) -> str:
        """``text`` as the tokenizer sees it (NFKC, whitespace collapsed and stripped): what decoding gives back."""
        return self.backend_tokenizer.normalizer.normalize_str(text)


@dataclass
class UnknownTextReport:
    """Per language: texts and characters seen, texts holding unknown pieces, unknown characters, the unknown pieces
    (counted) and example texts."""

    texts: Counter = field(default_factory=Counter)
    characters: Counter = field(default_factory=Counter)
    unknown_characters: Counter = field(default_factory=Counter)
    affected: Counter = field(default_factory=Counter)
    pieces: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, language: str, text: str, unknown: list[str]) -> None:
        self.texts[language] += 1
        self.characters[language] += len(text)
        self.unknown_characters[language] += sum(len(piece) for piece in unknown)
        if unknown:
            self.affected[language] += 1
            self.pieces.setdefault(language, Counter()).update(unknown)
            examples = self.examples.setdefault(language, [])
            if len(examples) < 3 and text not in examples:
                examples.append(text)

    def __bool__(self) -> bool:
        return bool(self.affected)

    def message(self, where: str) -> str:
        """One line per affected language: counts, the commonest unknown pieces and example texts."""
        lines = [f"{where}: text the tokenizer cannot write becomes <unk> (decoded as nothing):"]
        for language in sorted(self.affected):
            pieces = ", ".join(f"{piece!r} x{count}" for piece, count in self.pieces[language].most_common(8))
            examples = "; ".join(repr(text[:60]) for text in self.examples[language])
            lines.append(
                f"  {language}: {self.affected[language]} of {self.texts[language]} texts, "
                f"{100 * self.unknown_characters[language] / self.characters[language]:.2g}% of the characters; unknown: {pieces}; "
                f"e.g. {examples}"
            )
        lines.append("Use a tokenizer trained on text with these characters, or clean the texts.")
        return "\n".join(lines)


def _normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])


def _eos_post_processor() -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single=f"$A:0 {EOS_TOKEN}:0",
        pair=f"$A:0 {EOS_TOKEN}:0 $B:1 {EOS_TOKEN}:1",
        special_tokens=[(EOS_TOKEN, EOS_ID)],
    )


def _check_vocab_size(vocab_size: int) -> None:
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for text tokens after the {len(SPECIAL_TOKENS)} specials."
        )


def _report_size(kind: str, requested: int, tokenizer: Mu2SlamTokenizer) -> Mu2SlamTokenizer:
    if len(tokenizer) < requested:
        logger.warning(
            f"The {kind} corpus supports only {len(tokenizer)} of the {requested} requested ids; the tokenizer has "
            f"{len(tokenizer)}: set Mu2SlamConfig(text_vocab_size={len(tokenizer)})."
        )
    else:
        logger.info(f"Trained a {kind} tokenizer of {len(tokenizer)} ids (Mu2SlamConfig.text_vocab_size).")
    return tokenizer


def train_char_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Mu2SlamTokenizer:
    """Train a character-level tokenizer: the specials, then the ``vocab_size - 5`` most frequent characters
    (after normalisation; the space is the piece ``▁``).

    Args:
        texts: the training corpus, one string per item (read once).
        vocab_size: ids wanted, specials included (paper: 4,096). A corpus with fewer distinct characters gives a
            smaller vocabulary (a warning says so); ``len(tokenizer)`` is the actual size.

    Returns:
        The trained :class:`Mu2SlamTokenizer`.
    """
    _check_vocab_size(vocab_size)
    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE_PIECE, prepend_scheme="never", split=False),
            pre_tokenizers.Split(Regex("."), behavior="isolated"),
        ]
    )
    backend.decoder = decoders.Sequence([decoders.Replace(SPACE_PIECE, " "), decoders.Fuse()])
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=0, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = _eos_post_processor()
    return _report_size("character", vocab_size, Mu2SlamTokenizer.from_backend(backend))


def train_unigram_tokenizer(
    texts: Iterable[str], vocab_size: int = 64000, *, max_piece_length: int = 16
) -> Mu2SlamTokenizer:
    """Train a SentencePiece-style Unigram tokenizer (Metaspace pre-tokenisation, ``▁`` marks word starts).

    Args:
        texts: the training corpus, one string per item (read once).
        vocab_size: ids wanted, specials included (paper: 64k). A small corpus may give fewer (a warning says so);
            ``len(tokenizer)`` is the actual size.
        max_piece_length: longest piece, in characters.

    Returns:
        The trained :class:`Mu2SlamTokenizer`.
    """
    _check_vocab_size(vocab_size)
    backend = Tokenizer(models.Unigram())
    backend.normalizer = _normalizer()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE_PIECE, prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement=SPACE_PIECE, prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        unk_token=UNK_TOKEN,
        max_piece_length=max_piece_length,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.model = _canonical_unigram(backend)
    backend.post_processor = _eos_post_processor()
    return _report_size("unigram", vocab_size, Mu2SlamTokenizer.from_backend(backend))


def _canonical_unigram(backend: Tokenizer, decimals: int = 8) -> models.Unigram:
    """The trained Unigram model with scores rounded and pieces ordered by (score desc, piece), specials first.

    The trainer's parallel EM sums floats in a varying order, so scores differ in the last bits from run to run and
    equal-score pieces swap ids; rounding and sorting removes that. What remains: characters the trainer appends
    at the end with small decreasing penalty scores come in hash-set order, so their ids (and scores) may be
    permuted between two trainings on the same corpus. Keep the saved tokenizer, not the corpus, as the reference.
    """
    pieces = json.loads(backend.to_str())["model"]["vocab"]
    specials = [(piece, 0.0) for piece in SPECIAL_TOKENS]
    scored = sorted(
        ((piece, round(score, decimals)) for piece, score in pieces if piece not in SPECIAL_TOKENS),
        key=lambda item: (-item[1], item[0]),
    )
    return models.Unigram(specials + scored, unk_id=UNK_ID, byte_fallback=False)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Mu2SlamTokenizer:
    """Dispatch to :func:`train_char_tokenizer` (``kind="char"``) or :func:`train_unigram_tokenizer` (``"unigram"``)."""
    if kind == "char":
        return train_char_tokenizer(texts, vocab_size)
    if kind == "unigram":
        return train_unigram_tokenizer(texts, vocab_size)
    raise ValueError(f"kind must be 'char' or 'unigram', got {kind!r}.")


def character_rows(old: Mu2SlamTokenizer, new: Mu2SlamTokenizer) -> list[list[int]]:
    """For every id of ``new``, the ids of ``old`` its embedding starts from when a model trained with ``old`` moves
    to ``new`` (`vocabulary.replace_text_vocabulary`): a special token its own id, any other piece the old ids of
    its characters (``▁`` included; characters ``old`` cannot write are left out, a piece of none gets ``[]``)."""
    rows = []
    for token_id in range(len(new)):
        piece = new.convert_ids_to_tokens(token_id)
        if token_id < NUM_SPECIAL_TOKENS:
            rows.append([old.convert_tokens_to_ids(piece)])
            continue
        ids = [old.convert_tokens_to_ids(char) for char in piece]  # a character it cannot write: <unk>, left out
        rows.append([i for i in ids if i >= NUM_SPECIAL_TOKENS])
    return rows


AutoTokenizer.register(Mu2SlamConfig, tokenizer_class=Mu2SlamTokenizer, exist_ok=True)
Mu2SlamTokenizer.register_for_auto_class("AutoTokenizer")

__all__ = [
    "Mu2SlamTokenizer",
    "character_rows",
    "UnknownTextReport",
    "train_char_tokenizer",
    "train_tokenizer",
    "train_unigram_tokenizer",
]
