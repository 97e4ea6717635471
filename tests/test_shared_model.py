"""Core guarantees on the real pretrained ViT-S/14 in ../shared (skipped when absent)."""

import pytest
import torch
from helpers.adapters import as_transformers4_adapter
from peft import PeftModel
from transformers import AutoModelForImageClassification, ViTForImageClassification, pipeline

import peft_vision_lora as pvl

pytestmark = pytest.mark.shared
LABELS = ["bluebell", "buttercup", "daisy", "iris"]


@pytest.fixture(scope="module")
def adapter(shared_vit, tmp_path_factory):
    torch.manual_seed(0)
    model = pvl.build_model(shared_vit, LABELS, preset="qv", normalization="imagenet", init_lora_weights=False).eval()
    folder = pvl.save_pretrained(model, tmp_path_factory.mktemp("shared") / "adapter")
    return model, folder


@pytest.fixture(scope="module")
def batch(flowers12, adapter):
    from PIL import Image

    paths = (
        sorted((flowers12 / "test" / "daisy").glob("*.jpg"))[:2]
        + sorted((flowers12 / "test" / "iris").glob("*.jpg"))[:2]
    )
    processor = pvl.load_image_processor(adapter[1])
    return processor([Image.open(p) for p in paths], return_tensors="pt")["pixel_values"], paths


def _logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def test_trainable_parameters_of_vit_s(adapter):
    model, _ = adapter
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 12 * 2 * 8 * (384 + 384) + 384 * 4 + 4  # qv, r=8, plus the 4-class head
    assert total > 21_000_000


def test_stock_loaders_match(shared_vit, adapter, batch):
    model, folder = adapter
    pixel_values, paths = batch
    reference = _logits(model, pixel_values)
    base = ViTForImageClassification.from_pretrained(
        shared_vit, config=model.get_base_model().config, ignore_mismatched_sizes=True
    )
    for loaded in (
        PeftModel.from_pretrained(base, folder).eval(),
        AutoModelForImageClassification.from_pretrained(folder).eval(),
        pvl.load_model(folder),
    ):
        assert (_logits(loaded, pixel_values) - reference).abs().max() <= 1e-5
    results = pipeline("image-classification", model=str(folder))([str(p) for p in paths], top_k=1)
    assert [r[0]["label"] for r in results] == [LABELS[i] for i in reference.argmax(-1)]


def test_merge_parity(adapter, batch, tmp_path):
    model, folder = adapter
    merged = AutoModelForImageClassification.from_pretrained(pvl.merge_adapter(folder, tmp_path / "merged")).eval()
    diff = (_logits(merged, batch[0]) - _logits(model, batch[0])).abs().max()
    assert diff <= 1e-4


def test_transformers_4_adapter(adapter, batch, tmp_path):
    model, folder = adapter
    as_transformers4_adapter(folder, tmp_path / "legacy")
    legacy = pvl.load_model(tmp_path / "legacy")
    assert (_logits(legacy, batch[0]) - _logits(model, batch[0])).abs().max() <= 1e-5


def test_saved_processor_is_imagenet(adapter):
    processor = pvl.load_image_processor(adapter[1])
    assert processor.image_mean == pytest.approx([0.485, 0.456, 0.406])
