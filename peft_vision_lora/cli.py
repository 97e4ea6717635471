"""The ``peft-vision-lora`` command: a small dispatcher, each subcommand parses its own options.

peft-vision-lora train --dataset flowers/ --output_dir out/     # or: peft-vision-lora train config.yaml
peft-vision-lora push out/ user/flowers-lora [--private]
peft-vision-lora merge out/ merged/                            # standalone transformers model, no PEFT needed
peft-vision-lora export merged/ onnx/                          # model.onnx + config.json + preprocessor_config.json
peft-vision-lora predict out/ photo.jpg [more.jpg ...] [--top_k 3]
peft-vision-lora evaluate out/ --dataset flowers/ [--split test]    # metrics.json, confusion matrix, mistakes grid
peft-vision-lora demo out/ [more/ ...] [--host 127.0.0.1] [--port 7860]   # Gradio web page (the demo extra)
peft-vision-lora shard flowers/ shards/ [--shard_size 1000] [--max_side 320 --quality 90]   # WebDataset tar shards
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence

PROG = "peft-vision-lora"


def _train(argv: list[str]) -> int:
    from .training import parse_args, train
    from .training.clock import process_start_time
    from .training.launch import LaunchError

    prog = f"{PROG} train"
    try:
        model_args, data_args, training_args = parse_args(argv, prog=prog)
    except ValueError as error:  # option validation (__post_init__): a usage error, not a crash
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        command = shlex.join([PROG, "train", *argv])
        train(model_args, data_args, training_args, command=command, started_at=process_start_time())
    except LaunchError as error:  # launched for several machines as one process: say what to add
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _push(argv: list[str]) -> int:
    from .hub import HubPushError, push_to_hub

    parser = argparse.ArgumentParser(
        prog=f"{PROG} push", description="Upload an adapter folder to the Hugging Face Hub."
    )
    parser.add_argument("folder", help="The output folder of a training run (adapter, model card, metrics).")
    parser.add_argument("repo_id", help="Hub repository as user/name; created if it does not exist.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--commit_message", default=None, help="Message of the upload commit.")
    parser.add_argument(
        "--space",
        nargs="?",
        const="",
        default=None,
        metavar="SPACE_ID",
        help="Also write and push a Gradio Space (app.py, requirements.txt) running the demo of repo_id; "
        "SPACE_ID defaults to repo_id-demo.",
    )
    parser.add_argument("--space_dir", default=None, help="Where the Space's files are written (default: a tmp dir).")
    args = parser.parse_args(argv)
    try:
        url = push_to_hub(args.folder, args.repo_id, private=args.private, commit_message=args.commit_message)
        print(url)
        if args.space is not None:
            print(_push_space(args))
    except (HubPushError, FileNotFoundError) as error:
        print(f"{PROG} push: error: {error}", file=sys.stderr)
        return 1
    return 0


def _push_space(args: argparse.Namespace) -> str:
    import tempfile

    from .demo.space import default_space_id, push_space, space_warnings, write_space

    for warning in space_warnings(args.folder):
        print(f"{PROG} push: warning: {warning}", file=sys.stderr)
    space_dir = write_space(args.space_dir or tempfile.mkdtemp(prefix="pvl-space-"), [args.repo_id])
    return push_space(space_dir, args.space or default_space_id(args.repo_id), private=args.private)


def _merge(argv: list[str]) -> int:
    from .adapters import merge_adapter

    parser = argparse.ArgumentParser(prog=f"{PROG} merge", description="Merge an adapter into its backbone.")
    parser.add_argument("adapter", help="Adapter folder or Hub id.")
    parser.add_argument("out_dir", help="Where the standalone transformers model folder is written.")
    parser.add_argument("--base_model", default=None, help="Backbone location, if not the one the adapter records.")
    args = parser.parse_args(argv)
    print(merge_adapter(args.adapter, args.out_dir, base_model=args.base_model))
    return 0


def _export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} export",
        description="Export a classifier as ONNX: model.onnx (dynamic batch), config.json (labels) and "
        "preprocessor_config.json, checked against PyTorch with onnxruntime. Needs the onnx extra.",
    )
    parser.add_argument("model", help="Merged or fine-tuned model folder, adapter folder (merged first), or Hub id.")
    parser.add_argument("out_dir", help="Folder the ONNX model, its config and processor are written to.")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version.")
    args = parser.parse_args(argv)
    import json

    from .export import ExportError, export_onnx

    try:
        result = export_onnx(args.model, args.out_dir, opset=args.opset)
    except (ExportError, FileNotFoundError, ImportError) as error:
        print(f"{PROG} export: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"onnx": str(result.folder / "model.onnx"), "max_abs_diff": result.max_abs_diff}))
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


def _evaluate(argv: list[str]) -> int:
    import json

    from .evaluation.folder import default_output_dir, evaluate_folder

    parser = argparse.ArgumentParser(
        prog=f"{PROG} evaluate",
        description="Evaluate a trained folder on a dataset split: top-1/top-5/per-class accuracy and loss in "
        "metrics.json (merged into a run's own), confusion_matrix.png and mistakes.png, the most confident mistakes.",
    )
    parser.add_argument("model", help="Adapter folder, merged or fully fine-tuned model folder, or Hub id.")
    parser.add_argument("--dataset", required=True, help="Anything load_image_dataset reads (folder, Hub id, ...).")
    parser.add_argument("--split", default="test", help="Split to evaluate.")
    parser.add_argument("--dataset_format", default=None, help="Dataset layout, when it is not detected.")
    parser.add_argument(
        "--output_dir", default=None, help="Where the files go (default: the folder itself; eval-<id> for a Hub id)."
    )
    parser.add_argument("--batch_size", type=int, default=32, help="Images per forward pass.")
    parser.add_argument("--num_mistakes", type=int, default=16, help="Mistakes shown in mistakes.png.")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_folder(
            args.model,
            args.dataset,
            split=args.split,
            output_dir=args.output_dir,
            batch_size=args.batch_size,
            num_mistakes=args.num_mistakes,
            dataset_format=args.dataset_format,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG} evaluate: error: {error}", file=sys.stderr)
        return 1
    headline = {k: metrics[k] for k in ("top1_accuracy", "top5_accuracy", "loss", "num_samples") if k in metrics}
    out = args.output_dir or default_output_dir(args.model)
    print(json.dumps({"split": args.split, **headline, "output_dir": str(out)}))
    return 0


def _demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} demo",
        description="Serve a web page (Gradio) to try adapters on your own images, with the runs' training results. "
        "Needs the demo extra: pip install 'peft_vision_lora[demo]'.",
    )
    parser.add_argument("models", nargs="+", metavar="PATH_OR_ID", help="Adapter folders or Hub ids (one backbone).")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on. The default 127.0.0.1 serves this machine only; --host 0.0.0.0 is an explicit "
        "choice that serves every network this machine is on, to anyone who can reach it (no authentication).",
    )
    parser.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    parser.add_argument("--top_k", type=int, default=5, help="Labels shown per image.")
    parser.add_argument("--base_model", default=None, help="Backbone location, if not the one the adapters record.")
    args = parser.parse_args(argv)
    try:
        from .demo import launch
    except ImportError as error:
        print(
            f"{PROG} demo: error: {error}. Install the demo extra: pip install 'peft_vision_lora[demo]'",
            file=sys.stderr,
        )
        return 1
    try:
        launch(args.models, host=args.host, port=args.port, top_k=args.top_k, base_model=args.base_model)
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    return 0


def _shard(argv: list[str]) -> int:
    import json
    from dataclasses import asdict

    from transformers import HfArgumentParser

    from .data.shard_writer import ShardOptions, write_shards

    parser = HfArgumentParser(
        ShardOptions,
        prog=f"{PROG} shard",
        description="Write a dataset as WebDataset tar shards (<split>-NNNNNN.tar of <key>.jpg|png|webp + <key>.cls), "
        "labels.txt and shards.json, in a seeded order; train on them with --dataset OUT (or the printed pattern).",
    )
    parser.add_argument("source", help="Anything load_image_dataset reads (image folder, reference layout, Hub id).")
    parser.add_argument("out_dir", help="Folder the shards, labels.txt and shards.json are written to.")
    parser.add_argument("--dataset_format", default=None, help="Dataset layout, when it is not detected.")
    parser.add_argument(
        "--on_bad_image", choices=("skip", "error"), default="skip", help="Unreadable images: leave out, or stop."
    )
    try:
        options, rest = parser.parse_args_into_dataclasses(argv)
        manifest = write_shards(
            rest.source,
            rest.out_dir,
            format=rest.dataset_format,
            on_bad_image=rest.on_bad_image,
            **asdict(options),
        )
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"{PROG} shard: error: {error}", file=sys.stderr)
        return 1
    for split, info in manifest["splits"].items():
        print(json.dumps({"split": split, "pattern": f"{rest.out_dir}/{info['pattern']}", **info}))
    return 0


# name -> (one-line help, handler receiving the arguments after the name and returning the exit status)
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "train": ("Fine-tune a vision transformer (LoRA, full or linear probe) on an image dataset.", _train),
    "push": ("Upload an adapter folder to the Hugging Face Hub.", _push),
    "merge": ("Merge an adapter into its backbone: a standalone transformers model folder.", _merge),
    "export": ("Export a classifier folder as ONNX (model, labels, processor), checked with onnxruntime.", _export),
    "predict": ("Classify image files with an adapter or model folder (JSON lines).", _predict),
    "evaluate": ("Evaluate a trained folder on a dataset split (metrics, confusion matrix, mistakes grid).", _evaluate),
    "shard": ("Write a dataset as WebDataset tar shards for streaming training.", _shard),
    "demo": ("Serve a web page to try adapter folders or Hub ids on your own images (Gradio).", _demo),
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
