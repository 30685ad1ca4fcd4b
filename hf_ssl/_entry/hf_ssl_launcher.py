"""The ``hf-ssl`` console script's first stop: answers ``--help`` and ``--version`` at once, without importing
torch, transformers or hf_ssl (seconds of start-up); every other command goes to :func:`hf_ssl.cli.main`.

Installed as the top-level module ``hf_ssl_launcher`` (see ``package-dir`` in pyproject.toml), because importing
anything inside the ``hf_ssl`` package first runs ``hf_ssl/__init__.py``, which registers every objective.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

USAGE = """usage: hf-ssl <command> ...

  hf-ssl pretrain <objective> [--config FILE] [flags]   (hf-ssl pretrain --help: the objectives and their commands)
  hf-ssl evaluate --model_name_or_path DIR [--dataset_name D] [--split test] [--output_file F.json]
  hf-ssl export MODEL_DIR OUTPUT_DIR [--push_to_hub --hub_model_id user/name]
  hf-ssl report RUN --output_dir DIR [--eval_file F.json] [--dataset_name D]   (needs pip install "hf_ssl[report]")
  hf-ssl --version

Add --help after a command (and objective) for every flag; --debug shows the traceback of an error."""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        try:
            print(f"hf-ssl {version('hf_ssl')}")
        except PackageNotFoundError:  # run from a source tree that is not installed
            from hf_ssl._version import __version__

            print(f"hf-ssl {__version__}")
        return
    from hf_ssl.cli import main as cli_main

    cli_main(argv)
