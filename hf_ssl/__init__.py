"""hf_ssl: self-supervised pretraining for text, vision and audio on the Hugging Face stack.

Importing it registers every objective with transformers' Auto classes, the CLI, evaluation and export.
"""

from hf_ssl._version import __version__
from hf_ssl.errors import UsageError
from hf_ssl.models.mae import MAEConfig, MAEForPreTraining, MAEModel
from hf_ssl.models.mlm import MLMConfig, MLMForPreTraining, MLMModel
from hf_ssl.models.simclr import SimCLRConfig, SimCLRForPreTraining, SimCLRModel
from hf_ssl.models.simcse import SimCSEConfig, SimCSEForPreTraining, SimCSEModel
from hf_ssl.models.wav2vec import Wav2VecConfig, Wav2VecForPreTraining, Wav2VecModel

__all__ = [
    "MAEConfig",
    "MAEForPreTraining",
    "MAEModel",
    "MLMConfig",
    "MLMForPreTraining",
    "MLMModel",
    "SimCLRConfig",
    "SimCLRForPreTraining",
    "SimCLRModel",
    "SimCSEConfig",
    "SimCSEForPreTraining",
    "SimCSEModel",
    "UsageError",
    "Wav2VecConfig",
    "Wav2VecForPreTraining",
    "Wav2VecModel",
    "__version__",
]
