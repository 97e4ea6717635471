"""Adapter folders: write (:func:`save_pretrained`), read (:func:`read_adapter`), load and merge them."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.image_processing_utils import BaseImageProcessor

from .architectures import (
    ARCHITECTURES,
    VisionArchitecture,
    get_architecture,
    rename_legacy_key,
)
from .card import CardInfo, write_model_card
from .configuration import VisionLoraConfig
from .io import atomic_folder, looks_like_path
from .modeling import check_base_exists, classification_config, load_classifier
from .processing import default_image_processor, load_image_processor, vision_config

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


# ------------------------------------------------------------------------------------------------------------- saving


def write_model_folder(
    folder: str | os.PathLike,
    model: PeftModel | PreTrainedModel,
    image_processor: BaseImageProcessor | None = None,
    card: CardInfo | None = None,
) -> Path:
    """Write a model folder into the existing, empty ``folder`` (not atomically: see :func:`save_pretrained`).

    A ``PeftModel`` gives the portable adapter folder: adapter, our ``config.json`` (labels, backbone location),
    processor and model card. A plain transformers model (full fine-tuning, linear probe: ``card.method``) gives its
    own ``save_pretrained`` folder, the processor and the model card.
    """
    folder = Path(folder)
    lora = isinstance(model, PeftModel)
    classifier = model.get_base_model() if lora else model
    processor = image_processor or getattr(model, "vision_lora_image_processor", None)
    if processor is None:
        processor = default_image_processor(classifier.config)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    base_name = None
    if lora:
        base_name = model.peft_config[model.active_adapter].base_model_name_or_path or classifier.name_or_path
        preset = getattr(model, "vision_lora_preset", None)
        VisionLoraConfig.from_backbone(classifier.config, base_name, preset).save_pretrained(folder)
    write_model_card(folder, model, base_name, card or CardInfo())
    return folder


def save_pretrained(
    model: PeftModel,
    out_dir: str | os.PathLike,
    image_processor: BaseImageProcessor | None = None,
    *,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
    dataset: str | None = None,
) -> Path:
    """Write the portable adapter folder, atomically.

    The folder loads with stock ``PeftModel.from_pretrained(base, folder)``, and after ``import peft_vision_lora``
    with ``AutoModelForImageClassification.from_pretrained(folder)``, ``pipeline("image-classification", folder)``
    and :func:`load_model`.
    """
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        card = CardInfo(metrics=metrics or {}, command=command, dataset=dataset, name=out_dir.name)
        write_model_folder(tmp, model, image_processor, card)
    return out_dir


# ------------------------------------------------------------------------------------------------------------ loading


def resolve_adapter_dir(path_or_id: str | os.PathLike) -> Path:
    """A local folder holding the adapter: the folder itself, or a Hub snapshot of it (safetensors only)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        folder = path
    elif looks_like_path(os.fspath(path_or_id)):
        raise FileNotFoundError(f"Adapter folder {os.fspath(path_or_id)!r} does not exist.")
    else:
        folder = Path(snapshot_download(os.fspath(path_or_id), allow_patterns=["*.json", "*.safetensors", "*.md"]))
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"No {ADAPTER_CONFIG} in {folder}: not a PEFT adapter folder.")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickles = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
        if pickles:
            raise ValueError(
                f"{folder / pickles[0]} is a pickle file; peft_vision_lora only loads safetensors weights. "
                "Convert it once, from a trusted source, with PeftModel.from_pretrained(...).save_pretrained(dir)."
            )
        raise FileNotFoundError(f"No {ADAPTER_WEIGHTS} in {folder}.")
    return folder


def adapter_backbone_config(folder: Path, peft_config: PeftConfig) -> tuple[PretrainedConfig, str, bool]:
    """Backbone config, base location, and whether the folder itself records the labels.

    Our folders carry both in config.json; an adapter saved by stock PEFT may have a plain config.json, or none,
    in which case the base's config stands in and the labels are unknown.
    """
    config_file = folder / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == VisionLoraConfig.model_type:
        config = VisionLoraConfig.from_pretrained(folder)
        return config.get_backbone_config(), config.base_model_name_or_path or peft_config.base_model_name_or_path, True
    base = peft_config.base_model_name_or_path
    if config_file.is_file():
        return AutoConfig.from_pretrained(folder), base, True
    return AutoConfig.from_pretrained(check_base_exists(base)), base, False


def _head_size(shapes: Mapping[str, Sequence[int]], arch: VisionArchitecture) -> int | None:
    """The number of outputs of the saved head, from the shapes of the adapter's weights."""
    pattern = re.compile(rf"(^|\.){arch.head}\.(modules_to_save\.)?(\w+\.)?weight$")
    sizes = {shape[0] for key, shape in shapes.items() if pattern.search(key) and len(shape) == 2}
    return sizes.pop() if len(sizes) == 1 else None


def stock_classifier_base(path: Any) -> str | None:
    """The base of a local adapter folder saved by stock PEFT (no ``config.json``) for a supported family with its
    classification head among the weights; None for any other path. Stock transformers builds such a model with the
    base's head size (and fails to load a saved head of another size); :func:`load_model` reads it off the weights."""
    if not isinstance(path, (str, os.PathLike)):
        return None
    folder = Path(path)
    if not (folder / ADAPTER_CONFIG).is_file() or (folder / "config.json").exists():
        return None
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    try:
        model_type = AutoConfig.from_pretrained(base).model_type if base else None
    except (OSError, ValueError):
        return None  # an unreachable or unknown base: transformers' own loader reports it
    if model_type not in ARCHITECTURES or not (folder / ADAPTER_WEIGHTS).is_file():
        return None
    with safe_open(folder / ADAPTER_WEIGHTS, framework="pt") as weights:
        names = weights.keys()  # a safetensors handle is not iterable
        shapes = {key: weights.get_slice(key).get_shape() for key in names}
    return base if _head_size(shapes, ARCHITECTURES[model_type]) is not None else None


def convert_legacy_names(
    model: PreTrainedModel, state_dict: dict[str, torch.Tensor], peft_config: PeftConfig, folder: Path
) -> tuple[dict[str, torch.Tensor], PeftConfig]:
    """Rename an adapter saved under the other transformers naming (4.x ``attention.attention.query``) to the live one.

    The adapted modules are read off the weights themselves, so suffix target lists such as ``["query", "value"]``
    that match nothing in a 5.x model are replaced by the exact module paths they adapted.
    """
    arch = get_architecture(model)
    live = {name for name, _ in model.named_modules()}
    prefix = "base_model.model."
    adapted = sorted(
        {k[len(prefix) :].split(".lora_")[0] for k in state_dict if ".lora_" in k and k.startswith(prefix)}
    )
    renames = {}
    for name in adapted:
        if name in live:
            continue
        new = rename_legacy_key(arch, name)
        if new not in live:
            raise ValueError(
                f"Adapter {folder} adapts module {name!r}, which the {type(model).__name__} base does not have "
                f"(nor under current transformers naming, {new!r}). Was it trained on a different architecture?"
            )
        renames[name] = new
    if not renames:
        return state_dict, peft_config
    logger.info("Converting %d module names of %s to current transformers naming.", len(renames), folder)
    converted = {}
    for key, tensor in state_dict.items():
        module = key[len(prefix) :].split(".lora_")[0] if ".lora_" in key else None
        converted[key.replace(module, renames[module], 1) if module in renames else key] = tensor
    peft_config.target_modules = sorted({renames.get(name, name) for name in adapted})
    return converted, peft_config


def _check_same_architecture(
    backbone: PretrainedConfig, base_config: PretrainedConfig, folder: Path, base: str
) -> None:
    mine, theirs = get_architecture(backbone), get_architecture(base_config)
    vision = vision_config
    geometry = ("hidden_size", "num_hidden_layers", "patch_size")
    if mine.classification_class != theirs.classification_class or any(
        getattr(vision(backbone), g, None) != getattr(vision(base_config), g, None) for g in geometry
    ):
        raise ValueError(
            f"Adapter {folder} was trained on a {backbone.model_type} backbone "
            f"({', '.join(f'{g}={getattr(vision(backbone), g, None)}' for g in geometry)}) but the base {base!r} is a "
            f"{base_config.model_type} ({', '.join(f'{g}={getattr(vision(base_config), g, None)}' for g in geometry)})."
        )


@dataclass
class AdapterFolder:
    """An adapter folder read and checked against its base: what every loader of the package needs.

    ``labels`` are the folder's own, or ``LABEL_<i>`` for an adapter saved by stock PEFT that records none;
    ``processor`` is the folder's, or the architecture table's default where the folder has none.
    """

    folder: Path
    peft_config: PeftConfig
    backbone_config: PretrainedConfig
    base: str
    labels: list[str]
    state_dict: dict[str, torch.Tensor]
    processor: BaseImageProcessor

    @property
    def head(self) -> str:
        """Attribute name of the classification head in the classification model."""
        return get_architecture(self.backbone_config).head

    def classification_config(self) -> PretrainedConfig:
        """Config of the classification model the adapter was trained on, labels included."""
        return classification_config(self.backbone_config, self.labels)

    def weights_for(self, model: PreTrainedModel) -> tuple[dict[str, torch.Tensor], PeftConfig]:
        """The adapter's weights and PEFT config under ``model``'s module names (legacy names converted)."""
        return convert_legacy_names(model, dict(self.state_dict), copy.deepcopy(self.peft_config), self.folder)


def read_adapter(path_or_id: str | os.PathLike, *, base_model: str | os.PathLike | None = None) -> AdapterFolder:
    """Read an adapter folder (local or Hub) and check it against its base (``base_model`` overrides the recorded
    one): same architecture and geometry, a head as large as the label list, safetensors weights only."""
    folder = resolve_adapter_dir(path_or_id)
    peft_config = PeftConfig.from_pretrained(folder)
    backbone_config, base, labels_known = adapter_backbone_config(folder, peft_config)
    base = base_model if base_model is not None else base
    if base is None:
        raise ValueError(f"Adapter {folder} does not name its base model; pass base_model=...")
    base = check_base_exists(base)
    _check_same_architecture(backbone_config, AutoConfig.from_pretrained(base), folder, base)
    state_dict = load_file(folder / ADAPTER_WEIGHTS)
    head = _head_size({key: tensor.shape for key, tensor in state_dict.items()}, get_architecture(backbone_config))
    labels = [backbone_config.id2label[i] for i in range(backbone_config.num_labels)]
    if head is not None and head != len(labels):
        if labels_known:
            raise ValueError(
                f"{folder / 'config.json'} lists {len(labels)} labels but the head in "
                f"{folder / ADAPTER_WEIGHTS} has {head} outputs."
            )
        logger.warning("Adapter %s records no labels; naming its %d classes LABEL_0...", folder, head)
        labels = [f"LABEL_{i}" for i in range(head)]
    config = classification_config(backbone_config, labels)
    processor = (
        load_image_processor(folder)
        if (folder / "preprocessor_config.json").is_file()
        else default_image_processor(config)
    )
    return AdapterFolder(folder, peft_config, backbone_config, base, labels, state_dict, processor)


def _peft_model(adapter: AdapterFolder, adapter_name: str) -> PeftModel:
    model = load_classifier(adapter.base, adapter.classification_config())
    model.name_or_path = os.fspath(adapter.base)
    state_dict, peft_config = adapter.weights_for(model)
    peft_config.inference_mode = True
    peft_model = get_peft_model(model, peft_config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(peft_model, state_dict, adapter_name=adapter_name)
    unexpected = [k for k in result.unexpected_keys if adapter_name in k or "lora_" in k]
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if unexpected or missing:
        raise ValueError(
            f"Adapter {adapter.folder} does not fit its base {adapter.base!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    peft_model.eval()
    peft_model.vision_lora_preset = getattr(adapter.backbone_config, "preset", None)
    peft_model.vision_lora_image_processor = adapter.processor
    return peft_model


def load_model(
    path_or_id: str | os.PathLike,
    *,
    merge: bool = False,
    base_model: str | os.PathLike | None = None,
    adapter_name: str = "default",
) -> PeftModel | PreTrainedModel:
    """The classifier stored in an adapter folder (local or Hub), in eval mode, ready for inference.

    Returns a ``PeftModel``, or with ``merge=True`` a plain transformers model with the LoRA weights merged in.
    ``base_model`` overrides the backbone location recorded in the adapter. Adapters saved under the transformers
    4.x module names load on 5.x (and vice versa for names the table knows).
    """
    peft_model = _peft_model(read_adapter(path_or_id, base_model=base_model), adapter_name)
    if merge:
        return peft_model.merge_and_unload().eval()
    return peft_model


def merge_adapter(path_or_id: str | os.PathLike, out_dir: str | os.PathLike, *, base_model: str | None = None) -> Path:
    """A standalone transformers model folder: LoRA merged into the backbone, head, labels and processor kept."""
    adapter = read_adapter(path_or_id, base_model=base_model)
    model = _peft_model(adapter, "default").merge_and_unload().eval()
    with atomic_folder(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        adapter.processor.save_pretrained(tmp)
    return Path(out_dir)
