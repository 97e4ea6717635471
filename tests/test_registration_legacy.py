"""LoRA ``target_modules`` written for transformers 4.x names, through plain ``peft.get_peft_model``."""

from __future__ import annotations

import logging

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.error import NoMatchingPeftModuleError
from transformers import AutoModelForImageClassification, BertConfig, BertModel

import peft_vision_lora  # noqa: F401  (the import is what registers the translation)
from peft_vision_lora.architectures import ARCHITECTURES, legacy_key, rename_legacy_key
from peft_vision_lora.testing import TINY_MODELS

LABELS = ["cat", "dog", "fox"]


def _adapted(model: PeftModel) -> list[str]:
    prefix = "base_model.model."
    return sorted(name[len(prefix) : -len(".lora_A")] for name, _ in model.named_modules() if name.endswith("lora_A"))


def _notebook_model(folder) -> torch.nn.Module:
    """The PEFT image-classification notebook's model: fresh head over the labels, mismatched sizes ignored."""
    return AutoModelForImageClassification.from_pretrained(
        folder,
        label2id={label: i for i, label in enumerate(LABELS)},
        id2label=dict(enumerate(LABELS)),
        ignore_mismatched_sizes=True,
    )


def test_notebook_targets_adapt_q_and_v_and_reload_with_stock_peft(tiny_models, tmp_path, pixel_values, caplog):
    config = LoraConfig(
        r=16,
        lora_alpha=16,
        target_modules=["query", "value"],
        lora_dropout=0.1,
        bias="none",
        modules_to_save=["classifier"],
        init_lora_weights=False,  # non-zero B, so a reload that drops the LoRA weights shows in the logits
    )
    with caplog.at_level(logging.INFO, logger="peft_vision_lora"):
        model = get_peft_model(_notebook_model(tiny_models["vit"]), config).eval()
    assert _adapted(model) == [f"vit.layers.{i}.attention.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert model.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    [line] = [r.getMessage() for r in caplog.records if "4.x names" in r.getMessage()]
    assert "['query', 'value']" in line and "q_proj, v_proj" in line and "4 modules" in line

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_notebook_model(tiny_models["vit"]), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected, found = model(pixel_values=pixel_values).logits, reloaded(pixel_values=pixel_values).logits
    assert (found - expected).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("targets", "adapted"),
    [
        (["query"], ["attention.q_proj"]),
        (["key"], ["attention.k_proj"]),
        (["value"], ["attention.v_proj"]),
        (["attention.output.dense"], ["attention.o_proj"]),
        (["intermediate.dense"], ["mlp.fc1"]),
        # On 4.x, the suffix ``output.dense`` matched the attention output and the MLP output alike.
        (["output.dense"], ["attention.o_proj", "mlp.fc2"]),
        (["query", "q_proj"], ["attention.q_proj"]),
    ],
)
def test_each_4x_name_adapts_its_5x_projection_in_every_layer(targets, adapted):
    model = get_peft_model(TINY_MODELS["vit"](), LoraConfig(r=2, target_modules=targets))
    assert _adapted(model) == sorted(f"vit.layers.{i}.{name}" for i in range(2) for name in adapted)


@pytest.mark.parametrize(
    "targets",
    [
        ["vit.encoder.layer.1.attention.attention.query", "vit.encoder.layer.1.attention.attention.value"],
        r".*encoder\.layer\.1\.attention\.attention\.(query|value)",
    ],
    ids=["full-paths", "regex"],
)
def test_4x_paths_and_regexes_keep_their_layer_selection(targets):
    model = get_peft_model(TINY_MODELS["vit"](), LoraConfig(r=2, target_modules=targets))
    expected = ["vit.layers.1.attention.q_proj", "vit.layers.1.attention.v_proj"]
    assert _adapted(model) == expected
    assert model.peft_config["default"].target_modules == set(expected)  # "q_proj" alone would adapt layer 0 too


def test_dinov2_4x_names_with_layers_to_transform():
    config = LoraConfig(r=2, target_modules=["query", "value"], layers_to_transform=[1])
    model = get_peft_model(TINY_MODELS["dinov2"](), config)
    assert _adapted(model) == ["dinov2.encoder.layer.1.attention.q_proj", "dinov2.encoder.layer.1.attention.v_proj"]


def test_current_names_and_other_models_are_left_alone(caplog):
    with caplog.at_level(logging.INFO, logger="peft_vision_lora"):
        vit = get_peft_model(TINY_MODELS["vit"](), LoraConfig(r=2, target_modules=["q_proj", "fc2"]))
        # BERT still calls its projections ``query``/``value``: not a vision family, so PEFT alone decides.
        bert_config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
        bert = get_peft_model(BertModel(bert_config), LoraConfig(r=2, target_modules=["query", "value", "nope"]))
    assert vit.peft_config["default"].target_modules == {"q_proj", "fc2"}
    assert bert.peft_config["default"].target_modules == {"query", "value", "nope"}
    assert _adapted(bert) == ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.self.value"]
    assert not [r for r in caplog.records if "4.x names" in r.getMessage()]


def test_unknown_names_stop_with_the_names_the_model_has():
    with pytest.raises(NoMatchingPeftModuleError) as mixed:
        get_peft_model(TINY_MODELS["vit"](), LoraConfig(r=2, target_modules=["query", "qkv", "v_proj"]))
    message = str(mixed.value)
    assert "['qkv'] not found" in message and "query, v_proj did match" in message
    assert "attention.q_proj" in message and "attention.attention.query" in message  # 5.x and 4.x names offered
    with pytest.raises(NoMatchingPeftModuleError, match=r"'blocks\\\\.\.\*' not found.*mlp\.fc1"):
        get_peft_model(TINY_MODELS["vit"](), LoraConfig(r=2, target_modules=r"blocks\..*"))
    with pytest.raises(NoMatchingPeftModuleError, match=r"\['query'\] not found.*self_attn\.q_proj"):
        get_peft_model(TINY_MODELS["clip-vision"](), LoraConfig(r=2, target_modules=["query"]))


@pytest.mark.parametrize("model_type", ["vit", "dinov2"])
def test_legacy_key_inverts_rename_legacy_key(model_type):
    arch = ARCHITECTURES[model_type]
    live = [name for name, _ in TINY_MODELS[model_type]().named_modules() if ".0." in name]
    old = {name: legacy_key(arch, name) for name in live}
    assert old[f"{model_type}.{'layers' if model_type == 'vit' else 'encoder.layer'}.0.attention.q_proj"] == (
        f"{model_type}.encoder.layer.0.attention.attention.query"
    )
    assert all(rename_legacy_key(arch, o) == name for name, o in old.items() if o)
