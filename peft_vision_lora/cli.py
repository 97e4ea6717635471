"""The ``peft-vision-lora`` command: a small dispatcher, each subcommand parses its own options.

peft-vision-lora train --dataset flowers/ --output_dir out/     # or: peft-vision-lora train config.yaml
peft-vision-lora push out/ user/flowers-lora [--private]
peft-vision-lora merge out/ merged/                            # standalone transformers model, no PEFT needed
peft-vision-lora predict out/ photo.jpg [more.jpg ...] [--top_k 3]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

PROG = "peft-vision-lora"


def _train(argv: list[str]) -> int:
    from .training import parse_args, train

    prog = f"{PROG} train"
    try:
        model_args, data_args, training_args = parse_args(argv, prog=prog)
    except ValueError as error:  # option validation (__post_init__): a usage error, not a crash
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    train(model_args, data_args, training_args, command=shlex.join([PROG, "train", *argv]))
    return 0


def _push(argv: list[str]) -> int:
    from .training import HubPushError, push_to_hub

    parser = argparse.ArgumentParser(
        prog=f"{PROG} push", description="Upload an adapter folder to the Hugging Face Hub."
    )
    parser.add_argument("folder", help="The output folder of a training run (adapter, model card, metrics).")
    parser.add_argument("repo_id", help="Hub repository as user/name; created if it does not exist.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--commit_message", default=None, help="Message of the upload commit.")
    args = parser.parse_args(argv)
    try:
        url = push_to_hub(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message)
    except (HubPushError, FileNotFoundError) as error:
        print(f"{PROG} push: error: {error}", file=sys.stderr)
        return 1
    print(url)
    return 0


def _merge(argv: list[str]) -> int:
    from .modeling import merge_adapter

    parser = argparse.ArgumentParser(prog=f"{PROG} merge", description="Merge an adapter into its backbone.")
    parser.add_argument("adapter", help="Adapter folder or Hub id.")
    parser.add_argument("out_dir", help="Where the standalone transformers model folder is written.")
    parser.add_argument("--base_model", default=None, help="Backbone location, if not the one the adapter records.")
    args = parser.parse_args(argv)
    print(merge_adapter(args.adapter, args.out_dir, base_model=args.base_model))
    return 0


def _predict(argv: list[str]) -> int:
    import json

    from transformers import pipeline

    parser = argparse.ArgumentParser(prog=f"{PROG} predict", description="Classify images with a trained model.")
    parser.add_argument("model", help="Adapter folder, merged folder or Hub id.")
    parser.add_argument("images", nargs="+", help="Image files or URLs.")
    parser.add_argument("--top_k", type=int, default=3, help="Labels per image.")
    args = parser.parse_args(argv)
    classify = pipeline("image-classification", model=args.model)
    for image, result in zip(args.images, classify(args.images, top_k=args.top_k)):
        print(json.dumps({"image": image, "predictions": result}))
    return 0


# name -> (one-line help, handler receiving the arguments after the name and returning the exit status)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "train": ("Fine-tune a vision transformer (LoRA, full or linear probe) on an image dataset.", _train),
    "push": ("Upload an adapter folder to the Hugging Face Hub.", _push),
    "merge": ("Merge an adapter into its backbone: a standalone transformers model folder.", _merge),
    "predict": ("Classify image files with an adapter or model folder (JSON lines).", _predict),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="LoRA fine-tuning of vision transformers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, _) in COMMANDS.items():
        # add_help=False: `COMMAND --help` reaches the command's own parser.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = build_parser().parse_known_args(argv)
    return COMMANDS[args.command][1](rest)


if __name__ == "__main__":
    sys.exit(main())
