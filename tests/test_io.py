"""Atomic file and folder writes: modes from the umask, the previous version intact after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from peft_vision_lora import io


def test_umask_is_read_without_changing_it(umask):
    assert io.umask() == umask
    assert io.file_mode() == 0o666 & ~umask and io.folder_mode() == 0o777 & ~umask
    assert os.umask(umask) == umask  # unchanged by reading it


def test_files_get_the_umask_mode(umask, tmp_path):
    io.write_text(tmp_path / "a.txt", "one")
    io.write_json(tmp_path / "b.json", {"x": 1})
    with io.atomic_path(tmp_path / "c.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, tmp)  # safetensors writes 0600 on its own
    assert (tmp_path / "a.txt").read_text() == "one" and (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}\n'
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == dict.fromkeys(
        ["a.txt", "b.json", "c.safetensors"], 0o666 & ~umask
    )


def test_folder_gets_umask_modes_and_replaces_the_old_one(assert_umask_modes, tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    with io.atomic_folder(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        save_file({"w": torch.zeros(2)}, tmp / "weights.safetensors")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "note.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing temporary left
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == ["sub", "sub/note.txt", "weights.safetensors"]
    assert_umask_modes(final)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_error_before_the_swap_leaves_the_previous_folder(tmp_path, monkeypatch, exchange):
    final = tmp_path / "out"
    with io.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")
    if not exchange:
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    with pytest.raises(RuntimeError, match="disk full"), io.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2 (partial)")
        raise RuntimeError("disk full")
    assert (final / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with io.atomic_folder(final) as tmp:  # and the next save replaces it, by either route
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_error_while_committing_leaves_the_previous_folder(tmp_path, monkeypatch):
    final = tmp_path / "out"
    with io.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v1")

    def fails(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "fsync_path", fails)  # the flush before the rename fails
    with pytest.raises(OSError, match="No space"), io.atomic_folder(final) as tmp:
        (tmp / "weights").write_text("v2")
    assert (final / "weights").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow  # a subprocess killed outright
@pytest.mark.parametrize("what", ["file", "folder"])
def test_kill_between_write_and_rename_leaves_the_previous_version(tmp_path, what):
    # A process killed outright (SIGKILL: no cleanup) after writing the new version, before renaming it into place.
    target = tmp_path / ("out.json" if what == "file" else "out")
    script = textwrap.dedent(
        f"""
        import importlib.util, os, signal
        from pathlib import Path

        spec = importlib.util.spec_from_file_location("io_alone", {io.__file__!r})  # stdlib only: starts fast
        io = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(io)

        target = Path({str(target)!r})
        def write(version):
            text = '{{"version": %d}}' % version
            if {what!r} == "file":
                io.write_text(target, text)
            else:
                with io.atomic_folder(target) as tmp:
                    (tmp / "state.json").write_text(text)
        write(1)
        kill = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        io.os.replace = io._exchange = kill  # dies at the rename (or the exchange) that would publish version 2
        write(2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = target if what == "file" else target / "state.json"
    assert state.read_text() == '{"version": 1}'
    (leftover,) = [p for p in tmp_path.iterdir() if p != target]  # version 2, complete, under a hidden name
    assert leftover.name.startswith(f".{target.name}.tmp-")
    assert (leftover if what == "file" else leftover / "state.json").read_text() == '{"version": 2}'


def test_files_move_into_a_shared_folder_one_by_one(umask, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.log").write_text("other writer's file")
    (out / "model.bin").write_text("old")
    with io.atomic_files(out) as staging:
        (staging / "model.bin").write_text("new")
        (staging / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "keep.log", "model.bin"]
    assert (out / "model.bin").read_text() == "new" and (out / "keep.log").read_text() == "other writer's file"
    assert (out / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("name", "is_path"),
    [
        ("google/vit-base-patch16-224", False),
        ("vit-base", False),
        ("/abs/folder", True),
        ("./folder", True),
        ("../folder", True),
        ("~/folder", True),
        ("a/b/c", True),
        ("folder\\sub", True),
    ],
)
def test_looks_like_path(name, is_path):
    assert io.looks_like_path(name) is is_path
