"""mu2slam_hf: Mu2SLAM speech+text encoder-decoder models for Hugging Face Transformers.

Importing the package registers the configuration and models with the Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForSpeechSeq2Seq,
)

from .configuration_mu2slam import Mu2SlamConfig
from .modeling_mu2slam import (
    Mu2SlamEncoderOutput,
    Mu2SlamForConditionalGeneration,
    Mu2SlamForSequenceClassification,
    Mu2SlamModel,
    Mu2SlamPreTrainedModel,
    Mu2SlamSeq2SeqLMOutput,
)
from .vocabulary import VocabularyLayout

AutoConfig.register("mu2slam", Mu2SlamConfig, exist_ok=True)
AutoModel.register(Mu2SlamConfig, Mu2SlamModel, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(Mu2SlamConfig, Mu2SlamForConditionalGeneration, exist_ok=True)
AutoModelForSeq2SeqLM.register(Mu2SlamConfig, Mu2SlamForConditionalGeneration, exist_ok=True)
AutoModelForSequenceClassification.register(Mu2SlamConfig, Mu2SlamForSequenceClassification, exist_ok=True)

__version__ = "0.1.0"
__all__ = [
    "Mu2SlamConfig",
    "Mu2SlamEncoderOutput",
    "Mu2SlamForConditionalGeneration",
    "Mu2SlamForSequenceClassification",
    "Mu2SlamModel",
    "Mu2SlamPreTrainedModel",
    "Mu2SlamSeq2SeqLMOutput",
    "VocabularyLayout",
]
