"""One folder per objective; importing this package registers every model with the Auto classes."""

from hf_ssl.models import simclr  # noqa: F401
