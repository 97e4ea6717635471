"""LoRA fine-tuning of vision transformers (ViT, CLIP vision, DINOv2) for image classification.

Importing the package registers the supported families with PEFT (so ``get_peft_model`` needs no
``target_modules``) and the adapter folder format with transformers' auto classes and pipelines.

The public API is the names below, in groups; everything else lives in its submodule (``peft_vision_lora.data``,
``peft_vision_lora.offline``, ``peft_vision_lora.training``, ...) and is importable from there.
"""

from .adapters import load_model, merge_adapter, save_pretrained
from .architectures import ARCHITECTURES, PRESETS, get_architecture, resolve_target_modules, supported_model_types
from .configuration import VisionLoraConfig
from .data import ImageTransforms, load_image_dataset, write_shards
from .export import export_onnx
from .modeling import build_classifier, build_model
from .multi_adapter import MultiAdapterClassifier
from .processing import load_image_processor
from .registration import VisionLoraForImageClassification, register

# Train, evaluate, share: the training stack (accelerate, evaluate, matplotlib) loads on first use, so that
# inference-only imports stay light.
_LAZY = {
    "DataArguments": "training",
    "ModelArguments": "training",
    "NonFiniteLossError": "training",
    "TrainingArguments": "training",
    "parse_args": "training",
    "train": "training",
    "evaluate_folder": "evaluation",
    "HubPushError": "hub",
    "push_to_hub": "hub",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

register()

__all__ = [
    # registration and the architecture table
    "ARCHITECTURES",
    "PRESETS",
    "get_architecture",
    "register",
    "resolve_target_modules",
    "supported_model_types",
    # build, load, save, merge, serve
    "MultiAdapterClassifier",
    "VisionLoraConfig",
    "VisionLoraForImageClassification",
    "build_classifier",
    "build_model",
    "export_onnx",
    "load_image_processor",
    "load_model",
    "merge_adapter",
    "save_pretrained",
    # data
    "ImageTransforms",
    "load_image_dataset",
    "write_shards",
    # train, evaluate, share
    "DataArguments",
    "HubPushError",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "evaluate_folder",
    "parse_args",
    "push_to_hub",
    "train",
]
