"""One folder per objective; importing this package registers every objective (Auto classes, CLI, evaluation,
export). Adding an objective adds its name here."""

from hf_ssl.models import mae, mlm, simclr, simcse, wav2vec  # noqa: F401
