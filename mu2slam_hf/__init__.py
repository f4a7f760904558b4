"""mu2slam_hf: Mu2SLAM speech+text encoder-decoder models for Hugging Face Transformers.

Importing the package registers the configuration and models with the Auto classes, and the ASR pipeline class
(word timestamps, overlapping chunks) with `pipeline("automatic-speech-recognition")`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForSpeechSeq2Seq,
)

from .configuration_mu2slam import Mu2SlamConfig, Mu2SlamRetrievalConfig
from .feature_extraction_mu2slam import Mu2SlamFeatureExtractor
from .modeling_mu2slam import (
    Mu2SlamEncoderOutput,
    Mu2SlamForConditionalGeneration,
    Mu2SlamForSequenceClassification,
    Mu2SlamModel,
    Mu2SlamPreTrainedModel,
    Mu2SlamSeq2SeqLMOutput,
)
from .modeling_retrieval import Mu2SlamForRetrieval
from .pipeline_mu2slam import (
    Mu2SlamSpeechRecognitionPipeline,
    ctc_word_timestamps,
    register_asr_pipeline,
    transcribe,
)
from .processing_mu2slam import Mu2SlamProcessor
from .speech_codebook import CODE_PAD_VALUE, CodebookUsage, Mu2SlamSpeechCodebook, build_best_rq, fit_kmeans
from .tokenization_mu2slam import Mu2SlamTokenizer, train_char_tokenizer, train_unigram_tokenizer
from .vocabulary import VocabularyLayout

AutoConfig.register("mu2slam", Mu2SlamConfig, exist_ok=True)
AutoModel.register(Mu2SlamConfig, Mu2SlamModel, exist_ok=True)
AutoConfig.register("mu2slam_retrieval", Mu2SlamRetrievalConfig, exist_ok=True)
AutoModel.register(Mu2SlamRetrievalConfig, Mu2SlamForRetrieval, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(Mu2SlamConfig, Mu2SlamForConditionalGeneration, exist_ok=True)
AutoModelForSeq2SeqLM.register(Mu2SlamConfig, Mu2SlamForConditionalGeneration, exist_ok=True)
AutoModelForSequenceClassification.register(Mu2SlamConfig, Mu2SlamForSequenceClassification, exist_ok=True)
register_asr_pipeline()

__version__ = "0.1.0"
__all__ = [
    "CODE_PAD_VALUE",
    "CodebookUsage",
    "Mu2SlamFeatureExtractor",
    "Mu2SlamSpeechCodebook",
    "Mu2SlamTokenizer",
    "build_best_rq",
    "fit_kmeans",
    "train_char_tokenizer",
    "train_unigram_tokenizer",
    "Mu2SlamConfig",
    "Mu2SlamRetrievalConfig",
    "Mu2SlamEncoderOutput",
    "Mu2SlamForConditionalGeneration",
    "Mu2SlamForRetrieval",
    "Mu2SlamForSequenceClassification",
    "Mu2SlamModel",
    "Mu2SlamPreTrainedModel",
    "Mu2SlamProcessor",
    "Mu2SlamSeq2SeqLMOutput",
    "Mu2SlamSpeechRecognitionPipeline",
    "VocabularyLayout",
    "ctc_word_timestamps",
    "transcribe",
]
