"""The model card (README.md) written next to every adapter: Hub metadata, labels, results and how to use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel

TAGS = ["peft", "lora", "peft_vision_lora", "image-classification", "vision-transformer"]


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _results_table(metrics: dict[str, Any]) -> str:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if not scalars:
        return ""
    rows = "\n".join(f"| {name} | {_format(value)} |" for name, value in scalars.items())
    return f"## Results\n\n| metric | value |\n|---|---|\n{rows}\n\n"


def write_model_card(
    folder: Path,
    model: PeftModel,
    base_model: str,
    *,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
    dataset: str | None = None,
    name: str | None = None,
) -> Path:
    """Write ``folder/README.md``; ``name`` is the folder or Hub id shown in the usage example."""
    config = model.peft_config[model.active_adapter]
    classifier = model.get_base_model()
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    trainable, total = model.get_nb_trainable_parameters()
    metadata = {
        "base_model": base_model,
        "library_name": "peft",
        "pipeline_tag": "image-classification",
        "tags": TAGS,
    }
    if dataset:
        metadata["datasets"] = [dataset]
    targets = config.target_modules
    targets = sorted(targets) if isinstance(targets, (set, list)) else targets
    text = [
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n",
        f"# LoRA image classifier on `{base_model}`\n\n",
        f"A LoRA adapter (r={config.r}, alpha={config.lora_alpha}) with a {len(labels)}-class head, trained with "
        "[peft_vision_lora](https://github.com/peft-vision-lora/peft_vision_lora). "
        f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%).\n\n",
        _results_table(metrics or {}),
        "## Usage\n\n```python\nimport peft_vision_lora  # registers the adapter format with transformers\n"
        "from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{name or folder.name}")\n'
        'print(classifier("image.jpg", top_k=3))\n```\n\n',
        f"## Labels\n\n{', '.join(f'`{label}`' for label in labels)}\n\n",
        f"## Adapted modules\n\n{len(targets) if isinstance(targets, list) else targets} "
        f"modules: `{targets[0] if isinstance(targets, list) and targets else targets}` ...\n\n",
    ]
    if dataset:
        text.append(f"## Training data\n\n`{dataset}`\n\n")
    if command:
        text.append(f"## Training command\n\n```bash\n{command}\n```\n")
    path = folder / "README.md"
    path.write_text("".join(text), encoding="utf-8")
    return path
