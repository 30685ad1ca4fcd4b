"""One folder per objective, each registered by its own ``__init__.py``; importing this package registers them all
(Auto classes, CLI, evaluation, export, the names :mod:`hf_ssl` re-exports). Adding an objective adds its folder
and its name here."""

from hf_ssl.models import data2vec_audio, data2vec_text, dino, mae, mlm, simclr, simcse, wav2vec  # noqa: F401
