"""hf_ssl: self-supervised pretraining for text, vision and audio on the Hugging Face stack."""

from hf_ssl.models.simclr import SimCLRConfig, SimCLRForPreTraining, SimCLRModel

__version__ = "0.1.0"

__all__ = ["SimCLRConfig", "SimCLRForPreTraining", "SimCLRModel", "__version__"]
