"""Image classification data: ``load_image_dataset`` for folders, reference datasets and Hub datasets, and fast
``ImageTransforms`` (train augmentation and processor-exact eval) for ``datasets.Dataset.with_transform``; WebDataset
tar shards (``write_shards``, ``SampleStream``) for data too large to list."""

from ..processing import Preprocessing
from .augment import AUTO_AUGMENT_POLICIES, auto_augment
from .images import IMAGE_EXTENSIONS, SAFE_FORMATS, BadImageError, check_image, open_image, to_rgb
from .layouts import FLOWERS102_CLASSES, FORMATS, LAYOUTS, LayoutError, load_array_pickle, normalize_columns
from .loading import BAD_IMAGE_POLICIES, few_shot, load_image_dataset, stratified_split
from .mixup import MixupCutmix
from .sample_stream import SampleStream
from .shard_reader import ShardError, expand_pattern, looks_like_shards, read_label_file
from .shard_writer import ShardOptions, write_shards
from .transforms import ImageTransforms, TransformOptions, normalize_on_device, random_resized_crop_box

__all__ = [
    "AUTO_AUGMENT_POLICIES",
    "BAD_IMAGE_POLICIES",
    "FLOWERS102_CLASSES",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SAFE_FORMATS",
    "BadImageError",
    "ImageTransforms",
    "LayoutError",
    "MixupCutmix",
    "Preprocessing",
    "SampleStream",
    "ShardError",
    "ShardOptions",
    "TransformOptions",
    "auto_augment",
    "check_image",
    "expand_pattern",
    "few_shot",
    "load_array_pickle",
    "load_image_dataset",
    "looks_like_shards",
    "normalize_columns",
    "normalize_on_device",
    "open_image",
    "random_resized_crop_box",
    "read_label_file",
    "stratified_split",
    "to_rgb",
    "write_shards",
]
