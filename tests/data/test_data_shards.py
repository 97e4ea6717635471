"""WebDataset tar shards: the `shard` command, brace patterns, streamed reading, node/worker splits, bad input."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from torch.utils.data import DataLoader

from peft_vision_lora.cli import main
from peft_vision_lora.data import load_image_dataset
from peft_vision_lora.data.sample_stream import SampleStream
from peft_vision_lora.data.shard_reader import (
    ShardError,
    expand_pattern,
    iter_shard,
    iter_tar_samples,
    looks_like_shards,
    read_label_file,
)
from peft_vision_lora.data.shard_writer import write_shards
from peft_vision_lora.data.stream_sources import hub_stream_source, read_shards_as_dataset, shard_source

CLASSES = ("ant", "bee", "cat")


def make_folder(root: Path, per_class: int = 6, size: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size + label, size, 3), dtype=np.uint8)
                PIL.Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png(value: int = 0) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (8, 8), (value, value, value)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("folder") / "animals")


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    assert main(["shard", str(folder), str(out), "--shard_size", "4"]) == 0
    return out


def test_brace_patterns():
    assert expand_pattern("d/train-{000000..000002}.tar") == [f"d/train-00000{i}.tar" for i in range(3)]
    assert expand_pattern("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_pattern("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_pattern("x.tar::y-{1..2}.tar") == ["x.tar", "y-1.tar", "y-2.tar"]
    assert expand_pattern("plain.tar") == ["plain.tar"]
    for bad in ("a-{1..2.tar", "a-{{1..2}}.tar", "a-{5..1}.tar", "a-}.tar"):
        with pytest.raises(ValueError, match="shard pattern"):
            expand_pattern(bad)
    assert looks_like_shards("d/train-{000000..000127}.tar") and looks_like_shards("pipe:cat x.tar")
    assert not looks_like_shards("some/folder") and not looks_like_shards("user/dataset")


def test_shard_command_writes_the_same_images_and_labels(folder, shards, capsys):
    manifest = json.loads((shards / "shards.json").read_text())
    assert manifest["splits"]["train"] == {"pattern": "train-{000000..000004}.tar", "shards": 5, "samples": 18}
    assert manifest["splits"]["test"]["samples"] == 6
    assert (shards / "labels.txt").read_text().split() == list(CLASSES)
    source = load_image_dataset(folder).cast_column("image", Image(decode=False))
    expected = Counter((Path(v["path"]).read_bytes(), label) for v, label in zip(*source["train"][:].values()))
    source_info = shard_source(str(shards))
    assert source_info.names == list(CLASSES) and source_info.num_samples == 18
    samples = [s for url in source_info.units for s in iter_shard(url, CLASSES)]
    assert Counter((s.image, s.label) for s in samples) == expected  # PNG bytes copied unchanged
    assert [s.key for s in samples] == [f"{i:08d}" for i in range(18)]
    # The evaluation split of the folder is read whole, as a Dataset of the same classes.
    assert len(source_info.eval_data["test"]) == 6
    assert source_info.eval_data["test"].features["label"].names == list(CLASSES)


def test_shards_are_byte_identical_when_written_again(folder, shards, tmp_path):
    again = tmp_path / "again"
    write_shards(folder, again, shard_size=4)
    for path in sorted(shards.glob("*.tar")):
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    # The order is seeded and mixes the classes (a class-sorted folder would give class-sorted shards).
    first = [s.label for s in iter_shard(str(shards / "train-000000.tar"), CLASSES)]
    assert len(set(first)) > 1


def test_max_side_reencodes_large_images_as_jpeg(tmp_path):
    root = tmp_path / "big" / "train" / "x"
    root.mkdir(parents=True)
    PIL.Image.new("RGB", (64, 32), (10, 200, 30)).save(root / "wide.png")
    PIL.Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "small.jpg", quality=95)
    write_shards(tmp_path / "big", tmp_path / "out", max_side=32, quality=80)
    (sample_a, sample_b) = iter_shard(str(tmp_path / "out" / "train-000000.tar"), ["x"])
    by_field = {s.field: s for s in (sample_a, sample_b)}
    assert set(by_field) == {"jpg"}  # the small JPEG is kept as is, the big PNG is shrunk to JPEG
    sizes = sorted(PIL.Image.open(io.BytesIO(s.image)).size for s in (sample_a, sample_b))
    assert sizes == [(16, 16), (32, 16)]


def test_stream_split_by_node_and_worker_is_disjoint_and_complete(shards):
    source = shard_source(str(shards))

    def keys(world: int, workers: int, epoch_seed: int = 0) -> list[list[str]]:
        out = []
        for rank in range(world):
            stream = SampleStream(source.units, source.reader, seed=epoch_seed, shuffle_buffer=3, rank=rank,
                                  world_size=world, epochs=1)  # fmt: skip
            loader = DataLoader(stream, batch_size=None, num_workers=workers)
            out.append([sample["image"]["path"] for sample in loader])
        return out

    everything = {f"{u}/{i:08d}.png" for u in source.units for i in range(18) if u.endswith(f"{i // 4:06d}.tar")}
    # 5 shards over 2 x 2 readers: whole shards per reader. 5 shards over 3 x 2: every reader reads all, keeps 1/6.
    for world, workers in ((1, 0), (2, 2), (3, 2)):
        parts = keys(world, workers)
        flat = [k for part in parts for k in part]
        assert len(flat) == len(set(flat)) == 18 and set(flat) == everything, (world, workers)
    # Deterministic for a seed, another order for another seed.
    assert keys(2, 2) == keys(2, 2) and keys(2, 2) != keys(2, 2, epoch_seed=1)


def test_stream_resumes_at_the_sample_after_the_last_one_consumed(shards):
    source = shard_source(str(shards))
    full = SampleStream(source.units, source.reader, seed=3, shuffle_buffer=5, epochs=3)
    order = [(s["image"]["path"], s["index"], s["stream"][:3]) for s in full]
    assert len(order) == 54 and len({i for _, i, _ in order}) == 54  # a new augmentation key every epoch
    worker, epoch, offset = order[25][2]  # mid-epoch 1
    resumed = SampleStream(source.units, source.reader, seed=3, shuffle_buffer=5, epochs=3, start={0: (epoch, offset)})
    assert [(s["image"]["path"], s["index"], s["stream"][:3]) for s in resumed] == order[26:]


def test_bad_input_is_skipped_counted_and_named(tmp_path, caplog):
    good = png()
    first = {"k1.png": good, "k1.cls": b"0", "nolabel.png": good, "k2.png": good, "k2.json": b'{"label": "bee"}'}
    write_tar(tmp_path / "a-0.tar", first | {"far.png": good, "far.cls": b"7"})
    members = {f"t{i}.{ext}": (good if ext == "png" else b"1") for i in range(4) for ext in ("png", "cls")}
    data = write_tar(tmp_path / "whole.tar", members).read_bytes()
    (tmp_path / "a-1.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    (tmp_path / "labels.txt").write_text("ant\nbee\ncat\n")
    # a-2.tar is missing.
    source = shard_source(str(tmp_path / "a-{0..2}.tar"))
    items = [item for url in source.units for item in source.reader(url)]
    errors = [item for item in items if isinstance(item, ShardError)]
    good_keys = [item.key for item in items if not isinstance(item, ShardError)]
    assert good_keys[:2] == ["k1", "k2"] and set(good_keys[2:]) <= {"t0", "t1", "t2"}
    reasons = {(Path(e.shard).name, e.key): e.reason for e in errors}
    assert "no label" in reasons[("a-0.tar", "nolabel")]
    assert "label 7 is not one of the 3 classes" in reasons[("a-0.tar", "far")]
    assert "truncated or corrupt tar after sample" in reasons[("a-1.tar", None)]
    assert reasons[("a-2.tar", None)] == "shard not found"
    # Training streams skip them, count them and name them in a warning; reading goes on.
    stream = SampleStream(source.units, source.reader, shuffle_buffer=0, epochs=1)
    with caplog.at_level(logging.WARNING):
        samples = list(stream)
    assert len(samples) == len(good_keys) and "(4 so far in this reader)" in caplog.text
    assert max(sample["stream"][3] for sample in samples) <= 4  # each sample carries the count met before it
    assert "nolabel" in caplog.text and "a-2.tar: shard not found" in caplog.text
    # --on_bad_image error: the first bad sample stops, naming shard and key.
    with pytest.raises(ShardError, match=r"a-0.tar, sample 'nolabel': no label"):
        list(iter_shard(str(tmp_path / "a-0.tar"), ["ant", "bee", "cat"], on_bad="error"))
    # Evaluation shards are read whole, minus the bad input.
    assert len(read_shards_as_dataset(source.units, ["ant", "bee", "cat"])) == len(good_keys)


def test_a_reader_with_no_readable_sample_stops_with_the_shards_named(tmp_path):
    (tmp_path / "labels.txt").write_text("a\n")
    source = shard_source(str(tmp_path / "gone-{0..1}.tar"))
    with pytest.raises(ShardError, match="gone-.*no readable sample for process 0 worker 0"):
        next(iter(SampleStream(source.units, source.reader)))


def test_tar_members_are_read_never_extracted(tmp_path, monkeypatch):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in {"../../escape.png": png(), "../../escape.cls": b"0"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    monkeypatch.chdir(tmp_path)
    assert [key for key, _ in iter_tar_samples(str(path))] == ["../../escape"]  # the link is skipped
    assert not (tmp_path.parent.parent / "escape.png").exists()


def test_label_files(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"b": 1, "a": 0}))
    assert read_label_file(tmp_path / "classes.json") == ["a", "b"]
    (tmp_path / "list.json").write_text(json.dumps(["x", "y"]))
    assert read_label_file(tmp_path / "list.json") == ["x", "y"]
    (tmp_path / "gap.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ValueError, match="indices must be 0..1"):
        read_label_file(tmp_path / "gap.json")
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        read_label_file(tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError, match="--label_file"):
        shard_source(str(tmp_path / "elsewhere" / "nothing-{0..1}.tar"))


def test_pipe_shards(shards):
    urls = [f"pipe:cat {shards}/train-00000{i}.tar" for i in range(5)]
    assert len([s for url in urls for s in iter_shard(url, CLASSES)]) == 18
    with pytest.raises(ShardError, match="exited with status"):
        list(iter_shard("pipe:exit 3", CLASSES, on_bad="error"))


def test_streaming_parquet_dataset(tmp_path):
    features = Features({"img": Image(), "y": ClassLabel(names=["p", "q"])})
    rows = {"img": [{"bytes": png(i * 20), "path": None} for i in range(8)], "y": [i % 2 for i in range(8)]}
    data = DatasetDict(
        {
            "train": Dataset.from_dict(rows, features=features),
            "test": Dataset.from_dict(rows, features=features).select(range(4)),
        }
    )
    (tmp_path / "data").mkdir()
    for part in range(2):
        data["train"].shard(2, part).to_parquet(tmp_path / "data" / f"train-0000{part}-of-00002.parquet")
    data["test"].to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    source = hub_stream_source(str(tmp_path))
    assert source.names == ["p", "q"] and len(source.units) == 2 and len(source.eval_data["test"]) == 4
    samples = [
        s for rank in range(2) for s in SampleStream(source.units, source.reader, rank=rank, world_size=2, epochs=1)
    ]
    assert sorted(s["label"] for s in samples) == [0] * 4 + [1] * 4
    assert len({s["image"]["path"] for s in samples}) == 8


def test_shard_command_reports_bad_options_and_sources(folder, tmp_path, capsys):
    assert main(["shard", str(folder), str(tmp_path / "a"), "--shard_size", "0"]) == 1
    assert "--shard_size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["shard", str(tmp_path / "missing"), str(tmp_path / "b")]) == 1
    assert "missing does not exist" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
