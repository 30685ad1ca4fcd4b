"""The packages to install: every package under hf_ssl/, found (a new objective's folder needs no entry), and
``hf_ssl.model_cards`` (the shared card templates, kept in the top-level ``model_cards/``). All else is in
pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["hf_ssl", "hf_ssl.*"]), "hf_ssl.model_cards"])
