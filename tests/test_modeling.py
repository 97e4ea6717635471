import json

import numpy as np
import pytest
import torch
import yaml
from helpers.adapters import as_transformers4_adapter
from PIL import Image
from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification, pipeline

import peft_vision_lora as pvl
from peft_vision_lora.architectures import get_architecture
from peft_vision_lora.testing import TINY_MODELS, make_tiny

LABELS = ["cat", "dog", "fox"]


def _logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


@pytest.fixture
def trained(tiny_models, tmp_path):
    """A saved ViT adapter with non-zero LoRA weights and head, as after training."""
    model = pvl.build_model(tiny_models["vit"], LABELS, init_lora_weights=False)
    folder = pvl.save_pretrained(
        model, tmp_path / "adapter", metrics={"eval_top1": 0.9}, command="peft-vision-lora train"
    )
    return model.eval(), folder


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_build_model_from_every_family_and_class(tiny_models, name, pixel_values, caplog):
    model = pvl.build_model(tiny_models[name], LABELS)
    assert "Backbone weights not found" not in caplog.text
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
    assert model.get_base_model().config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert _logits(model, pixel_values).shape == (2, 3)
    assert not any("text_model" in n for n, _ in model.named_modules())


def test_build_model_from_instance_matches_folder(tiny_models, pixel_values):
    torch.manual_seed(0)
    from_folder = pvl.build_model(tiny_models["dinov2-backbone"], LABELS, init_lora_weights=False)
    instance = AutoModelForImageClassification.from_pretrained(tiny_models["dinov2-backbone"])
    torch.manual_seed(0)
    from_instance = pvl.build_model(instance, LABELS, init_lora_weights=False)
    assert torch.equal(_logits(from_folder, pixel_values), _logits(from_instance, pixel_values))


def test_lora_options_pass_through(tiny_models):
    model = pvl.build_model(tiny_models["vit"], LABELS, preset="qv", r=4, lora_alpha=8, use_dora=True, use_rslora=True)
    config = model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.use_dora, config.use_rslora) == (4, 8, True, True)
    assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    assert len(config.target_modules) == 4


def test_vit_b16_trainable_parameters():
    # ViT-B/16 geometry (the transformers default config), qkv, r=8: 12 layers x 3 x r x (768 + 768) + head.
    model = pvl.build_model(ViTForImageClassification(ViTConfig()), [str(i) for i in range(100)], r=8)
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 12 * 3 * 8 * (768 + 768) + (768 * 100 + 100) == 519_268
    assert trainable / total < 0.01


def test_saved_folder_contents(trained):
    model, folder = trained
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "README.md",
    }
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert config["backbone_config"]["model_type"] == "vit"
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "peft" and metadata["pipeline_tag"] == "image-classification"
    assert metadata["base_model"] == model.peft_config["default"].base_model_name_or_path
    assert "| eval_top1 | 0.9000 |" in card and "peft-vision-lora train" in card
    assert not list(folder.parent.glob(".adapter*")), "temporary folders left behind"


def test_save_replaces_atomically(trained, monkeypatch):
    model, folder = trained
    before = (folder / "adapter_model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("peft_vision_lora.adapters.write_model_card", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pvl.save_pretrained(model, folder)
    assert (folder / "adapter_model.safetensors").read_bytes() == before
    assert not list(folder.parent.glob(".adapter*"))


@pytest.mark.parametrize("name", ["vit", "dinov2", "clip", "clip-vision"])
def test_four_loaders_give_identical_logits(tiny_models, tmp_path, pixel_values, name):
    from peft import PeftModel

    model = pvl.build_model(tiny_models[name], LABELS, init_lora_weights=False).eval()
    folder = pvl.save_pretrained(model, tmp_path / "adapter")
    reference = _logits(model, pixel_values)

    config = model.get_base_model().config
    cls = type(model.get_base_model())
    # A bare CLIPVisionModel checkpoint needs its keys moved under ``vision_model.`` (stock transformers option).
    key_mapping = dict(get_architecture("clip_vision_model").checkpoint_key_mapping) if name == "clip-vision" else None
    base = cls.from_pretrained(tiny_models[name], config=config, ignore_mismatched_sizes=True, key_mapping=key_mapping)
    stock_peft = PeftModel.from_pretrained(base, folder).eval()
    auto = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(auto) is cls and not any("lora_" in n for n, _ in auto.named_parameters())  # merged for inference
    ours = pvl.load_model(folder)
    for loaded in (stock_peft, auto, ours):
        assert (_logits(loaded, pixel_values) - reference).abs().max() <= 1e-5

    classify = pipeline("image-classification", model=str(folder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    expected = _logits(ours, classify.image_processor(image, return_tensors="pt")["pixel_values"]).softmax(-1)[0]
    result = classify(image, top_k=3)
    assert [r["label"] for r in result] == [LABELS[i] for i in expected.argsort(descending=True)]
    assert result[0]["score"] == pytest.approx(expected.max().item(), abs=1e-5)


def test_merge_adapter_is_plain_transformers(trained, tmp_path, pixel_values):
    model, folder = trained
    merged_dir = pvl.merge_adapter(folder, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "preprocessor_config.json").is_file()
    merged = AutoModelForImageClassification.from_pretrained(merged_dir).eval()
    assert type(merged) is ViTForImageClassification
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert merged.config.id2label == {0: "cat", 1: "dog", 2: "fox"}
    assert (_logits(merged, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-4
    in_memory = pvl.load_model(folder, merge=True)
    assert (_logits(in_memory, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-4


def test_loads_adapter_saved_under_transformers_4_names(tiny_models, tmp_path, pixel_values):
    from peft import PeftModel

    model = pvl.build_model(tiny_models["vit"], LABELS, preset="qv", init_lora_weights=False).eval()
    folder = pvl.save_pretrained(model, tmp_path / "current")
    keys = as_transformers4_adapter(folder, tmp_path / "legacy")
    assert "base_model.model.vit.encoder.layer.0.attention.attention.query.lora_A.weight" in keys

    base = ViTForImageClassification.from_pretrained(
        tiny_models["vit"], config=model.get_base_model().config, ignore_mismatched_sizes=True
    )
    # Stock PEFT alone refuses the old names; the package's registration translates targets and weights alike.
    stock = PeftModel.from_pretrained(base, tmp_path / "legacy").eval()
    assert stock.peft_config["default"].target_modules == {"q_proj", "v_proj"}
    assert (_logits(stock, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-6
    legacy = pvl.load_model(tmp_path / "legacy")
    assert (_logits(legacy, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-6


def test_loads_adapter_saved_by_stock_peft(tiny_models, tmp_path, pixel_values):
    # PEFT's own image-classification recipe: no config.json, no processor, suffix targets, head in modules_to_save.
    from peft import LoraConfig, get_peft_model

    base = ViTForImageClassification.from_pretrained(tiny_models["vit"], num_labels=4, ignore_mismatched_sizes=True)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"], init_lora_weights=False
    )
    model = get_peft_model(base, config).eval()
    model.save_pretrained(tmp_path / "stock")
    loaded = pvl.load_model(tmp_path / "stock")
    assert (_logits(loaded, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-6
    assert loaded.get_base_model().config.id2label[3] == "LABEL_3"
    resaved = pvl.save_pretrained(loaded, tmp_path / "ours")
    assert (resaved / "config.json").is_file() and (resaved / "preprocessor_config.json").is_file()


# ------------------------------------------------------------------------------------------------------------- errors


def test_error_base_path_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        pvl.build_model(tmp_path / "does-not-exist", LABELS)


def test_error_unsupported_architecture(tmp_path):
    from transformers import ConvNextConfig, ConvNextModel

    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])).save_pretrained(tmp_path / "cnx")
    with pytest.raises(ValueError, match="Unsupported architecture 'convnext'.*supports model_type clip"):
        pvl.build_model(tmp_path / "cnx", LABELS)


@pytest.mark.parametrize("labels, message", [(["a"], "at least 2"), (["a", "b", "a"], "duplicated: \\['a'\\]")])
def test_error_bad_labels(tiny_models, labels, message):
    with pytest.raises(ValueError, match=message):
        pvl.build_model(tiny_models["vit"], labels)


def test_error_labels_do_not_match_head(trained):
    _, folder = trained
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "cat", "1": "dog"}
    config["label2id"] = {"cat": 0, "dog": 1}
    config["backbone_config"]["id2label"] = config["id2label"]
    config["backbone_config"]["label2id"] = config["label2id"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lists 2 labels but the head .* has 3 outputs"):
        pvl.load_model(folder)


def test_error_pickle_only_adapter(trained):
    _, folder = trained
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.bin is a pickle file"):
        pvl.load_model(folder)


def test_error_adapter_for_another_architecture(trained, tiny_models):
    _, folder = trained
    with pytest.raises(ValueError, match="trained on a vit backbone .* is a dinov2"):
        pvl.load_model(folder, base_model=tiny_models["dinov2"])


def test_error_adapter_for_other_geometry(trained, tmp_path):
    _, folder = trained
    torch.manual_seed(0)
    other = ViTForImageClassification(
        ViTConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
    )
    other.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden_size=32.*hidden_size=48"):
        pvl.load_model(folder, base_model=tmp_path / "wide")


def test_error_not_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        pvl.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pvl.load_model(tmp_path / "nowhere")


def test_unrelated_base_is_found_through_other_tree(tmp_path, pixel_values):
    # The adapter records where its base lives; a moved base is passed explicitly.
    base = make_tiny("vit", tmp_path / "base")
    model = pvl.build_model(base, LABELS, init_lora_weights=False).eval()
    folder = pvl.save_pretrained(model, tmp_path / "adapter")
    base.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="base"):
        pvl.load_model(folder)
    loaded = pvl.load_model(folder, base_model=tmp_path / "moved")
    assert (_logits(loaded, pixel_values) - _logits(model, pixel_values)).abs().max() <= 1e-6
    assert get_architecture(loaded).model_type == "vit"


@pytest.mark.parametrize("name", ["vit", "clip-vision", "dinov2"])
def test_model_built_for_another_image_size_loads_everywhere_at_that_size(tiny_models, tmp_path, name):
    # Trained at 48 px on a 32 px checkpoint: every loader must rebuild the same 48 px model, pipelines included.
    model = pvl.build_model(tiny_models[name], LABELS, image_size=48, init_lora_weights=False).eval()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    reference = _logits(model, x)
    if name != "dinov2":  # equals interpolating the checkpoint's embeddings at every forward
        plain = pvl.build_model(tiny_models[name], LABELS, init_lora_weights=False).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if "position" not in k}, strict=False)
        with torch.no_grad():
            interpolated = plain(pixel_values=x, interpolate_pos_encoding=True).logits
        assert (interpolated - reference).abs().max() <= 1e-5
    folder = pvl.save_pretrained(model, tmp_path / "adapter")
    assert pvl.load_image_processor(folder).crop_size["height"] == 48
    for loaded in (pvl.load_model(folder), AutoModelForImageClassification.from_pretrained(folder).eval()):
        assert (_logits(loaded, x) - reference).abs().max() <= 1e-5
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 50, 3), dtype=np.uint8))
    assert len(pipeline("image-classification", model=str(folder))(image)) == 3


def test_build_classifier_is_the_plain_baseline(tiny_models, pixel_values):
    model = pvl.build_classifier(tiny_models["vit"], LABELS, image_size=48)
    assert type(model) is ViTForImageClassification and model.config.image_size == 48
    assert all(p.requires_grad for p in model.parameters())
    assert model.config.id2label[2] == "fox"


def test_saved_and_merged_folders_have_the_umask_modes(tiny_models, tmp_path, assert_umask_modes):
    # Like save_pretrained of transformers and PEFT: 0644 files in a 0755 folder under umask 0o022 (not the 0600
    # safetensors writes on its own, nor mkdtemp's 0700), 0640 / 0750 under 0o027.
    model = pvl.build_model(tiny_models["vit"], LABELS, init_lora_weights=False)
    folder = pvl.save_pretrained(model, tmp_path / "adapter")
    assert_umask_modes(folder)
    pvl.save_pretrained(model, folder)  # replacing an existing folder too
    assert_umask_modes(folder)
    assert_umask_modes(pvl.merge_adapter(folder, tmp_path / "merged"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]
