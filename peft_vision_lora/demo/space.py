"""A ready Hugging Face Space (Gradio SDK) that runs the demo from Hub ids: ``app.py``, ``requirements.txt``, card.

``peft-vision-lora push FOLDER user/name --space`` writes it and uploads it as ``user/name-demo``. The written
``app.py`` reads ``PEFT_VISION_LORA_DEMO_MODELS`` (comma-separated folders or ids) before its Hub ids, so the same
file can be tried locally against the training folder before it is pushed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import yaml
from huggingface_hub import HfApi
from peft import PeftConfig

from ..adapters import adapter_backbone_config
from ..hub import HubPushError, upload_failure
from ..io import looks_like_path

MODELS_ENV = "PEFT_VISION_LORA_DEMO_MODELS"
# The package is installed from its repository (it is not on PyPI); gradio comes with the demo extra.
DEFAULT_REQUIREMENT = "peft_vision_lora[demo] @ git+https://github.com/peft-vision-lora/peft_vision_lora"

APP_TEMPLATE = '''"""Gradio Space: the peft_vision_lora demo of {listed}. Written by `peft-vision-lora push --space`."""

import os

from peft_vision_lora.demo import build_app

# The adapters on the Hub. {env} (comma-separated folders or Hub ids) overrides them, e.g. to run this file
# locally against the training folder: {env}=runs/my-run python app.py
MODELS = {models!r}

chosen = [m for m in os.environ.get("{env}", "").split(",") if m]
demo = build_app(chosen or MODELS, top_k={top_k}, title={title!r})

if __name__ == "__main__":
    demo.launch()  # 127.0.0.1 unless GRADIO_SERVER_NAME says otherwise (a Space sets 0.0.0.0)
'''


def default_space_id(repo_id: str) -> str:
    """``user/name`` -> ``user/name-demo``."""
    return f"{repo_id}-demo"


def space_warnings(folder: str | os.PathLike) -> list[str]:
    """Why a Space built from this local adapter folder would not start: a backbone only this machine has."""
    folder = Path(folder)
    _, base, _ = adapter_backbone_config(folder, PeftConfig.from_pretrained(folder))
    if base and (looks_like_path(base) or Path(base).expanduser().exists()):
        return [
            f"The adapter in {folder} records its backbone as the local path {base!r}; a Space cannot load it. "
            "Train on a Hub backbone (--model user/name), or edit base_model_name_or_path in adapter_config.json "
            "and config.json before pushing."
        ]
    return []


def write_space(
    out_dir: str | os.PathLike,
    model_ids: Sequence[str],
    *,
    title: str | None = None,
    top_k: int = 5,
    requirement: str = DEFAULT_REQUIREMENT,
) -> Path:
    """Write ``app.py``, ``requirements.txt`` and the Space card (``README.md``) into ``out_dir``.

    Without ``title`` the page names its task itself (the model and its classes) and the card lists the model ids.
    """
    if not model_ids:
        raise ValueError("A Space needs at least one model id.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(model_ids)
    heading = title or listed
    app = APP_TEMPLATE.format(listed=listed, env=MODELS_ENV, models=list(model_ids), top_k=top_k, title=title)
    (out / "app.py").write_text(app, encoding="utf-8")
    (out / "requirements.txt").write_text(f"{requirement}\n", encoding="utf-8")
    metadata = {
        "title": heading[:30],  # the Hub limits Space titles to 30 characters
        "emoji": "🌼",
        "sdk": "gradio",
        "app_file": "app.py",
        "pinned": False,
        "models": list(model_ids),
        "tags": ["peft_vision_lora", "image-classification"],
    }
    try:
        from gradio import __version__ as gradio_version

        metadata["sdk_version"] = gradio_version
    except ImportError:  # the Hub then picks its default gradio
        pass
    card = (
        f"---\n{yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)}---\n\n# {heading}\n\n"
        f"Try the image classifier{'s' if len(model_ids) > 1 else ''} {listed} on your own pictures: upload, paste "
        "or drop an image, or several in the Batch tab; the Training results tab shows the run's curves, confusion "
        "matrix and per-class accuracy. Built with peft_vision_lora's `demo`.\n"
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    return out


def push_space(
    space_dir: str | os.PathLike,
    space_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Create the Gradio Space ``space_id`` (if needed) and upload ``space_dir``; returns the commit URL."""
    api = api or HfApi(token=token)
    try:
        api.create_repo(space_id, private=private, exist_ok=True, repo_type="space", space_sdk="gradio")
        commit = api.upload_folder(
            folder_path=str(space_dir),
            repo_id=space_id,
            repo_type="space",
            commit_message="Demo written by peft_vision_lora",
        )
    except Exception as error:
        reason = upload_failure(error)
        if reason is None:
            raise
        raise HubPushError(f"Could not push the Space {space_id}: {reason}. Its files are in {space_dir}.") from error
    return str(getattr(commit, "commit_url", commit))
