"""Folders saved by stock PEFT (``adapter_config.json`` + ``adapter_model.safetensors`` only) through the stock
``AutoModelForImageClassification.from_pretrained`` and ``pipeline("image-classification")``."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from transformers import AutoModelForImageClassification, ViTForImageClassification, ViTImageProcessor, pipeline

import peft_vision_lora as pvl

ID2LABEL = {0: "cat", 1: "dog", 2: "fox", 3: "owl"}


def _stock_folder(base, out, *, head: bool = True) -> tuple[PeftModel, object]:
    """The PEFT notebook's save: a 4-class head (the base checkpoint's has 2) in modules_to_save, no config.json."""
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(base, num_labels=4, ignore_mismatched_sizes=True)
    config = LoraConfig(
        r=4,
        target_modules=["query", "value"],
        modules_to_save=["classifier"] if head else None,
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config).eval()
    peft_model.save_pretrained(out)
    assert {p.name for p in out.iterdir()} == {"README.md", "adapter_config.json", "adapter_model.safetensors"}
    return peft_model, out


@pytest.fixture(scope="module")
def base_with_processor(tiny_models, tmp_path_factory):
    """The tiny ViT with a preprocessor_config.json, as Hub checkpoints ship them."""
    base = tmp_path_factory.mktemp("base") / "vit"
    shutil.copytree(tiny_models["vit"], base)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(base)
    return base


def _image() -> Image.Image:
    return Image.new("RGB", (40, 36), (200, 60, 30))


def test_auto_model_reads_the_head_size_off_the_weights(tiny_models, tmp_path, pixel_values):
    trained, folder = _stock_folder(tiny_models["vit"], tmp_path / "stock")
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert type(loaded) is ViTForImageClassification and loaded.config.num_labels == 4
    assert loaded.config.id2label == {i: f"LABEL_{i}" for i in range(4)}
    with torch.no_grad():
        assert (loaded(pixel_values=pixel_values).logits - trained(pixel_values=pixel_values).logits).abs().max() < 1e-5
    named = AutoModelForImageClassification.from_pretrained(folder, id2label=ID2LABEL)
    assert named.config.id2label == ID2LABEL and named.config.label2id["owl"] == 3
    with pytest.raises(ValueError, match=r"id2label names 3 classes but the head saved in .*stock has 4 outputs"):
        AutoModelForImageClassification.from_pretrained(folder, id2label={0: "a", 1: "b", 2: "c"})


def test_pipeline_opens_a_stock_folder(base_with_processor, tmp_path):
    trained, folder = _stock_folder(base_with_processor, tmp_path / "stock")
    processor = ViTImageProcessor.from_pretrained(base_with_processor)
    with torch.no_grad():
        probabilities = trained(**processor(_image(), return_tensors="pt")).logits.softmax(-1)[0]
    expected = sorted(((p.item(), i) for i, p in enumerate(probabilities)), reverse=True)

    plain = pipeline("image-classification", model=str(folder))(_image(), top_k=4)
    assert [r["label"] for r in plain] == [f"LABEL_{i}" for _, i in expected]
    assert [r["score"] for r in plain] == pytest.approx([p for p, _ in expected], abs=1e-5)
    named = pipeline("image-classification", model=str(folder), model_kwargs={"id2label": ID2LABEL})(_image(), top_k=4)
    assert [r["label"] for r in named] == [ID2LABEL[i] for _, i in expected]


def test_pipeline_on_a_base_without_processor_says_what_to_pass(tiny_models, tmp_path, caplog):
    trained, folder = _stock_folder(tiny_models["vit"], tmp_path / "stock")
    with caplog.at_level(logging.WARNING, logger="peft_vision_lora"), pytest.raises(OSError, match="image processor"):
        pipeline("image-classification", model=str(folder))
    assert f"image_processor=peft_vision_lora.load_image_processor('{tiny_models['vit']}')" in caplog.text
    classify = pipeline(
        "image-classification",
        model=str(folder),
        image_processor=pvl.load_image_processor(tiny_models["vit"]),
        model_kwargs={"id2label": ID2LABEL},
    )
    assert {r["label"] for r in classify(_image(), top_k=4)} == set(ID2LABEL.values())


def test_stock_folders_without_a_head_stay_with_transformers(tiny_models, tmp_path, pixel_values):
    """No saved head: transformers' own PEFT integration loads it (adapter attached, base head), as before."""
    _, folder = _stock_folder(tiny_models["vit"], tmp_path / "stock", head=False)
    loaded = AutoModelForImageClassification.from_pretrained(folder)
    assert loaded.config.num_labels == 2 and list(loaded.peft_config) == ["default"]  # the adapter is attached
