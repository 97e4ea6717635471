import subprocess
import sys

import pytest
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

import peft_vision_lora  # noqa: F401  (registers the families with PEFT)
from peft_vision_lora.testing import TINY_MODELS


def _adapted(model) -> list[str]:
    return sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_plain_get_peft_model_adapts_qkv_of_every_layer(name):
    model = TINY_MODELS[name]()
    head = ["classifier"] if hasattr(model, "classifier") else None
    peft_model = get_peft_model(model, LoraConfig(r=8, modules_to_save=head))
    adapted = _adapted(peft_model)
    assert len(adapted) == 2 * 3
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "k_proj", "v_proj"}
    assert not any("text_model" in n for n in adapted)  # a full CLIPModel keeps its text tower untouched


@pytest.mark.slow  # a fresh interpreter without the registration
def test_stock_peft_needs_the_registration():
    # Without the import, stock PEFT has no mapping for ViT: this is what the registration fixes.
    code = (
        "from transformers import ViTConfig, ViTForImageClassification\n"
        "from peft import LoraConfig, get_peft_model\n"
        "m = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,"
        " intermediate_size=64, image_size=32, patch_size=8))\n"
        "get_peft_model(m, LoraConfig(r=8))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "target_modules" in result.stderr


def test_pipeline_alias_is_registered():
    from transformers.pipelines import PIPELINE_REGISTRY

    assert "vision-efficient-tuning" in PIPELINE_REGISTRY.get_supported_tasks()
