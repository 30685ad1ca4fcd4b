"""hf_ssl: self-supervised pretraining for text, vision and audio on the Hugging Face stack.

Importing it registers every objective of :mod:`hf_ssl.models` with transformers' Auto classes, the CLI, evaluation
and export. The config, pretraining model and backbone model of every registered objective are attributes of this
package, by class name (``from hf_ssl import SimCLRConfig``), read from the registry, so an objective registered
later is reachable the same way.
"""

from typing import Any

from hf_ssl import models  # noqa: F401  (registers every objective)
from hf_ssl._version import __version__ as __version__
from hf_ssl.errors import UsageError as UsageError
from hf_ssl.objectives import OBJECTIVES

_FIXED = ("UsageError", "__version__")


def _registered_classes() -> dict[str, type]:
    """Every registered objective's config, pretraining model and backbone model, by class name."""
    return {
        cls.__name__: cls
        for objective in OBJECTIVES.values()
        for cls in (objective.config_class, objective.model_class, objective.base_model_class)
    }


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return sorted([*_registered_classes(), *_FIXED])
    classes = _registered_classes()
    if name in classes:
        return classes[name]
    raise AttributeError(f"module 'hf_ssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_registered_classes()})
