"""hf_ssl: self-supervised pretraining for text, vision and audio on the Hugging Face stack.

Importing it registers every objective with transformers' Auto classes, the CLI, evaluation and export.
"""

from hf_ssl._version import __version__
from hf_ssl.errors import UsageError
from hf_ssl.models.simclr import SimCLRConfig, SimCLRForPreTraining, SimCLRModel

__all__ = ["SimCLRConfig", "SimCLRForPreTraining", "SimCLRModel", "UsageError", "__version__"]
