"""Model inputs for every task of both stages: examples in the data schema -> `Mu2SlamInstance` rows -> a batch.

`builder` turns examples into instances (audio decoded and featurised, texts tokenized), `objectives` builds the
instances of each objective from those tensors (pre-training: the masked objectives of the paper, eq. 2-6;
fine-tuning: plain P(y|x)), `masking` draws their masks, and `collator` pads a list of instances into the keyword
arguments of the model's forward.

    builder = InstanceBuilder(processor, model.config, stage="pretrain")   # or "finetune"
    instances = builder.build({"asr": examples}, generator)
    for group in split_by_layout(instances):
        loss = model(**Mu2SlamCollator(model.config)(group)).loss
"""

from .builder import InstanceBuilder
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
    "InstanceBuilder",
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
