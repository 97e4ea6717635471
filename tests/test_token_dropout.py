"""Token dropout: fewer tokens in training only, a draw that does not depend on how the batch is split."""

from __future__ import annotations

import pytest
import torch

import peft_vision_lora as pvl
from peft_vision_lora.architectures import get_architecture
from peft_vision_lora.token_dropout import TokenDropout

IMAGE_MODELS = ["vit", "dinov2", "clip-vision"]


def _encoder_lengths(model: torch.nn.Module) -> list[int]:
    """Records the sequence length that reaches the first encoder layer at each forward."""
    arch = get_architecture(model)
    first = next(m for n, m in model.named_modules() if arch.layer_index(n + ".") == 0 and n.endswith(".0"))
    lengths: list[int] = []
    first.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    return lengths


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_training_forward_keeps_the_class_token_and_a_fraction_of_patches(name, tiny_models, pixel_values):
    model = pvl.build_model(tiny_models[name], ["a", "b"])
    lengths = _encoder_lengths(model)
    dropout = TokenDropout(model, 0.5, seed=1)
    model.train()
    model(pixel_values=pixel_values)
    model.eval()
    model(pixel_values=pixel_values)
    assert lengths == [1 + 8, 1 + 16]  # 32 px / patch 8 = 16 patches: half kept in training, all in eval
    dropout.remove()
    model.train()
    model(pixel_values=pixel_values)
    assert lengths[-1] == 1 + 16


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_eval_logits_are_the_same_with_and_without_token_dropout(name, tiny_models, pixel_values):
    model = pvl.build_model(tiny_models[name], ["a", "b"]).eval()
    before = model(pixel_values=pixel_values).logits
    TokenDropout(model, 0.25)
    assert torch.equal(model(pixel_values=pixel_values).logits, before)


def test_the_draw_is_keyed_by_batch_and_split_across_processes_like_the_batch(tiny_models):
    model = pvl.build_model(tiny_models["vit"], ["a", "b"]).train()
    dropout = TokenDropout(model, 0.5, seed=3)
    kept: list[torch.Tensor] = []  # a later hook sees the tokens the dropout hook kept
    pvl.architectures.embeddings_module(model).register_forward_hook(lambda m, a, out: kept.append(out))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dropout.set_batch(7)
    model(pixel_values=images)
    dropout.set_batch(7, slice(0, 2), 4)
    model(pixel_values=images[:2])
    dropout.set_batch(7, slice(2, 4), 4)
    model(pixel_values=images[2:])
    whole, first, second = kept
    assert torch.equal(torch.cat([first, second]), whole)  # two processes see exactly what one process sees
    dropout.set_batch(8)
    model(pixel_values=images)
    assert not torch.equal(kept[-1], whole)  # another batch, another draw


@pytest.mark.parametrize("keep", [0, -0.5, 1.5])
def test_keep_outside_the_range_names_the_flag(tiny_models, keep):
    model = pvl.build_model(tiny_models["vit"], ["a", "b"])
    with pytest.raises(ValueError, match=r"--token_keep must be in \(0, 1\]"):
        TokenDropout(model, keep)


def test_small_images_keep_at_least_min_tokens(tiny_models, pixel_values):
    model = pvl.build_model(tiny_models["vit"], ["a", "b"]).train()
    lengths = _encoder_lengths(model)
    dropout = TokenDropout(model, 0.25, min_tokens=6)
    assert [dropout.kept_tokens(n) for n in (4, 16, 64)] == [4, 6, 16]
    model(pixel_values=pixel_values)
    assert lengths == [1 + 6]
