"""Publishing an adapter folder (weights, configs, model card, metrics and plots) on the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

# Never uploaded: resumable checkpoints, TensorBoard event files and hidden temporary folders.
IGNORE_PATTERNS = ["checkpoints/*", "runs/*", ".*"]
_TRANSPORT_MODULES = {"httpx", "httpx2", "requests", "urllib3"}


class HubPushError(RuntimeError):
    """The upload failed; the local folder is untouched."""


def _is_connection_error(error: BaseException) -> bool:
    # huggingface_hub's transport errors come from whichever HTTP client it ships with, so match on their origin.
    return isinstance(error, (ConnectionError, TimeoutError)) or (
        type(error).__module__.split(".")[0] in _TRANSPORT_MODULES and not isinstance(error, HfHubHTTPError)
    )


def upload_failure(error: BaseException) -> str | None:
    """Why a Hub upload failed, in words, for the failures a push reports (refused, unreachable); None otherwise."""
    if isinstance(error, HfHubHTTPError):
        return f"the Hub refused the upload ({error})"
    if _is_connection_error(error):
        return f"the Hugging Face Hub is unreachable ({type(error).__name__}: {error})"
    return None


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload the adapter folder in one commit; returns the commit URL."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an adapter folder (no adapter_config.json); nothing to push.")
    api = api or HfApi(token=token)
    message = commit_message or f"Upload {folder.name} trained with peft_vision_lora"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=message,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except Exception as error:
        reason = upload_failure(error)
        if reason is None:
            raise
        raise HubPushError(
            f"Could not push {folder} to {repo_id}: {reason}. The local folder is intact; "
            f"retry later with `peft-vision-lora push {folder} {repo_id}`."
        ) from error
    return str(getattr(commit, "commit_url", commit))
