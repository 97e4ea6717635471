"""Images per second of ``ImageTransforms`` (train) against transformers' ``ViTImageProcessor`` (PIL backend).

Both start from the same JPEG files on disk and end with a normalised float32 batch of 224x224 images, in one
process (checked before timing: same shape, same dtype); only the transform call is timed. The photos are real:
mosaics of the flowers12 photographs in ``../shared`` cut to common camera sizes (500x375 to 1024x768), so JPEG
decoding costs what it costs on a real dataset. Candidates are timed in turns, ``--repeats`` rounds, best round
each, so a load spike on a shared machine hits all of them alike.

The processor is single-threaded. ``ImageTransforms`` is shown single-threaded (``num_threads=1``, as in a
DataLoader worker; the headline ratio) and with its default, which decodes a batch with one thread per core when it
runs in the main process (``dataloader_num_workers=0``, the Trainer default); on a machine shared with other work
the threaded figure says more about the load than about the transform.

    python benchmarks/transforms.py [--images 96] [--batch-size 32] [--repeats 5] [--resample bicubic] [--json x.json]
    python benchmarks/transforms.py --quick          # a smoke run of seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _harness import format_machine, machine_info, markdown_table, write_json
from PIL import Image
from transformers import ViTImageProcessorPil

from peft_vision_lora.data import ImageTransforms, Preprocessing, TransformOptions

FLOWERS12 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flowers12"
SIZES = [(500, 375), (640, 480), (800, 600), (1024, 768), (768, 1024), (600, 800)]
BASELINE = "transformers ViTImageProcessor (PIL)"
HEADLINE = "ImageTransforms train, 1 thread"
TARGET = 3.0


def make_photos(folder: Path, count: int) -> list[str]:
    """``count`` JPEGs tiled from distinct flowers12 photos (real texture at full resolution, no upscaling)."""
    tiles = sorted(FLOWERS12.glob("*/*/*.jpg"))
    if not tiles:
        raise SystemExit(f"needs the shared flowers12 photos at {FLOWERS12}")
    paths = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        mosaic = Image.new("RGB", (width, height))
        for k, (x, y) in enumerate((x, y) for y in range(0, height, 224) for x in range(0, width, 224)):
            mosaic.paste(Image.open(tiles[(i * 17 + k * 7) % len(tiles)]), (x, y))
        path = folder / f"photo_{i:03d}.jpg"
        mosaic.save(path, quality=90)
        paths.append(str(path))
    return paths


RESAMPLE = {"bilinear": 2, "bicubic": 3}


def candidates(resample: str) -> dict[str, Callable[[list[str], int], object]]:
    processor = ViTImageProcessorPil(  # google/vit-base-patch16-224's preprocessing (bilinear; DINOv2 uses bicubic)
        size={"height": 224, "width": 224}, resample=RESAMPLE[resample], image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    preprocessing = Preprocessing.from_processor(processor)
    runs = {BASELINE: lambda paths, start: processor([Image.open(p) for p in paths], return_tensors="pt")}
    threads = min(8, os.cpu_count() or 1)
    for name, train, options in (
        (HEADLINE, True, TransformOptions(num_threads=1)),
        ("ImageTransforms train, 1 thread, uint8 out", True, TransformOptions(num_threads=1, output="uint8")),
        ("ImageTransforms train, 1 thread, full decode", True, TransformOptions(num_threads=1, reduced_decode=False)),
        ("ImageTransforms eval, 1 thread", False, TransformOptions(num_threads=1)),
        (f"ImageTransforms train, {threads} threads (default)", True, TransformOptions()),
    ):
        transforms = ImageTransforms(preprocessing, train=train, options=options)
        runs[name] = lambda paths, start, t=transforms: t(
            {
                "image": [{"path": p, "bytes": None} for p in paths],
                "label": [0] * len(paths),
                "index": list(range(start, start + len(paths))),
            }
        )
    return runs


def check_outputs(runs: dict[str, Callable[[list[str], int], object]], paths: list[str]) -> None:
    """Run every pipeline once (warm-up) and make sure all produce what the processor produces: same shape, dtype."""
    expected = runs[BASELINE](paths, 0)["pixel_values"]
    for name, run in runs.items():
        pixel_values = run(paths, 0)["pixel_values"]
        wanted = torch.uint8 if "uint8" in name else expected.dtype
        if pixel_values.shape != expected.shape or pixel_values.dtype != wanted:
            raise SystemExit(
                f"{name} gives {tuple(pixel_values.shape)} {pixel_values.dtype}, expected "
                f"{tuple(expected.shape)} {wanted}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="JPEGs generated and transformed per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="rounds; each pipeline's best round counts")
    parser.add_argument("--resample", choices=sorted(RESAMPLE), default="bilinear", help="filter of both sides")
    parser.add_argument("--quick", action="store_true", help="12 images, 1 round: a smoke run of seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 12, 1
    torch.set_num_threads(1)
    runs = candidates(args.resample)
    best = dict.fromkeys(runs, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.images)
        sizes = sorted({Image.open(p).size for p in paths})
        check_outputs(runs, paths[: args.batch_size])
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                for i in range(0, len(paths), args.batch_size):
                    run(paths[i : i + args.batch_size], i)
                best[name] = min(best[name], time.perf_counter() - start)
    rates = {name: len(paths) / seconds for name, seconds in best.items()}
    threaded = next(n for n in rates if n.endswith("(default)"))
    ratio = {
        "single_thread": rates[HEADLINE] / rates[BASELINE],
        "default_threads": rates[threaded] / rates[BASELINE],
        "target": TARGET,
    }
    machine = machine_info(threads=1)
    print(format_machine(machine))
    print(
        f"{len(paths)} JPEGs ({', '.join(f'{w}x{h}' for w, h in sizes)}) -> 224x224 float32 ({args.resample}), "
        f"batch {args.batch_size}, best of {args.repeats} round(s)\n"
    )
    print(
        markdown_table(
            ["pipeline", "images/s", "vs processor"],
            [(name, f"{value:.1f}", f"{value / rates[BASELINE]:.2f}x") for name, value in rates.items()],
        )
    )
    verdict = {True: "met", False: "NOT met"}
    print(
        f"\ntrain transform / ViTImageProcessor (target >= {TARGET:.0f}x): {ratio['single_thread']:.2f}x "
        f"single-threaded ({verdict[ratio['single_thread'] >= TARGET]}), {ratio['default_threads']:.2f}x with the "
        f"default threads ({verdict[ratio['default_threads'] >= TARGET]})"
    )
    write_json(
        args.json,
        {
            "machine": machine,
            "images": len(paths),
            "resample": args.resample,
            "sizes": [list(size) for size in sizes],
            "rows": [
                {"pipeline": name, "images_per_s": value, "vs_processor": value / rates[BASELINE]}
                for name, value in rates.items()
            ],
            "ratio": ratio,
        },
    )


if __name__ == "__main__":
    main()
