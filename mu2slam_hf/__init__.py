"""mu2slam_hf: Mu2SLAM speech+text encoder-decoder models for Hugging Face Transformers.

Importing the package registers the configuration and models with the Auto classes.
"""

from .configuration_mu2slam import Mu2SlamConfig
from .vocabulary import VocabularyLayout

__version__ = "0.1.0"
__all__ = ["Mu2SlamConfig", "VocabularyLayout"]
