"""Publishing: the adapter folder goes to the Hub in one commit; offline, a clear error and an untouched folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.state import AcceleratorState
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

from peft_vision_lora import hub
from peft_vision_lora.cli import main
from peft_vision_lora.hub import HubPushError, push_to_hub
from peft_vision_lora.training import parse_args, train


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the calls, uploads what ``upload_folder`` would upload."""

    def __init__(self, token: str | None = None):
        self.calls: list[tuple[str, dict]] = []
        RecordingHfApi.last = self

    def create_repo(self, repo_id: str, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, folder_path: str, repo_id: str, commit_message: str, ignore_patterns=None, **kwargs):
        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        uploaded = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        self.calls.append(("upload_folder", {"repo_id": repo_id, "files": uploaded, "commit_message": commit_message}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def pushed(tiny_vit, tiny_data, tmp_path_factory) -> tuple[Path, list]:
    """A finished run, pushed at the end of training (--push_to_hub) through the recording stand-in: its folder and
    the calls of that push. Trained once for the module; the tests only read the folder."""
    out = tmp_path_factory.mktemp("hub") / "colours-lora"
    flags = [
        "--model",
        str(tiny_vit),
        "--dataset",
        str(tiny_data),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--disable_tqdm",
        "--push_to_hub",
        "--hub_model_id",
        "user/colours-lora",
        "--hub_private",
    ]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
        try:
            train(*parse_args(flags))
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
    return out, RecordingHfApi.last.calls


@pytest.fixture
def trained(pushed) -> Path:
    return pushed[0]


def test_push_to_hub_at_the_end_of_training(pushed, tiny_data):
    trained, calls = pushed
    create, upload = calls
    assert create == (
        "create_repo",
        {"repo_id": "user/colours-lora", "private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert upload[1]["repo_id"] == "user/colours-lora"
    assert upload[1]["commit_message"] == f"Train lora on {tiny_data} with peft_vision_lora"
    assert set(upload[1]["files"]) == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "metrics.json",
        "train_log.jsonl",
        "training_curves.png",
        "confusion_matrix.png",
    }
    assert (trained / "checkpoints").is_dir()  # kept locally, never uploaded


def test_cli_push(trained, monkeypatch, capsys):
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    assert main(["push", str(trained), "user/other", "--commit_message", "First version"]) == 0
    create, upload = RecordingHfApi.last.calls
    assert create[1]["private"] is False and upload[1]["commit_message"] == "First version"
    assert capsys.readouterr().out.strip() == "https://huggingface.co/user/other/commit/0123abc"


def test_unreachable_hub_gives_a_clear_error_and_keeps_the_folder(trained, monkeypatch, capsys):
    before = _digest(trained)
    offline = HfApi(endpoint="http://127.0.0.1:9", token="hf_test")  # nothing listens on the discard port
    with pytest.raises(HubPushError, match=r"Hub is unreachable .*folder is intact.*peft-vision-lora push"):
        push_to_hub(trained, "user/colours-lora", api=offline)
    monkeypatch.setattr(hub, "HfApi", lambda token=None: offline)
    assert main(["push", str(trained), "user/colours-lora"]) == 1
    assert "Could not push" in capsys.readouterr().err
    assert _digest(trained) == before


def test_push_needs_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        push_to_hub(tmp_path, "user/name", api=RecordingHfApi())
