"""Hub uploads of an exported folder (the export itself is :mod:`hf_ssl.export`)."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi

from hf_ssl._version import __version__
from hf_ssl.errors import UsageError
from hf_ssl.export.model_card import REPO_ID_PLACEHOLDER


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload backbone exported with hf_ssl",
) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` (an export) to it.

    The card's code snippets name the repository by a placeholder until now; it is replaced in
    ``folder/README.md`` by the full repository id before the upload, so the folder matches what is on the
    Hub.

    Args:
        folder: the exported folder.
        repo_id: ``user/name`` (or ``name``, in the token owner's namespace).
        token: Hub token; default the saved login.
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: the upload's commit message.

    Returns:
        The URL of the commit.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    api = HfApi(token=token, library_name="hf_ssl", library_version=__version__)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    full_id = getattr(repo_url, "repo_id", None) or repo_id
    card = folder / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if REPO_ID_PLACEHOLDER in text:
            card.write_text(text.replace(REPO_ID_PLACEHOLDER, full_id), encoding="utf-8")
    commit = api.upload_folder(repo_id=full_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", None) or commit)
