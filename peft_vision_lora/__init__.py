"""LoRA fine-tuning of vision transformers (ViT, CLIP vision, DINOv2) for image classification.

Importing the package registers the supported families with PEFT (so ``get_peft_model`` needs no
``target_modules``) and the adapter folder format with transformers' auto classes and pipelines.
"""

from .architectures import ARCHITECTURES, PRESETS, get_architecture, resolve_target_modules, supported_model_types
from .configuration import VisionLoraConfig
from .modeling import build_model, load_model, merge_adapter, save_pretrained
from .multi_adapter import MultiAdapterClassifier
from .processing import load_image_processor
from .registration import VisionLoraForImageClassification, register

__version__ = "0.1.0"

register()

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "MultiAdapterClassifier",
    "VisionLoraConfig",
    "VisionLoraForImageClassification",
    "build_model",
    "get_architecture",
    "load_image_processor",
    "load_model",
    "merge_adapter",
    "register",
    "resolve_target_modules",
    "save_pretrained",
    "supported_model_types",
]
