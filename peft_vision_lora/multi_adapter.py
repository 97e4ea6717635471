"""Several adapters, each with its own head and label set, served on one shared backbone in one process.

A batch may mix images of different adapters, and calls may come from many threads at once: nothing about the
shared model changes per call. Each call names its adapter per image; the LoRA layers apply the named adapter to
each image (PEFT's mixed-batch forward, ``adapter_names``), the classification model's head slot holds an identity
so the model returns the pooled features, and each adapter's own head is applied to its group of images.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers.image_processing_utils import BaseImageProcessor

from .adapters import ADAPTER_WEIGHTS, AdapterFolder, read_adapter
from .modeling import load_classifier
from .processing import native_image_size

# The adapter of each image of the forward running in this thread (or asyncio task); None outside our calls.
_ADAPTER_NAMES: ContextVar[list[str] | None] = ContextVar("peft_vision_lora_adapter_names", default=None)


def _route_to_adapters(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook of every LoRA layer: pass the calling thread's per-image adapter names on.

    PEFT's own ``adapter_names`` argument registers hooks on the shared layers for the duration of a call, so two
    threads would see each other's names; this hook is registered once and reads a context variable instead.
    """
    names = _ADAPTER_NAMES.get()
    if names is not None:
        kwargs["adapter_names"] = names
    return args, kwargs


def _groups(names: Sequence[str]) -> dict[str, list[int]]:
    """Image indices per adapter, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(name, []).append(index)
    return groups


class MultiAdapterClassifier(torch.nn.Module):
    """One frozen backbone, many (LoRA, head, labels) triples; the caller picks the adapter per call or per image.

    PEFT keeps one copy of each LoRA pair per adapter name. Heads live outside PEFT because their shapes differ
    between adapters (PEFT's ``modules_to_save`` copies the base head, so it cannot hold heads of other sizes).
    ``forward`` and ``predict`` are thread-safe and may run concurrently; ``add_adapter`` is serialised by a lock
    and should not run while other threads are serving.
    """

    def __init__(self, base: str | os.PathLike) -> None:
        super().__init__()
        self.base = os.fspath(base)
        self.model: PeftModel | None = None
        self.heads = torch.nn.ModuleDict()
        self.labels: dict[str, list[str]] = {}
        self.processors: dict[str, BaseImageProcessor] = {}
        # Serialises loading, and the DoRA adapters PEFT cannot mix in a batch (they switch the active adapter).
        self._lock = threading.Lock()

    @property
    def adapters(self) -> list[str]:
        return list(self.heads)

    def add_adapter(self, name: str, path_or_id: str | os.PathLike) -> None:
        """Load the adapter folder ``path_or_id`` (ours, stock PEFT's or a transformers-4.x-named one) as ``name``."""
        with self._lock:
            if name in self.heads:
                raise ValueError(f"Adapter {name!r} is already loaded.")
            adapter = read_adapter(path_or_id, base_model=self.base)
            classifier = self._classifier_for(adapter)
            state_dict, peft_config = adapter.weights_for(classifier)
            head_state = {
                k.split(f"{adapter.head}.")[-1].replace("modules_to_save.", ""): v
                for k, v in state_dict.items()
                if f".{adapter.head}." in k
            }
            head = self._make_head(head_state, adapter)
            lora_state = {k: v for k, v in state_dict.items() if f".{adapter.head}." not in k}
            peft_config.modules_to_save = None
            peft_config.inference_mode = True
            if self.model is None:
                self.model = get_peft_model(classifier, peft_config, adapter_name=name)
            else:
                self.model.add_adapter(name, peft_config)
            result = set_peft_model_state_dict(self.model, lora_state, adapter_name=name)
            missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
            if missing:
                if len(self.model.peft_config) == 1:
                    self.model = None
                else:
                    self.model.delete_adapter(name)
                raise ValueError(
                    f"Adapter {adapter.folder} does not fit the base {self.base!r}: missing {missing[:5]}."
                )
            for module in self.model.modules():
                if isinstance(module, LoraLayer) and not getattr(module, "_vision_lora_routed", False):
                    module.register_forward_pre_hook(_route_to_adapters, with_kwargs=True)
                    module._vision_lora_routed = True
            self.heads[name] = head
            self.labels[name] = list(adapter.labels)
            self.processors[name] = adapter.processor
            self.eval()

    def _classifier_for(self, adapter: AdapterFolder) -> torch.nn.Module:
        if self.model is not None:
            classifier = self.model.get_base_model()
            size, served = native_image_size(adapter.classification_config()), native_image_size(classifier.config)
            if size != served:
                raise ValueError(
                    f"Adapter {adapter.folder} was trained at {size} px but this classifier serves {served} px."
                )
            return classifier
        classifier = load_classifier(self.base, adapter.classification_config())
        classifier.name_or_path = self.base
        # The head slot returns the pooled features; each adapter's head is applied to its own images.
        setattr(classifier, adapter.head, torch.nn.Identity())
        return classifier

    @staticmethod
    def _make_head(state: dict[str, torch.Tensor], adapter: AdapterFolder) -> torch.nn.Linear:
        if "weight" not in state:
            raise ValueError(f"{adapter.folder / ADAPTER_WEIGHTS} holds no classification head.")
        out_features, in_features = state["weight"].shape
        head = torch.nn.Linear(in_features, out_features, bias="bias" in state)
        head.load_state_dict(state)
        return head

    def _features(self, pixel_values: torch.Tensor, names: list[str], **kwargs: Any) -> torch.Tensor:
        """Pooled features of each image under its own adapter's LoRA weights."""
        classifier = self.model.get_base_model()
        groups = _groups(names)
        dora = [name for name in groups if self.model.peft_config[name].use_dora]
        if not dora:
            token = _ADAPTER_NAMES.set(names)
            try:
                return classifier(pixel_values=pixel_values, **kwargs).logits
            finally:
                _ADAPTER_NAMES.reset(token)
        # PEFT cannot mix DoRA adapters in a batch: their images run one adapter at a time, with it active.
        parts = {}
        rest = [i for i, name in enumerate(names) if name not in dora]
        if rest:
            parts[tuple(rest)] = self._features(pixel_values[rest], [names[i] for i in rest], **kwargs)
        for name in dora:
            with self._lock:
                self.model.base_model.set_adapter(name, inference_mode=True)
                parts[tuple(groups[name])] = classifier(pixel_values=pixel_values[groups[name]], **kwargs).logits
        first = next(iter(parts.values()))
        features = first.new_empty(len(names), *first.shape[1:])
        for indices, part in parts.items():
            features[list(indices)] = part
        return features

    @torch.inference_mode()
    def forward(
        self, pixel_values: torch.Tensor, adapter: str | Sequence[str], **kwargs: Any
    ) -> torch.Tensor | list[torch.Tensor]:
        """Logits for a batch of preprocessed images.

        ``adapter`` is one name for the whole batch (returns a ``(batch, labels)`` tensor) or one name per image
        (returns one logits vector per image: the adapters' label sets may differ in size).
        """
        names = [adapter] * len(pixel_values) if isinstance(adapter, str) else list(adapter)
        if len(names) != len(pixel_values):
            raise ValueError(f"{len(names)} adapter names for a batch of {len(pixel_values)} images.")
        unknown = sorted(set(names) - set(self.heads))
        if unknown:
            raise KeyError(f"Unknown adapter {unknown[0]!r}; loaded: {', '.join(self.adapters) or 'none'}.")
        features = self._features(pixel_values, names, **kwargs)
        if isinstance(adapter, str):
            return self.heads[adapter](features)
        rows: list[torch.Tensor] = [features] * len(names)  # placeholders, all replaced below
        for name, indices in _groups(names).items():
            for index, row in zip(indices, self.heads[name](features[indices])):
                rows[index] = row
        return rows

    def predict(self, images: list, adapter: str | Sequence[str], top_k: int = 1) -> list[list[dict[str, float | str]]]:
        """``[{"label", "score"}]`` per image (PIL images), like the image-classification pipeline.

        ``adapter`` names one adapter for all images or one per image; each image is preprocessed by its adapter's
        processor and all run in one forward where their sizes agree.
        """
        names = [adapter] * len(images) if isinstance(adapter, str) else list(adapter)
        groups = _groups(names)
        unknown = sorted(set(groups) - set(self.heads))
        if unknown:
            raise KeyError(f"Unknown adapter {unknown[0]!r}; loaded: {', '.join(self.adapters) or 'none'}.")
        batches = {
            name: self.processors[name]([images[i] for i in indices], return_tensors="pt")["pixel_values"]
            for name, indices in groups.items()
        }
        shapes = {tuple(batch.shape[1:]) for batch in batches.values()}
        rows: list[torch.Tensor] = []
        if len(shapes) == 1:
            pixel_values = next(iter(batches.values())).new_empty(len(images), *shapes.pop())
            for name, indices in groups.items():
                pixel_values[indices] = batches[name]
            rows = self(pixel_values, adapter=names)
        else:  # processors of different input sizes: one forward per adapter
            rows = [None] * len(images)
            for name, indices in groups.items():
                for index, row in zip(indices, self(batches[name], adapter=name)):
                    rows[index] = row
        results = []
        for name, row in zip(names, rows):
            scores, ids = row.softmax(-1).topk(min(top_k, row.shape[-1]))
            results.append([{"label": self.labels[name][i], "score": float(s)} for s, i in zip(scores, ids.tolist())])
        return results
