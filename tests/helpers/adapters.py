"""Adapter folders as other tools or versions wrote them, for the loading tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def as_transformers4_adapter(folder: Path, out: Path) -> dict:
    """Rewrite a saved ViT adapter as transformers 4.x would have saved it (old module paths, suffix targets)."""
    shutil.copytree(folder, out)
    renames = [
        ("vit.layers.", "vit.encoder.layer."),
        ("attention.q_proj", "attention.attention.query"),
        ("attention.k_proj", "attention.attention.key"),
        ("attention.v_proj", "attention.attention.value"),
    ]
    state = load_file(out / "adapter_model.safetensors")
    renamed = {}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        renamed[key] = value
    save_file(renamed, out / "adapter_model.safetensors")
    config = json.loads((out / "adapter_config.json").read_text())
    config["target_modules"] = ["query", "value"]
    (out / "adapter_config.json").write_text(json.dumps(config))
    return renamed
