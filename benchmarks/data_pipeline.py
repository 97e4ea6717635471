"""The training data pipeline alone, image folder against WebDataset tar shards: images/s and time to the first batch.

Both pipelines end in the same train transform (random resized crop + flip to 224 px, normalised float32, batches of
32) in a ``torch.utils.data.DataLoader`` with 0, 1 or 2 workers, as a training run builds them: the folder through
``load_image_dataset`` (listing, then the scan of every image that ``--on_bad_image skip`` does; ``keep`` lists
only) and ``train_dataloader``; the shards through the stream of ``--dataset shards/`` (``SampleStream`` with its
1,000-sample shuffle buffer, ``StreamCollate``). Nothing else (no model) runs.

* **Start-up**: seconds from nothing to the first batch, in a fresh process (imports excluded), for a 1,000- and a
  10,000-image subset: does it grow with the dataset?
* **Images/s**: batches after the first, over ``--images`` images, per worker count.

Datasets: the 10,000 CIFAR-10 test JPEGs of ``../shared`` (32x32: decoding is cheap, the 224 px resize dominates),
and photo-sized JPEGs (mosaics of the flowers12 photos, 500x375 to 1024x768, as in ``transforms.py``) as a folder,
as shards of the original files, and as shards written with ``--max_side 320`` (what the ImageNet-21k estimate in
RESULTS.md rests on). Every configuration runs in its own subprocess, A B C A B C over ``--repeats``.

    python benchmarks/data_pipeline.py [--repeats 3] [--images 4000] [--photos 400] [--json x.json]
    python benchmarks/data_pipeline.py --quick      # synthetic images, seconds
"""

from __future__ import annotations

import random
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    SHARED,
    Stat,
    alternate,
    child_main,
    common_parser,
    format_machine,
    machine_info,
    markdown_table,
    write_json,
)

CIFAR10 = SHARED / "data" / "cifar10-test-jpg.tar"
BATCH = 32
WORKERS = (0, 1, 2)


# ------------------------------------------------------------------------------------------------------------ worker


def build_loader(config: dict[str, Any]) -> Any:
    from torch.utils.data import DataLoader

    from peft_vision_lora.data import ImageTransforms, Preprocessing, load_image_dataset
    from peft_vision_lora.data.sample_stream import SampleStream, StreamCollate
    from peft_vision_lora.data.stream_sources import shard_source
    from peft_vision_lora.training.data import train_dataloader

    transforms = ImageTransforms(Preprocessing(size=(224, 224)), train=True)
    workers = config["workers"]
    if config["kind"] == "folder":
        data = load_image_dataset(config["root"], on_bad_image=config.get("scan", "skip"))
        return train_dataloader(data, transforms, global_batch_size=BATCH, seed=0, num_workers=workers).loader
    source = shard_source(config["root"], eval_split_patterns=False)
    stream = SampleStream(source.units, source.reader, seed=0, shuffle_buffer=1000)
    return DataLoader(stream, batch_size=BATCH, num_workers=workers, collate_fn=StreamCollate(transforms))


def endless(loader: Any) -> Any:
    epoch = 0
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def work(config: dict[str, Any]) -> dict[str, Any]:
    import peft_vision_lora.data.stream_sources  # noqa: F401  (imports are not start-up time)
    import peft_vision_lora.training.data  # noqa: F401

    started = time.perf_counter()
    batches = endless(build_loader(config))
    first = next(batches)
    startup = time.perf_counter() - started
    assert tuple(first["pixel_values"].shape[1:]) == (3, 224, 224), first["pixel_values"].shape
    result = {"startup_s": startup}
    count = config.get("images", 0) // BATCH
    if count:
        started = time.perf_counter()
        for _ in range(count):
            next(batches)
        result["images_per_s"] = count * BATCH / (time.perf_counter() - started)
    return result


# ------------------------------------------------------------------------------------------------------------ driver


def extract_cifar10(out: Path, per_class: int | None) -> Path:
    """The CIFAR-10 test JPEGs as ``out/<class>/NNNN.jpg`` (``per_class`` of each, or all): member bytes are
    copied, nothing is extracted by tarfile."""
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR10, "r|") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or not parts[2].endswith(".jpg"):
                continue
            if per_class is not None and counts.get(parts[1], 0) >= per_class:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            (out / parts[1]).mkdir(parents=True, exist_ok=True)
            (out / parts[1] / parts[2]).write_bytes(tar.extractfile(member).read())
    return out


def synthetic(out: Path, count: int, size: tuple[int, int]) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = out / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return out


def photos(out: Path, count: int) -> Path:
    """Photo-sized JPEGs in 6 classes, made by ``transforms.py``'s mosaic maker from the flowers12 photos."""
    sys.path.insert(0, str(Path(__file__).parent))
    from transforms import make_photos

    flat = out.parent / "photos-flat"
    flat.mkdir(parents=True)
    for i, path in enumerate(make_photos(flat, count)):
        (out / f"class{i % 6}").mkdir(parents=True, exist_ok=True)
        shutil.move(path, out / f"class{i % 6}" / Path(path).name)
    return out


def shard(folder: Path, out: Path, **options: Any) -> tuple[Path, float]:
    from peft_vision_lora.data.shard_writer import write_shards

    started = time.perf_counter()
    write_shards(folder, out, shard_size=1000, **options)
    return out, time.perf_counter() - started


def prepare(tmp: Path, quick: bool, photo_count: int) -> tuple[dict[str, dict[str, Path]], dict[str, float]]:
    """Folders and shards of every dataset size; returns them with the seconds `shard` took for each."""
    sets, shard_s = {}, {}
    sizes = {"1k": 100, "10k": None} if not quick else {"large": 12}
    for name, per_class in sizes.items():
        root = tmp / f"cifar-{name}"
        folder = synthetic(root, 4 * per_class, (32, 32)) if quick else extract_cifar10(root, per_class)
        shards, shard_s[f"cifar-{name}"] = shard(folder, tmp / f"cifar-{name}-shards")
        sets[f"cifar-{name}"] = {"folder": folder, "shards": shards}
    folder = synthetic(tmp / "photos", 40, (640, 480)) if quick else photos(tmp / "photos", photo_count)
    shards, shard_s["photos"] = shard(folder, tmp / "photos-shards")
    small, shard_s["photos-320"] = shard(folder, tmp / "photos-shards-320", max_side=320)
    sets["photos"] = {"folder": folder, "shards": shards, "shards --max_side 320": small}
    return sets, shard_s


def configs(
    sets: dict[str, dict[str, Path]], images: int, photo_images: int, quick: bool, workers: tuple[int, ...]
) -> list[dict[str, Any]]:
    small, large = ("cifar-small", "cifar-large") if quick else ("cifar-1k", "cifar-10k")
    out = []
    # Start-up: first batch only, main-process loading (--quick: the larger set only, to keep the smoke run short).
    for subset in (large,) if quick else (small, large):
        for kind, scan in (("folder", "skip"), ("folder", "keep"), ("shards", None)):
            label = f"{kind} (scan)" if scan == "skip" else f"{kind} (no scan)" if scan else kind
            root = str(sets[subset][kind])
            out.append({"name": f"startup {subset} {label}", "mode": "startup", "dataset": subset, "label": label,
                        "kind": kind, "scan": scan or "skip", "root": root, "workers": 0})  # fmt: skip
    for dataset, count in ((large, images), ("photos", photo_images)):
        for variant, root in sets[dataset].items():
            for worker_count in workers:
                kind = "folder" if variant == "folder" else "shards"
                out.append({"name": f"rate {dataset} {variant} {worker_count}w", "mode": "rate", "dataset": dataset,
                            "label": variant, "kind": kind, "scan": "keep", "root": str(root),
                            "workers": worker_count, "images": count})  # fmt: skip
    return out


def main() -> None:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="CIFAR-10 images timed per rate measurement")
    parser.add_argument("--photos", type=int, default=400, help="photo-sized JPEGs made (and timed per measurement)")
    args = parser.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    images, photo_images = (64, 64) if args.quick else (args.images, args.photos)
    tmp = Path(tempfile.mkdtemp(prefix="pvl-pipeline-"))
    try:
        sets, shard_s = prepare(tmp, args.quick, args.photos)
        workers = (1,) if args.quick else WORKERS  # --quick: the worker path; start-up runs cover 0 workers
        plan = configs(sets, images, photo_images, args.quick, workers)
        order = plan[:]
        random.Random(0).shuffle(order)  # startup and rate runs interleaved, so drifts hit both kinds alike
        results = alternate(Path(__file__), order, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = machine_info(threads=args.threads)
    report(plan, results, shard_s, machine, args.json, workers)


def report(plan, results, shard_s, machine, json_path, workers) -> None:
    rows = []
    for config in plan:
        runs = results[config["name"]]
        row = {k: config[k] for k in ("name", "mode", "dataset", "label", "workers")}
        row["startup_s"] = Stat.of(r["startup_s"] for r in runs).as_dict()
        if config["mode"] == "rate":
            row["images_per_s"] = Stat.of(r["images_per_s"] for r in runs).as_dict()
        rows.append(row)
    print(format_machine(machine))
    print(f"shard writing (s): {', '.join(f'{k} {v:.1f}' for k, v in shard_s.items())}\n")
    startup = [r for r in rows if r["mode"] == "startup"]
    datasets = list(dict.fromkeys(r["dataset"] for r in startup))
    labels = list(dict.fromkeys(r["label"] for r in startup))
    cell = {(r["dataset"], r["label"]): r["startup_s"] for r in startup}
    print("Start-up: seconds to the first batch (0 workers), median (min-max)\n")
    print(markdown_table(["pipeline", *datasets, "growth"], [
        (label, *(Stat(**cell[(d, label)]).format(2) for d in datasets),
         f"{cell[(datasets[-1], label)]['median'] / cell[(datasets[0], label)]['median']:.2f}x")
        for label in labels
    ]))  # fmt: skip
    ratios = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows if r["mode"] == "rate"):
        rate = [r for r in rows if r["mode"] == "rate" and r["dataset"] == dataset]
        variants = list(dict.fromkeys(r["label"] for r in rate))
        by = {(r["label"], r["workers"]): r["images_per_s"] for r in rate}
        print(f"\nImages/s, {dataset} (decode + train transform to 224 px, batch {BATCH}), median (min-max)\n")
        header = ["pipeline", *(f"{w} workers" for w in workers)]
        table = [(v, *(Stat(**by[(v, w)]).format(1) for w in workers)) for v in variants]
        for variant in variants[1:]:
            values = [by[(variant, w)]["median"] / by[("folder", w)]["median"] for w in workers]
            ratios[f"{dataset} {variant} / folder"] = dict(zip(map(str, workers), values))
            table.append((f"{variant} / folder", *(f"{v:.2f}x" for v in values)))
        print(markdown_table(header, table))
    big = datasets[-1]
    ratios["startup shards / folder (scan)"] = cell[(big, "shards")]["median"] / cell[(big, "folder (scan)")]["median"]
    print(f"\nStart-up on {big}: shards / folder with scan {ratios['startup shards / folder (scan)']:.3f}x")
    write_json(json_path, {"machine": machine, "shard_s": shard_s, "rows": rows, "ratios": ratios})


if __name__ == "__main__" and not child_main(work):
    main()
