"""What a run trains and reads: the processor (tokenizer, feature extractor, speech codebook) and the model.

From a preset: a char/Unigram tokenizer trained on the corpus's train texts (unless one is given), per-bin log-mel
statistics and a BEST-RQ codebook from a train subset, and a model config from the preset with ``text_vocab_size
= len(tokenizer)``, ``codebook_size`` of the codebook, the recipe's loss weights and ``model_overrides``. From a
checkpoint (``init_checkpoint`` / ``--init``): the saved model and processor, with the overrides applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..configuration_mu2slam import Mu2SlamConfig, Mu2SlamRetrievalConfig
from ..data.audio import decode_example
from ..data.schema import column_rows
from ..feature_extraction_mu2slam import Mu2SlamFeatureExtractor
from ..lora import merge_lora
from ..modeling_mu2slam import Mu2SlamForConditionalGeneration, Mu2SlamPreTrainedModel
from ..modeling_retrieval import Mu2SlamForRetrieval
from ..processing_mu2slam import Mu2SlamProcessor
from ..speech_codebook import Mu2SlamSpeechCodebook, build_best_rq
from ..tokenization_mu2slam import Mu2SlamTokenizer, character_rows, train_tokenizer
from ..vocabulary import SAMPLING_RATE, grow_languages, grow_text_vocabulary, replace_text_vocabulary
from .recipe import Recipe


def corpus_texts(examples: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Every source and target text of the examples (the tokenizer's training corpus)."""
    for example in examples:
        for key in ("source_text", "target_text"):
            if example.get(key):
                yield example[key]


class ConcatenatedRows:
    """The rows of several sources (lists or ``datasets.Dataset``), iterable more than once, without a list of every
    row (a large corpus as Python dicts is several times its Arrow table)."""

    def __init__(self, sources: Iterable[Iterable[dict[str, Any]]]):
        self.sources = list(sources)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for source in self.sources:
            yield from source


def _audio_subset(examples: Iterable[dict[str, Any]], count: int) -> Iterator[Any]:
    """Decoded arrays of the first ``count`` distinct audio files of the examples."""
    seen = set()
    for example in examples:
        audio = example.get("audio")
        if not audio or audio.get("path") in seen:
            continue
        seen.add(audio.get("path"))
        yield decode_example(example)["audio"]["array"]
        if len(seen) >= count:
            return


def build_processor(
    recipe: Recipe, config: Mu2SlamConfig, train_examples: Iterable[dict[str, Any]]
) -> tuple[Mu2SlamProcessor, Mu2SlamConfig]:
    """Tokenizer + normalised feature extractor + codebook for a run from a preset; the config they imply.
    ``train_examples`` is iterated twice (a list, or `ConcatenatedRows`)."""
    tokenizer = run_tokenizer(recipe, train_examples)
    overrides = {"text_vocab_size": len(tokenizer), **recipe.model_overrides}
    if recipe.loss_weights:
        overrides["objective_loss_weights"] = {**config.objective_loss_weights, **recipe.loss_weights}
    config = config_with_overrides(config, overrides)
    feature_extractor = Mu2SlamFeatureExtractor(
        feature_size=config.num_mel_bins,
        min_frames=config.min_input_frames,
        **recipe.features.extractor_kwargs(),
    )
    if recipe.speech_codebook.path:
        codebook = Mu2SlamSpeechCodebook.from_pretrained(recipe.speech_codebook.path)
        config = config_with_overrides(config, {"codebook_size": codebook.codebook_size})
    else:
        codebook = None
    clips = list(_audio_subset(train_examples, recipe.speech_codebook.normalization_examples))
    if clips:
        feature_extractor.compute_normalization_stats(clips)
    if codebook is None:
        features = [feature_extractor(clip, sampling_rate=SAMPLING_RATE, return_tensors="pt") for clip in clips]
        codebook = build_best_rq(
            recipe.speech_codebook.seed,
            config.codebook_size,
            code_dim=recipe.speech_codebook.code_dim,
            num_mel_bins=config.num_mel_bins,
            frontend_kernel_size=config.frontend_kernel_size,
            frontend_stride=config.frontend_stride,
            normalization_data=[{k: f[k] for k in ("input_features", "attention_mask")} for f in features] or None,
        )
    processor = Mu2SlamProcessor(feature_extractor, tokenizer, speech_codebook=codebook, languages=config.languages)
    processor.check_model_config(config)
    return processor, config


def run_tokenizer(recipe: Recipe, train_examples: Iterable[dict[str, Any]]) -> Mu2SlamTokenizer:
    """The recipe's tokenizer: the saved one at ``tokenizer.path``, or one of ``tokenizer.kind`` trained on the
    train texts."""
    if recipe.tokenizer.path:
        return Mu2SlamTokenizer.from_pretrained(recipe.tokenizer.path)
    return train_tokenizer(recipe.tokenizer.kind, corpus_texts(train_examples), recipe.tokenizer.vocab_size)


def replace_tokenizer(
    model: Mu2SlamForConditionalGeneration, processor: Mu2SlamProcessor, tokenizer: Mu2SlamTokenizer
) -> Mu2SlamProcessor:
    """Move a trained model to ``tokenizer`` (recipe ``tokenizer.replace``): new text embedding rows from the mean of
    the old rows of each token's characters (`character_rows`); returns the processor with the new tokenizer."""
    replace_text_vocabulary(model, character_rows(processor.tokenizer, tokenizer))
    replaced = Mu2SlamProcessor(
        processor.feature_extractor,
        tokenizer,
        speech_codebook=processor.speech_codebook,
        languages=processor.languages,
    )
    replaced.check_model_config(model.config)
    return replaced


def config_with_overrides(config: Mu2SlamConfig, overrides: dict[str, Any]) -> Mu2SlamConfig:
    """A new config: ``config`` with ``overrides`` applied (unknown names become config attributes)."""
    return Mu2SlamConfig.from_dict({**config.to_dict(), **overrides})


def load_preset(recipe: Recipe) -> Mu2SlamConfig:
    """The recipe's model preset (a folder or a config.json)."""
    return Mu2SlamConfig.from_pretrained(recipe.model)


def model_class(retrieval: bool = False) -> type[Mu2SlamPreTrainedModel]:
    """The class a run trains: the seq2seq model, or the speech-text dual encoder (recipe ``retrieval``)."""
    return Mu2SlamForRetrieval if retrieval else Mu2SlamForConditionalGeneration


def init_from_checkpoint(
    folder: str,
    overrides: dict[str, Any],
    loss_weights: dict[str, float] | None = None,
    retrieval: bool = False,
) -> tuple[Mu2SlamPreTrainedModel, Mu2SlamProcessor]:
    """Model + processor of a trained folder to fine-tune, without the folder's CTC language model; ``overrides``
    (and loss weights) are set on the model config. ``retrieval``: a `Mu2SlamForRetrieval` on the folder's encoder
    (its projection new unless the folder is one)."""
    processor = Mu2SlamProcessor.from_pretrained(folder)
    config = Mu2SlamConfig.from_pretrained(folder)
    extra = dict(overrides)
    if loss_weights:
        extra["objective_loss_weights"] = {**config.objective_loss_weights, **loss_weights}
    config = config_with_overrides(config, extra)
    cls = model_class(retrieval)
    if retrieval:
        config = Mu2SlamRetrievalConfig.from_mu2slam_config(config)
    model = cls.from_pretrained(folder, config=config)
    processor.check_model_config(model.config)
    if isinstance(model, Mu2SlamForConditionalGeneration) and model.asr_language_model is not None:
        # The folder's CTC language model and its fusion weights were chosen for the folder's weights and training
        # text. Kept, they would turn the run's dev scoring of the CTC head alone into the old LM's beam search
        # (an error for a language it lacks) and ship with the new weights; the run fits its own (recipe
        # `ctc_language_model`) or saves none.
        model.set_asr_language_model(None)
    return model, processor


def new_model(config: Mu2SlamConfig, seed: int, retrieval: bool = False) -> Mu2SlamPreTrainedModel:
    """A randomly initialised model (weights drawn from ``seed``, independent of anything drawn before)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(retrieval)(config)


def merged_copy(model: torch.nn.Module) -> Mu2SlamForConditionalGeneration:
    """A plain model to save: a PEFT model is copied and merged (``merge_and_unload``), others returned as is."""
    if not hasattr(model, "merge_and_unload"):
        return model
    import copy

    return merge_lora(copy.deepcopy(model))


def data_languages(sources: Sequence[Any]) -> list[str]:
    """Every source and target language code of the examples, in order of first appearance."""
    codes: dict[str, None] = {}
    for rows in sources:
        for row in column_rows(rows, ["source_lang", "target_lang"]):
            codes.update(dict.fromkeys(code for code in (row["source_lang"], row.get("target_lang")) if code))
    return list(codes)


def extend_vocabulary(
    model: Mu2SlamForConditionalGeneration, processor: Mu2SlamProcessor, sources: Sequence[Any]
) -> tuple[list[str], list[str]]:
    """Teach the model and processor the data's unknown characters and languages: characters the tokenizer writes
    as ``<unk>`` become tokens (new embedding rows), unknown language codes new language embeddings.

    Returns (the added characters, the added languages).
    """
    texts = [text for rows in sources for text in corpus_texts(_text_rows(rows))]
    characters = sorted(
        {char for spans in processor.tokenizer.unknown_spans(texts) for span in spans for char in span}
    )
    characters = [char for char in characters if not char.isspace()]
    if characters:
        processor.tokenizer.add_tokens(characters)
        grow_text_vocabulary(model, len(processor.tokenizer) - model.config.text_vocab_size)
    languages = [code for code in data_languages(sources) if code not in model.config.languages]
    if languages:
        grow_languages(model, languages)
        processor.languages = [*processor.languages, *languages]
    processor.check_model_config(model.config)
    return characters, languages


def _text_rows(rows: Any) -> Any:
    return column_rows(rows, ["source_text", "target_text"])
