"""Multilingual speech and text data for Mu2SLAM: one example schema, corpus builders, public-corpus
loaders, task mixing and length-bucketed batching.

Schema: :mod:`mu2slam_hf.data.schema` (fields ``id, task, audio, source_text, target_text, source_lang,
target_lang, duration, speaker``). Corpora built here are stored as JSONL manifests plus 16 kHz mono FLAC
(:mod:`mu2slam_hf.data.manifest`); audio is decoded with soundfile and resampled with soxr
(:mod:`mu2slam_hf.data.audio`), never through torchcodec/FFmpeg. A user's own data (tables, audiofolders,
``datasets`` folders) reaches training through :class:`~mu2slam_hf.data.training_data.TrainingData`.
"""

from ..vocabulary import SAMPLING_RATE
from .audio import decode_example, decode_examples, read_audio, to_mono_16k, write_flac
from .batching import (
    LengthBucketBatchSampler,
    ShardedStream,
    dataset_lengths,
    example_length,
    padded_fraction,
    text_token_lengths,
    until_any_process_ends,
)
from .corpora import load_corpus
from .libreoffice import build_libreoffice
from .manifest import combine_corpora, load_manifest, read_manifest, summarize, write_manifest
from .mixing import TaskMixture, temperature_probabilities
from .parallel_text import build_parallel_text
from .schema import (
    FEATURES,
    FIELDS,
    TASKS,
    DataError,
    check_example,
    example_language,
    filter_valid,
    make_example,
    to_dataset,
)
from .training_data import DataSourceError, TrainingData

__all__ = [
    "FEATURES", "FIELDS", "LengthBucketBatchSampler", "ShardedStream", "dataset_lengths", "example_length",
    "padded_fraction", "text_token_lengths", "TaskMixture", "temperature_probabilities", "SAMPLING_RATE", "TASKS",
    "DataError", "DataSourceError", "TrainingData", "check_example", "decode_example", "decode_examples",
    "example_language", "filter_valid", "load_corpus", "load_manifest", "make_example", "read_audio",
    "build_libreoffice", "build_parallel_text", "combine_corpora", "read_manifest", "summarize", "to_dataset", "to_mono_16k", "write_flac", "write_manifest",
    "until_any_process_ends",
]  # fmt: skip
