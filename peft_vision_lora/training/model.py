"""The model a run trains: LoRA adapters, full fine-tuning or a linear probe, and how it is called."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.image_processing_utils import BaseImageProcessor

from ..architectures import get_architecture
from ..modeling import build_classifier, build_model
from ..processing import Preprocessing, load_image_processor, native_image_size
from .arguments import ModelArguments


def head_module(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return getattr(base, get_architecture(base).head)


def base_checkpoint(args: ModelArguments, accelerator: Accelerator) -> str:
    """``--model``, else the offline default backbone (converted once, by the first process)."""
    if args.model:
        return args.model
    with accelerator.main_process_first():
        from ..offline.backbone import default_model_path

        return default_model_path()


def build_run_model(
    args: ModelArguments, base: str | os.PathLike, labels: Sequence[str], *, gradient_checkpointing: bool = False
) -> tuple[nn.Module, BaseImageProcessor, int]:
    """The run's model, its one image processor and its one image size, resolved once: ``--image_size``, else the
    size the checkpoint's processor produces (from its config when it ships none). Everything downstream (position
    embeddings, the transforms, token counts, the recipe) takes the size from here."""
    processor = load_image_processor(base, image_size=args.image_size, normalization=args.normalization)
    size = Preprocessing.from_processor(processor).size[0]
    model = build_training_model(args, base, labels, image_size=size, image_processor=processor)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, processor, size


def build_training_model(
    args: ModelArguments,
    base: str | os.PathLike,
    labels: Sequence[str],
    *,
    image_size: int | None = None,
    image_processor: BaseImageProcessor | None = None,
) -> nn.Module:
    """The model of ``args.method`` with a head over ``labels``, built for ``image_size``, trainable parameters set;
    a LoRA model keeps ``image_processor`` (default: the base's) to save with its adapter."""
    if args.method == "lora":
        return build_model(
            base,
            labels,
            preset=args.preset,
            r=args.r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            normalization=args.normalization,
            use_dora=args.use_dora,
            image_size=image_size,
            lora_layers=args.lora_layers,
            image_processor=image_processor,
        )
    model = build_classifier(base, labels, image_size=image_size)
    if args.method == "linear":
        model.requires_grad_(False)
        head_module(model).requires_grad_(True)
    return model


@contextlib.contextmanager
def merged_adapters(model: nn.Module) -> Iterator[None]:
    """Inference with every adapter folded into the weights it adapts, restored bit for bit afterwards.

    An unmerged LoRA layer runs its base matmul plus two small ones and PEFT's dispatch: 1.17-1.29x the time of a
    plain forward (RESULTS section 2). Evaluations and the LP-FT feature pass only run forward, so they run merged,
    as the saved classifier does under ``pipeline``. Unmerging alone would leave float rounding in the frozen
    weights, drifting with every evaluation, so the base weights are copied back from a saved copy.
    """
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]
    saved = [{k: v.detach().clone() for k, v in m.get_base_layer().named_parameters()} for m in layers]
    with torch.no_grad():
        for layer in layers:
            layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, params in zip(layers, saved):
                layer.unmerge()
                for name, param in layer.get_base_layer().named_parameters():
                    param.copy_(params[name])


def forward_kwargs(model: nn.Module, image_size: int) -> dict[str, Any]:
    """Extra forward arguments for inputs of ``image_size``: position embedding interpolation when it is not the
    checkpoint's size (DINOv2 always interpolates and takes no such argument)."""
    if image_size == native_image_size(model) or get_architecture(model).model_type == "dinov2":
        return {}
    return {"interpolate_pos_encoding": True}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant checkpointing: unlike the reentrant kind it backpropagates into LoRA weights even though the
    inputs of each checkpointed block (outputs of frozen embeddings) do not require gradients."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2 name; the old one is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
