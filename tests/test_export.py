"""``peft-vision-lora export``: an ONNX classifier that onnxruntime runs like PyTorch, with its labels and processor."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline

import peft_vision_lora as pvl
from peft_vision_lora.cli import main

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

README = Path(__file__).resolve().parents[1] / "README.md"


def run_onnx(folder: Path, pixel_values: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixel_values": pixel_values})[0]


@pytest.fixture(scope="module")
def tiny_adapter(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = pvl.build_model(tiny_models["vit"], ["red", "green", "blue"], init_lora_weights=False)
    return pvl.save_pretrained(model, tmp_path_factory.mktemp("export") / "colours")


def test_export_of_an_adapter_folder_runs_in_onnxruntime_like_the_merged_model(tiny_adapter, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export", str(tiny_adapter), str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["onnx"] == str(out / "model.onnx") and 0 <= printed["max_abs_diff"] <= 1e-4
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.onnx", "preprocessor_config.json"]

    graph = onnx.load(out / "model.onnx")
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_axis = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic: any batch size
    assert AutoConfig.from_pretrained(out).id2label == {0: "red", 1: "green", 2: "blue"}

    merged = pvl.load_model(tiny_adapter, merge=True)
    for batch in (1, 5):
        pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = merged(pixel_values=pixels).logits.numpy()
        assert np.abs(run_onnx(out, pixels.numpy()) - expected).max() <= 1e-4


def _corrupt_weights(merged: Path) -> None:
    weights = merged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])


def _pickle_only(merged: Path) -> None:
    (merged / "model.safetensors").rename(merged / "pytorch_model.bin")


def _bare_backbone(merged: Path, tiny_models: dict[str, Path]) -> None:
    shutil.rmtree(merged)
    shutil.copytree(tiny_models["vit-backbone"], merged)


def _broken_config(merged: Path) -> None:
    (merged / "config.json").write_text('{"model_type": "vit", ')


def _empty(merged: Path) -> None:
    shutil.rmtree(merged)
    merged.mkdir()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (None, "does not exist"),
        (_empty, "is not a model folder"),
        (_broken_config, "config.json is not readable JSON"),
        (_corrupt_weights, "could not be loaded"),
        (_pickle_only, "pytorch_model.bin is a pickle file"),
        (_bare_backbone, "lacks weights of its classifier"),
    ],
    ids=["missing", "empty", "broken-config", "truncated-weights", "pickle-only", "bare-backbone"],
)
def test_a_folder_that_cannot_be_exported_is_named(tiny_adapter, tiny_models, tmp_path, capsys, damage, reason):
    merged = tmp_path / "merged"
    if damage is None:
        merged = tmp_path / "no-such-folder"
    else:
        pvl.merge_adapter(tiny_adapter, merged)
        damage(*((merged, tiny_models) if damage is _bare_backbone else (merged,)))
    assert main(["export", str(merged), str(tmp_path / "onnx")]) == 1
    error = capsys.readouterr().err
    assert str(merged) in error and reason in error, error
    assert not (tmp_path / "onnx").exists()


def test_an_adapter_whose_backbone_is_gone_is_refused_with_the_reason(tiny_models, tmp_path, capsys):
    base = shutil.copytree(tiny_models["vit"], tmp_path / "base")
    adapter = pvl.save_pretrained(pvl.build_model(base, ["a", "b"]), tmp_path / "adapter")
    shutil.rmtree(base)
    assert main(["export", str(adapter), str(tmp_path / "onnx")]) == 1
    error = capsys.readouterr().err
    assert f"Adapter folder {adapter} cannot be merged" in error and str(base) in error, error


def test_export_never_replaces_its_source_folder(tiny_adapter, capsys):
    assert main(["export", str(tiny_adapter), str(tiny_adapter)]) == 1
    assert "its own source folder" in capsys.readouterr().err
    assert (tiny_adapter / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------------------- the real ViT-S/14 on flowers photos


@pytest.fixture(scope="module")
def real_export(shared_vit: Path, flowers12: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A LoRA adapter (random, non-zero update) on the ViT-S/14, merged, then exported: (merged, onnx) folders."""
    root = tmp_path_factory.mktemp("real-export")
    labels = sorted(p.name for p in (flowers12 / "train").iterdir())
    torch.manual_seed(0)
    model = pvl.build_model(shared_vit, labels, normalization="imagenet", image_size=112, init_lora_weights=False)
    adapter = pvl.save_pretrained(model, root / "adapter")
    merged = pvl.merge_adapter(adapter, root / "merged")
    pvl.export_onnx(merged, root / "onnx")
    return merged, root / "onnx"


def flower_photos(flowers12: Path, count: int) -> list[Path]:
    return [sorted((flowers12 / "test" / name).glob("*.jpg"))[0] for name in ("sunflower", "daisy", "iris")][:count]


def test_real_vit_matches_pytorch_within_1e4_on_flower_photos(real_export, flowers12):
    merged, out = real_export
    model = AutoModelForImageClassification.from_pretrained(merged).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    photos = [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in flower_photos(flowers12, 3)]
    for batch in (photos[:1], photos):
        pixels = processor(batch, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits.numpy()
        diff = np.abs(run_onnx(out, pixels.numpy()) - expected).max()
        print(f"batch {len(batch)}: max |logit diff| {diff:.2e}")
        assert diff <= 1e-4


def test_readme_code_gives_the_pipelines_top_k(real_export, flowers12):
    merged, out = real_export
    code = next(
        block
        for block in re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
        if "ort.InferenceSession" in block
    )
    paths = [str(p) for p in flower_photos(flowers12, 2)]
    code = code.replace('"runs/flowers12-onnx"', repr(str(out))).replace('["sunflower.jpg", "daisy.jpg"]', repr(paths))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    expected = pipeline("image-classification", model=str(merged))(paths, top_k=5)
    for got, want in zip(namespace["top_k"], expected, strict=True):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert np.allclose([p["score"] for p in got], [p["score"] for p in want], atol=1e-5)
