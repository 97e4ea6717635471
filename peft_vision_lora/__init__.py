"""LoRA fine-tuning of vision transformers (ViT, CLIP vision, DINOv2) for image classification.

Importing the package registers the supported families with PEFT (so ``get_peft_model`` needs no
``target_modules``) and the adapter folder format with transformers' auto classes and pipelines.
"""

from .architectures import ARCHITECTURES, PRESETS, get_architecture, resolve_target_modules, supported_model_types
from .configuration import VisionLoraConfig
from .data import (
    ImageTransforms,
    MixupCutmix,
    TransformOptions,
    load_image_dataset,
    normalize_on_device,
    write_shards,
)
from .modeling import build_classifier, build_model, load_model, merge_adapter, save_pretrained
from .multi_adapter import MultiAdapterClassifier
from .offline import DEFAULT_BACKBONE, default_model_path, ensure_default_backbone, load_fashion_mnist
from .processing import load_image_processor
from .registration import VisionLoraForImageClassification, register

# The training stack (accelerate, evaluate, matplotlib) loads on first use, so inference-only imports stay light.
_TRAINING_NAMES = {
    "DataArguments",
    "HubPushError",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "parse_args",
    "push_to_hub",
    "train",
}


def __getattr__(name: str):
    if name in _TRAINING_NAMES:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__version__ = "0.1.0"

register()

__all__ = [
    "DataArguments",
    "HubPushError",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainingArguments",
    "parse_args",
    "push_to_hub",
    "train",
    "ARCHITECTURES",
    "DEFAULT_BACKBONE",
    "ImageTransforms",
    "MixupCutmix",
    "PRESETS",
    "TransformOptions",
    "MultiAdapterClassifier",
    "VisionLoraConfig",
    "VisionLoraForImageClassification",
    "build_classifier",
    "build_model",
    "default_model_path",
    "ensure_default_backbone",
    "get_architecture",
    "load_fashion_mnist",
    "load_image_dataset",
    "load_image_processor",
    "load_model",
    "merge_adapter",
    "normalize_on_device",
    "register",
    "resolve_target_modules",
    "save_pretrained",
    "supported_model_types",
    "write_shards",
]
