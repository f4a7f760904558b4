"""Pre-training and fine-tuning instances of every Mu2SLAM objective, and the collator that batches them.

instances = build_speech_text_pretraining(config, features, codes, text_ids, word_starts, fr, en, generator)
for group in split_by_layout(instances):
    loss = model(**Mu2SlamCollator(config)(group)).loss
"""

from .collator import Mu2SlamCollator, retrieval_pairs, split_by_layout, with_language_labels
from .masking import (
    corrupt_text,
    denoising_decoder_sequences,
    full_decoder_sequences,
    speech_span_mask,
    word_span_mask,
    word_starts_from_offsets,
)
from .objectives import (
    OBJECTIVE_WEIGHT_KEYS,
    Mu2SlamInstance,
    build_mt_alignment,
    build_mt_direction,
    build_mt_pretraining,
    build_speech_only,
    build_speech_text_alignment,
    build_speech_text_pretraining,
    build_speech_to_text,
    build_speech_to_text_finetuning,
    build_text_only,
    build_text_to_speech,
    build_text_to_text_finetuning,
    objective_weight,
)

__all__ = [
    "OBJECTIVE_WEIGHT_KEYS",
    "Mu2SlamCollator",
    "Mu2SlamInstance",
    "build_mt_alignment",
    "build_mt_direction",
    "build_mt_pretraining",
    "build_speech_only",
    "build_speech_text_alignment",
    "build_speech_text_pretraining",
    "build_speech_to_text",
    "build_speech_to_text_finetuning",
    "build_text_only",
    "build_text_to_speech",
    "build_text_to_text_finetuning",
    "corrupt_text",
    "denoising_decoder_sequences",
    "full_decoder_sequences",
    "objective_weight",
    "speech_span_mask",
    "split_by_layout",
    "retrieval_pairs",
    "with_language_labels",
    "word_span_mask",
    "word_starts_from_offsets",
]
