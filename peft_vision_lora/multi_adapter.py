"""Several adapters, each with its own head and label set, served on one shared backbone in one process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers.image_processing_utils import BaseImageProcessor

from .architectures import get_architecture
from .modeling import (
    ADAPTER_WEIGHTS,
    adapter_backbone_config,
    convert_legacy_names,
    load_classifier,
    resolve_adapter_dir,
)
from .processing import load_image_processor


class MultiAdapterClassifier(torch.nn.Module):
    """One frozen backbone, many (LoRA, head, labels) triples; the caller picks the adapter per call.

    PEFT keeps one copy of each LoRA pair per adapter name. Heads live outside PEFT because their shapes differ
    between adapters (PEFT's ``modules_to_save`` copies the base head, so it cannot hold heads of other sizes);
    the active head is swapped into the classification model for the duration of a call. Calls are therefore
    not thread-safe: serve one call at a time per instance.
    """

    def __init__(self, base: str | os.PathLike) -> None:
        super().__init__()
        self.base = os.fspath(base)
        self.model: PeftModel | None = None
        self.heads = torch.nn.ModuleDict()
        self.labels: dict[str, list[str]] = {}
        self.processors: dict[str, BaseImageProcessor] = {}

    @property
    def adapters(self) -> list[str]:
        return list(self.heads)

    def add_adapter(self, name: str, path_or_id: str | os.PathLike) -> None:
        """Load the adapter folder ``path_or_id`` under ``name``."""
        if name in self.heads:
            raise ValueError(f"Adapter {name!r} is already loaded.")
        folder = resolve_adapter_dir(path_or_id)
        peft_config = PeftConfig.from_pretrained(folder)
        backbone_config, _, _ = adapter_backbone_config(folder, peft_config)
        head_name = get_architecture(backbone_config).head
        state_dict = load_file(folder / ADAPTER_WEIGHTS)
        if self.model is None:
            classifier = load_classifier(self.base, backbone_config)
            classifier.name_or_path = self.base
        else:
            classifier = self.model.get_base_model()
        state_dict, peft_config = convert_legacy_names(classifier, state_dict, peft_config, folder)
        head_state = {
            k.split(f"{head_name}.")[-1].replace("modules_to_save.", ""): v
            for k, v in state_dict.items()
            if f".{head_name}." in k
        }
        lora_state = {k: v for k, v in state_dict.items() if f".{head_name}." not in k}
        peft_config.modules_to_save = None
        peft_config.inference_mode = True
        if self.model is None:
            self.model = get_peft_model(classifier, peft_config, adapter_name=name)
        else:
            self.model.add_adapter(name, peft_config)
        set_peft_model_state_dict(self.model, lora_state, adapter_name=name)
        self.heads[name] = self._make_head(head_state, Path(folder))
        self.labels[name] = [backbone_config.id2label[i] for i in range(backbone_config.num_labels)]
        self.processors[name] = load_image_processor(folder)
        self.eval()

    @staticmethod
    def _make_head(state: dict[str, torch.Tensor], folder: Path) -> torch.nn.Linear:
        if "weight" not in state:
            raise ValueError(f"{folder / ADAPTER_WEIGHTS} holds no classification head.")
        out_features, in_features = state["weight"].shape
        head = torch.nn.Linear(in_features, out_features, bias="bias" in state)
        head.load_state_dict(state)
        return head

    def _head_attr(self) -> str:
        return get_architecture(self.model.get_base_model()).head

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor, adapter: str, **kwargs: Any) -> torch.Tensor:
        """Logits of ``adapter`` for a batch of preprocessed images."""
        if adapter not in self.heads:
            raise KeyError(f"Unknown adapter {adapter!r}; loaded: {', '.join(self.adapters) or 'none'}.")
        classifier = self.model.get_base_model()
        attr = self._head_attr()
        original = getattr(classifier, attr)
        self.model.set_adapter(adapter)
        setattr(classifier, attr, self.heads[adapter])
        classifier.num_labels = len(self.labels[adapter])
        try:
            return self.model(pixel_values=pixel_values, **kwargs).logits
        finally:
            setattr(classifier, attr, original)

    def predict(self, images: list, adapter: str, top_k: int = 1) -> list[list[dict[str, float | str]]]:
        """``[{"label", "score"}]`` per image (PIL images), like the image-classification pipeline."""
        inputs = self.processors[adapter](images, return_tensors="pt")
        probs = self(inputs["pixel_values"], adapter=adapter).softmax(-1)
        scores, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        labels = self.labels[adapter]
        return [
            [{"label": labels[i], "score": float(s)} for s, i in zip(row_scores, row_ids.tolist())]
            for row_scores, row_ids in zip(scores, ids)
        ]
