"""What a run leaves on disk has the modes of the process umask, like any ``save_pretrained`` folder."""

from __future__ import annotations

from pathlib import Path

from peft_vision_lora.training import parse_args, train
from peft_vision_lora.training.checkpointing import list_checkpoints


def test_run_folder_and_checkpoints_have_the_umask_modes(tiny_vit, tiny_data, tmp_path, assert_umask_modes):
    out = tmp_path / "run"
    flags = ["--model", str(tiny_vit), "--dataset", str(tiny_data), "--output_dir", str(out), "--disable_tqdm"]
    train(*parse_args([*flags, "--max_steps", "4", "--per_device_train_batch_size", "8", "--save_steps", "2"]))
    assert list_checkpoints(out), "no checkpoint to check"
    assert {"adapter_model.safetensors", "metrics.json", "training_curves.png"} <= {p.name for p in out.iterdir()}
    assert (out / "checkpoints" / "best_model.safetensors").is_file()
    assert not [p for p in Path(out).rglob(".*")], "temporary files left behind"
    assert_umask_modes(out)  # every file, checkpoints included
