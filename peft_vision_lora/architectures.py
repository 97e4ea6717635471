"""The architecture table: everything the package knows about a backbone family, keyed by ``config.model_type``.

Adding a family is one ``VisionArchitecture`` entry. Module names are never hard-coded for one transformers
version: each role (query, key, value, ...) is a regex that covers both the 4.x names
(``encoder.layer.N.attention.attention.query``) and the 5.x names (``layers.N.attention.q_proj``), and targets are
resolved against the live model's ``named_modules()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch
from transformers import PretrainedConfig

from .processing import CLIP_MEAN, CLIP_STD, Preprocessing

ROLES = ("q", "k", "v", "o", "fc1", "fc2")
PRESETS: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "k", "v"),
    "qv": ("q", "v"),
    "attn": ("q", "k", "v", "o"),
    "all": ROLES,
}
DEFAULT_PRESET = "qkv"
# The LoRA defaults of build_model and of the training flags: rank 8, updates scaled by alpha / r = 2.
DEFAULT_R, DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT = 8, 16, 0.0


@dataclass(frozen=True)
class VisionArchitecture:
    """How to find the parts of one backbone family in a live model."""

    model_type: str
    classification_class: str
    # Regex of the module path prefix that holds the vision encoder layers, e.g. ``vision_model.encoder.layers.3.``.
    layer_prefix: str
    # Per role: regex of the module path inside one layer. Alternatives cover transformers 4.x and 5.x names.
    roles: Mapping[str, str]
    # Regex of the module path of the patch + position embeddings (their output is the encoder's input sequence).
    embeddings: str = r"embeddings"
    head: str = "classifier"
    processor: Preprocessing = field(default_factory=Preprocessing)
    # transformers 4.x -> 5.x renames of module path pieces (plain substrings, applied in order): they convert adapters
    # saved under the old names and, inverted, let LoRA ``target_modules`` written for 4.x select the same modules.
    legacy_renames: tuple[tuple[str, str], ...] = ()
    # ``key_mapping`` for loading this family's bare-backbone checkpoints into its classification class.
    checkpoint_key_mapping: Mapping[str, str] = field(default_factory=dict)

    def role_regex(self, roles: Iterable[str]) -> str:
        """One regex that fully matches the module names of ``roles`` in every encoder layer."""
        alternatives = "|".join(f"(?:{self.roles[r]})" for r in roles)
        return rf"(?:.*\.)?{self.layer_prefix}\d+\.(?:{alternatives})"

    def layer_index(self, module_name: str) -> int | None:
        """The encoder layer a module path lies in, or None outside the layers."""
        match = re.search(rf"(?:^|\.){self.layer_prefix}(\d+)\.", module_name)
        return int(match.group(1)) if match else None


_VIT_ROLES = {
    "q": r"attention\.(?:q_proj|attention\.query)",
    "k": r"attention\.(?:k_proj|attention\.key)",
    "v": r"attention\.(?:v_proj|attention\.value)",
    "o": r"attention\.(?:o_proj|output\.dense)",
    "fc1": r"(?:mlp\.fc1|intermediate\.dense)",
    "fc2": r"(?:mlp\.fc2|output\.dense)",
}
_DINOV2_ROLES = {**_VIT_ROLES, "fc1": r"mlp\.(?:fc1|weights_in)", "fc2": r"mlp\.(?:fc2|weights_out)"}
_CLIP_ROLES = {
    "q": r"self_attn\.q_proj",
    "k": r"self_attn\.k_proj",
    "v": r"self_attn\.v_proj",
    "o": r"self_attn\.out_proj",
    "fc1": r"mlp\.fc1",
    "fc2": r"mlp\.fc2",
}
_ATTENTION_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_CLIP_VISION = VisionArchitecture(
    model_type="clip_vision_model",
    classification_class="CLIPForImageClassification",
    # transformers 5 CLIPVisionModel has no ``vision_model`` wrapper; 4.x and full CLIP checkpoints do.
    layer_prefix=r"(?:vision_model\.)?encoder\.layers\.",
    roles=_CLIP_ROLES,
    embeddings=r"(?:vision_model\.)?embeddings",
    processor=Preprocessing(mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0),
    # A transformers 5 CLIPVisionModel saves ``encoder.*``; CLIPForImageClassification wants ``vision_model.encoder.*``.
    checkpoint_key_mapping={r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.": r"vision_model.\1."},
)

ARCHITECTURES: dict[str, VisionArchitecture] = {
    "vit": VisionArchitecture(
        model_type="vit",
        classification_class="ViTForImageClassification",
        layer_prefix=r"(?:layers|encoder\.layer)\.",
        roles=_VIT_ROLES,
        # Checkpoints that ship no processor (DINO, MAE, DeiT, timm conversions) overwhelmingly use ImageNet
        # statistics; Google's 0.5/0.5 checkpoints ship their own preprocessor_config.json, which wins.
        processor=Preprocessing(),
        legacy_renames=(
            (".encoder.layer.", ".layers."),
            *_ATTENTION_RENAMES,
            (".intermediate.dense.", ".mlp.fc1."),
            (".output.dense.", ".mlp.fc2."),
        ),
    ),
    "dinov2": VisionArchitecture(
        model_type="dinov2",
        classification_class="Dinov2ForImageClassification",
        layer_prefix=r"encoder\.layer\.",
        roles=_DINOV2_ROLES,
        processor=Preprocessing(),
        legacy_renames=_ATTENTION_RENAMES,
    ),
    # Anchored on ``vision_model`` so a full CLIPModel never gets LoRA on its text tower.
    "clip": replace(
        _CLIP_VISION,
        model_type="clip",
        layer_prefix=r"vision_model\.encoder\.layers\.",
        embeddings=r"vision_model\.embeddings",
        checkpoint_key_mapping={},
    ),
    "clip_vision_model": _CLIP_VISION,
}


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def get_architecture(model_or_config: torch.nn.Module | PretrainedConfig | str) -> VisionArchitecture:
    """The table entry for a model, its config or a ``model_type``; a clear error for anything unsupported."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {model_type!r}: peft_vision_lora supports model_type "
            f"{', '.join(supported_model_types())} (ViT, CLIP vision, DINOv2)."
        )
    return ARCHITECTURES[model_type]


def _is_linear(module: torch.nn.Module) -> bool:
    # LoRA-wrapped layers keep a ``base_layer``; resolving on an already adapted model must still work.
    return isinstance(getattr(module, "base_layer", module), torch.nn.Linear)


def resolve_target_modules(
    model: torch.nn.Module, preset: str = DEFAULT_PRESET, *, last_layers: int | None = None
) -> list[str]:
    """Full names of the Linear modules that ``preset`` adapts in ``model``, found in its ``named_modules()``.

    ``last_layers`` keeps only those of the last N encoder layers: backpropagation then stops at the lowest adapted
    layer, since nothing below it needs a gradient.
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    arch = get_architecture(model)
    pattern = re.compile(arch.role_regex(PRESETS[preset]))
    names = [
        name
        for name, module in model.named_modules()
        if pattern.fullmatch(name) and _is_linear(module) and ".base_layer" not in name
    ]
    layers = {arch.layer_index(n) for n in names}
    if not names or len(names) != len(layers) * len(PRESETS[preset]):
        raise ValueError(
            f"Could not resolve preset {preset!r} on {type(model).__name__}: found {len(names)} modules in "
            f"{len(layers)} layers. Is this a {arch.model_type} model of a supported transformers version?"
        )
    if last_layers is not None:
        if not 1 <= last_layers <= len(layers):
            raise ValueError(
                f"--lora_layers must be in 1..{len(layers)} ({type(model).__name__} has {len(layers)} layers), "
                f"got {last_layers}."
            )
        lowest = max(layers) + 1 - last_layers
        names = [n for n in names if arch.layer_index(n) >= lowest]
    return names


def embeddings_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output is the token sequence (patches + position embeddings) the encoder layers read."""
    arch = get_architecture(model)
    pattern = re.compile(rf"(?:.*\.)?{arch.embeddings}")
    found = [module for name, module in model.named_modules() if pattern.fullmatch(name)]
    if len(found) != 1:
        raise ValueError(
            f"Expected one {arch.model_type} embeddings module in {type(model).__name__}, found {len(found)}."
        )
    return found[0]


def rename_legacy_key(arch: VisionArchitecture, key: str) -> str:
    """Map a transformers 4.x module or weight path of ``arch`` to its 5.x name (identity when already current)."""
    padded = f".{key}."
    for old, new in arch.legacy_renames:
        padded = padded.replace(old, new)
    return padded[1:-1]


def legacy_key(arch: VisionArchitecture, key: str) -> str | None:
    """The transformers 4.x name of a 5.x module path of ``arch``: :func:`rename_legacy_key` inverted.

    None when the path has no 4.x form that maps back to it (the family has no renames, or the name is not one).
    """
    padded = f".{key}."
    for old, new in reversed(arch.legacy_renames):
        padded = padded.replace(new, old)
    old_key = padded[1:-1]
    return old_key if old_key != key and rename_legacy_key(arch, old_key) == key else None
