"""ONNX export of a classifier: ``model.onnx`` (dynamic batch) beside its ``config.json`` (labels) and processor.

Uses ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``): Optimum's ONNX exporter
(``optimum-onnx``) requires transformers < 4.58, and torch's dynamo exporter needs ``onnxscript``, which the
``onnx`` extra does not pull. The exported graph is checked against PyTorch with onnxruntime before the folder is
written.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import snapshot_download
from transformers import AutoModelForImageClassification, PreTrainedModel
from transformers.image_processing_utils import BaseImageProcessor
from transformers.utils import logging as hf_logging

from .adapters import ADAPTER_CONFIG, PICKLE_WEIGHTS, load_model
from .io import atomic_folder, looks_like_path
from .processing import load_image_processor, native_image_size

ONNX_FILE = "model.onnx"
OPSET = 17
TOLERANCE = 1e-4  # max |logit difference| allowed between onnxruntime and PyTorch
CHECK_BATCH = 3  # the check runs a batch size other than the traced one (2): the batch axis must be dynamic
_PLAIN_PICKLES = ("pytorch_model.bin", "model.pt", "model.pth")


class ExportError(ValueError):
    """A folder that cannot be exported, or an export that does not reproduce PyTorch; the message names the folder."""


@dataclass
class ExportResult:
    """Where the export went and how closely onnxruntime matched PyTorch on the check batch."""

    folder: Path
    max_abs_diff: float
    labels: list[str]


def _local_folder(path_or_id: str | os.PathLike) -> Path:
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    if path.exists() or looks_like_path(os.fspath(path_or_id)):
        raise FileNotFoundError(f"Model folder {os.fspath(path_or_id)!r} does not exist or is not a folder.")
    return Path(snapshot_download(os.fspath(path_or_id), allow_patterns=["*.json", "*.safetensors", "*.md"]))


def _load_plain(folder: Path) -> PreTrainedModel:
    """A transformers classifier folder, loaded from safetensors only, with every weight (head included) present."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{folder} is not a model folder: it has neither config.json nor {ADAPTER_CONFIG}.")
    try:
        json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"{config_file} is not readable JSON ({error}).") from error
    if not any(folder.glob("*.safetensors")) and not (folder / "model.safetensors.index.json").is_file():
        pickles = [name for name in (*_PLAIN_PICKLES, *PICKLE_WEIGHTS) if (folder / name).is_file()]
        reason = f"{pickles[0]} is a pickle file, which is never loaded" if pickles else "no model.safetensors"
        raise ExportError(f"{folder} has no safetensors weights to export: {reason}.")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # missing weights are reported below, as an error naming the folder
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            folder, use_safetensors=True, output_loading_info=True
        )
    except Exception as error:  # transformers and safetensors report corrupt files with many exception types
        raise ExportError(f"{folder} could not be loaded as an image classifier: {error}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    if missing:
        raise ExportError(
            f"{folder} lacks weights of its classifier ({', '.join(missing[:5])}): a bare backbone or a corrupt "
            "checkpoint. Export a merged folder (peft-vision-lora merge) or an adapter folder."
        )
    return model


def load_for_export(path_or_id: str | os.PathLike) -> tuple[PreTrainedModel, BaseImageProcessor, Path]:
    """The fp32 eval-mode classifier of a merged/fine-tuned folder, or of an adapter folder merged in memory, with
    its processor and the local folder it came from."""
    folder = _local_folder(path_or_id)
    if (folder / ADAPTER_CONFIG).is_file():
        try:
            peft_model = load_model(folder)
        except (ValueError, OSError) as error:
            raise ExportError(f"Adapter folder {folder} cannot be merged for export: {error}") from error
        processor = peft_model.vision_lora_image_processor
        model = peft_model.merge_and_unload()
    else:
        model = _load_plain(folder)
        processor = load_image_processor(folder)
    return model.float().eval(), processor, folder


def _run_onnx(path: Path, pixel_values: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ImportError("Checking the export needs onnxruntime: pip install 'peft_vision_lora[onnx]'.") from error
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"pixel_values": pixel_values.numpy()})[0]


def export_onnx(
    path_or_id: str | os.PathLike, out_dir: str | os.PathLike, *, opset: int = OPSET, tolerance: float = TOLERANCE
) -> ExportResult:
    """Write ``out_dir`` with ``model.onnx`` (input ``pixel_values``, output ``logits``, dynamic batch axis),
    ``config.json`` (labels) and ``preprocessor_config.json``.

    ``path_or_id`` is a merged or fully fine-tuned classifier folder, or an adapter folder (merged first), local or
    a Hub id. The height and width are fixed to the model's input size, which the processor produces. Before
    anything is written, onnxruntime runs a batch of 3 and must match PyTorch within ``tolerance``.
    """
    model, processor, folder = load_for_export(path_or_id)
    out_dir = Path(out_dir)
    if out_dir.resolve() == folder.resolve():
        raise ExportError(f"The export would replace its own source folder {folder}; choose another output folder.")
    size = native_image_size(model.config)
    generator = torch.Generator().manual_seed(0)
    traced, check = (torch.randn(n, 3, size, size, generator=generator) for n in (2, CHECK_BATCH))
    with atomic_folder(out_dir) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The tracer warns that the models' shape checks become constants: they are, for the fixed input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: see the module docstring
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")  # attributes it probes
        torch.onnx.export(
            model,
            (traced,),
            str(tmp / ONNX_FILE),
            dynamo=False,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
        diff = float(np.abs(_run_onnx(tmp / ONNX_FILE, check) - model(pixel_values=check).logits.numpy()).max())
        if not diff <= tolerance:
            raise ExportError(
                f"The ONNX export of {folder} differs from PyTorch by {diff:.2e} (allowed {tolerance:.0e}); "
                "nothing was written."
            )
        model.config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return ExportResult(out_dir, diff, labels)
