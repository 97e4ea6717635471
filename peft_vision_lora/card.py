"""The model card (README.md) of every model folder: Hub metadata, labels, results and how to use it.

One writer for both kinds of folder: LoRA adapters and the plain classifiers of full fine-tuning and linear probing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel
from transformers import PreTrainedModel


@dataclass(frozen=True)
class CardInfo:
    """What a model card says about how the model was made, beyond the model itself."""

    method: str = "lora"  # lora, full or linear
    metrics: dict[str, Any] = field(default_factory=dict)
    command: str | None = None  # the training command
    dataset: str | None = None  # a Hub dataset id or a path, for the card's metadata
    name: str | None = None  # the folder or Hub id the usage example shows

    def named(self, name: str) -> CardInfo:
        return self if self.name else replace(self, name=name)


TAGS = ["peft", "lora", "peft_vision_lora", "image-classification", "vision-transformer"]


def _format(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _results_table(metrics: dict[str, Any]) -> str:
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if not scalars:
        return ""
    rows = "\n".join(f"| {name} | {_format(value)} |" for name, value in scalars.items())
    return f"## Results\n\n| metric | value |\n|---|---|\n{rows}\n\n"


def _description(model: PeftModel | PreTrainedModel, method: str, labels: list[str]) -> str:
    if isinstance(model, PeftModel):
        config = model.peft_config[model.active_adapter]
        trainable, total = model.get_nb_trainable_parameters()
        return (
            f"A LoRA adapter (r={config.r}, alpha={config.lora_alpha}) with a {len(labels)}-class head, trained with "
            "[peft_vision_lora](https://github.com/peft-vision-lora/peft_vision_lora). "
            f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%).\n\n"
        )
    kind = "a linear probe (frozen backbone, trained head)" if method == "linear" else "full fine-tuning"
    return f"Trained by {kind} with peft_vision_lora.\n\n"


def _adapted_modules(model: PeftModel) -> str:
    targets = model.peft_config[model.active_adapter].target_modules
    targets = sorted(targets) if isinstance(targets, (set, list)) else targets
    return (
        f"## Adapted modules\n\n{len(targets) if isinstance(targets, list) else targets} "
        f"modules: `{targets[0] if isinstance(targets, list) and targets else targets}` ...\n\n"
    )


def write_model_card(
    folder: Path,
    model: PeftModel | PreTrainedModel,
    base_model: str | None = None,
    info: CardInfo = CardInfo(),
) -> Path:
    """Write ``folder/README.md`` for a LoRA adapter (a ``PeftModel``) or a plain classifier trained by
    ``info.method`` (``full`` or ``linear``). ``base_model`` defaults to the model's ``name_or_path``."""
    lora = isinstance(model, PeftModel)
    classifier = model.get_base_model() if lora else model
    base_model = base_model or classifier.name_or_path
    labels = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    metadata = {
        "base_model": base_model,
        "library_name": "peft" if lora else "transformers",
        "pipeline_tag": "image-classification",
        "tags": TAGS if lora else [tag for tag in TAGS if tag not in ("peft", "lora")],
    }
    if info.dataset:
        metadata["datasets"] = [info.dataset]
    registers = "import peft_vision_lora  # registers the adapter format with transformers\n" if lora else ""
    text = [
        f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n",
        f"# {'LoRA image' if lora else 'Image'} classifier on `{base_model}`\n\n",
        _description(model, info.method, labels),
        _results_table(info.metrics),
        f"## Usage\n\n```python\n{registers}from transformers import pipeline\n\n"
        f'classifier = pipeline("image-classification", model="{info.name or folder.name}")\n'
        'print(classifier("image.jpg", top_k=3))\n```\n\n',
        f"## Labels\n\n{', '.join(f'`{label}`' for label in labels)}\n\n",
        _adapted_modules(model) if lora else "",
    ]
    if info.dataset:
        text.append(f"## Training data\n\n`{info.dataset}`\n\n")
    if info.command:
        text.append(f"## Training command\n\n```bash\n{info.command}\n```\n")
    path = folder / "README.md"
    path.write_text("".join(text), encoding="utf-8")
    return path
