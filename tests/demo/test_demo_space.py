"""The Space of `push --space`: its app.py runs the demo locally against the folder; the push creates a Space."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client, handle_file
from helpers.training import free_port

from peft_vision_lora import hub
from peft_vision_lora.cli import main
from peft_vision_lora.demo import space


@pytest.mark.slow  # app.py serves from its own interpreter
def test_written_app_runs_the_demo_against_the_folder(tiny_adapters, tmp_path):
    out = space.write_space(tmp_path / "space", ["someone/colours-lora"], title="Colours", top_k=2)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "app.py", "requirements.txt"]
    assert "peft_vision_lora[demo]" in (out / "requirements.txt").read_text()
    card = (out / "README.md").read_text()
    assert "sdk: gradio" in card and "app_file: app.py" in card and "- someone/colours-lora" in card
    assert "MODELS = ['someone/colours-lora']" in (out / "app.py").read_text()

    port = free_port()
    env = {**os.environ, space.MODELS_ENV: str(tiny_adapters["colours"]), "GRADIO_SERVER_PORT": str(port)}
    env.pop("GRADIO_SERVER_NAME", None)  # the default: 127.0.0.1
    log = tmp_path / "app.log"
    with open(log, "wb") as out_file:  # a file, not a pipe: a full pipe would block the server
        server = subprocess.Popen(
            [sys.executable, "app.py"], cwd=out, env=env, stdout=out_file, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300  # importing torch, transformers and gradio is slow on a busy machine
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"app.py did not serve: {log.read_text()[-2000:]}") from error
                time.sleep(0.5)
        import PIL.Image

        PIL.Image.new("RGB", (40, 40), "blue").save(tmp_path / "blue.png")
        client = Client(url, verbose=False)
        labels, status = client.predict("colours", handle_file(tmp_path / "blue.png"), api_name="/classify")
        shown = [c["label"] for c in labels["confidences"]]
        assert len(shown) == 2 and set(shown) <= {"red", "green", "blue"}
        assert "Latency:" in status
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class RecordingHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records the repositories created and the files uploaded."""

    calls: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, **kwargs):
        RecordingHfApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        RecordingHfApi.calls.append(("upload_folder", repo_id, {"files": files, "repo_type": kwargs.get("repo_type")}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


def test_push_with_space_uploads_the_model_then_the_space(tiny_adapters, tmp_path, monkeypatch, capsys):
    RecordingHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(space, "HfApi", RecordingHfApi)
    folder = tiny_adapters["pets"]
    assert main(["push", str(folder), "someone/pets", "--space", "--space_dir", str(tmp_path / "space")]) == 0
    calls = RecordingHfApi.calls
    created = [(c[1], c[2].get("repo_type"), c[2].get("space_sdk")) for c in calls if c[0] == "create_repo"]
    assert created == [("someone/pets", "model", None), ("someone/pets-demo", "space", "gradio")]
    uploaded = [c for c in RecordingHfApi.calls if c[0] == "upload_folder"]
    space_files = {"files": ["README.md", "app.py", "requirements.txt"], "repo_type": "space"}
    assert uploaded[1][1:] == ("someone/pets-demo", space_files)
    captured = capsys.readouterr()
    assert "huggingface.co/someone/pets-demo/commit" in captured.out
    assert "local path" in captured.err  # the tiny adapter's backbone is a tmp folder a Space cannot load
    assert "MODELS = ['someone/pets']" in (tmp_path / "space" / "app.py").read_text()


def test_space_push_offline_keeps_the_files(tmp_path):
    class Offline(RecordingHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("no route to huggingface.co")

    out = space.write_space(tmp_path / "space", ["someone/pets"])
    with pytest.raises(hub.HubPushError, match="unreachable.*Its files are in"):
        space.push_space(out, "someone/pets-demo", api=Offline())
