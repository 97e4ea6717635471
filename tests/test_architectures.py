import pytest
import torch
from transformers import BertConfig, BertModel

from peft_vision_lora import PRESETS, get_architecture, resolve_target_modules, supported_model_types
from peft_vision_lora.architectures import ARCHITECTURES, rename_legacy_key
from peft_vision_lora.testing import TINY_MODELS


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve_one_module_per_role_and_layer(name, preset):
    model = TINY_MODELS[name]()
    names = resolve_target_modules(model, preset)
    assert len(names) == 2 * len(PRESETS[preset])  # 2 layers
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)
    assert not any("text_model" in n for n in names)


def test_qkv_preset_names_on_transformers_5():
    names = resolve_target_modules(TINY_MODELS["vit"](), "qkv")
    assert names == [f"vit.layers.{i}.attention.{p}_proj" for i in range(2) for p in "qkv"]


class _Legacy4xViT(torch.nn.Module):
    """The module tree of a transformers 4.x ViTForImageClassification (names only)."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"model_type": "vit"})()
        layer = lambda: torch.nn.ModuleDict(  # noqa: E731
            {
                "attention": torch.nn.ModuleDict(
                    {
                        "attention": torch.nn.ModuleDict({k: torch.nn.Linear(4, 4) for k in ("query", "key", "value")}),
                        "output": torch.nn.ModuleDict({"dense": torch.nn.Linear(4, 4)}),
                    }
                ),
                "intermediate": torch.nn.ModuleDict({"dense": torch.nn.Linear(4, 8)}),
                "output": torch.nn.ModuleDict({"dense": torch.nn.Linear(8, 4)}),
            }
        )
        self.vit = torch.nn.ModuleDict(
            {"encoder": torch.nn.ModuleDict({"layer": torch.nn.ModuleList([layer(), layer()])})}
        )
        self.classifier = torch.nn.Linear(4, 2)


def test_presets_resolve_transformers_4_names():
    model = _Legacy4xViT()
    assert resolve_target_modules(model, "qv") == [
        f"vit.encoder.layer.{i}.attention.attention.{p}" for i in range(2) for p in ("query", "value")
    ]
    all_names = resolve_target_modules(model, "all")
    assert "vit.encoder.layer.0.attention.output.dense" in all_names  # o, not mistaken for fc2
    assert "vit.encoder.layer.0.output.dense" in all_names
    assert len(all_names) == 12


def test_legacy_rename_maps_4x_paths_to_live_5x_modules():
    arch = ARCHITECTURES["vit"]
    live = {n for n, _ in TINY_MODELS["vit"]().named_modules()}
    for old in resolve_target_modules(_Legacy4xViT(), "all"):
        assert rename_legacy_key(arch, old) in live


def test_unsupported_architecture_lists_supported_ones():
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="Unsupported architecture 'bert'.*clip.*dinov2.*vit"):
        get_architecture(bert)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'qk'"):
        resolve_target_modules(TINY_MODELS["vit"](), "qk")


def test_table_covers_all_promised_families():
    assert set(supported_model_types()) == {"vit", "dinov2", "clip", "clip_vision_model"}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_last_layers_keeps_only_the_top_layers(name):
    model = TINY_MODELS[name]()
    arch = get_architecture(model)
    names = resolve_target_modules(model, "qkv", last_layers=1)
    assert len(names) == 3 and {arch.layer_index(n) for n in names} == {1}
    assert resolve_target_modules(model, "qkv", last_layers=2) == resolve_target_modules(model, "qkv")
    with pytest.raises(ValueError, match=r"--lora_layers must be in 1\.\.2"):
        resolve_target_modules(model, "qkv", last_layers=3)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_embeddings_module_is_the_vision_one(name):
    from peft_vision_lora.architectures import embeddings_module

    model = TINY_MODELS[name]()
    found = embeddings_module(model)
    assert hasattr(found, "patch_embeddings") or hasattr(found, "patch_embedding")
