"""The Hub side: the token to upload with, and the one-commit upload of a folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import PublishError


def resolve_token(token: str | None = None) -> str:
    """The Hub token to upload with: `token`, else HF_TOKEN, else the saved login."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(
            "No Hugging Face token found: run `hf auth login` (or set the HF_TOKEN environment variable) with a token "
            "that has write access, or use `--dry_run DIR` to only write the folder that would be uploaded."
        )
    return token


def upload(
    folder: str | os.PathLike, repo_id: str, token: str, private: bool = False, message: str | None = None
) -> tuple[Any, Any]:
    """Create the repo if needed and upload every file of `folder` in one commit; return (RepoUrl, CommitInfo).

    `create_commit` rather than `upload_folder`: with hf_xet installed the latter may split a folder over several
    commits, and a model repository should never be seen half-updated.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    root = Path(folder)
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=str(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    commit = api.create_commit(
        repo_id=repo_url.repo_id,
        operations=operations,
        commit_message=message or "Upload Mu2SLAM model, processor, remote code and model card",
    )
    return repo_url, commit
