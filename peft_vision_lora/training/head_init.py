"""LP-FT: before any backbone weight moves, the head is fitted by a linear probe on backbone features of the training
images (``--head_init linear_probe``)."""

from __future__ import annotations

import math

from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn

from ..data import ImageTransforms
from ..data.loading import at_most_per_class
from .arguments import TrainingArguments
from .clock import PhaseClock
from .data import RunData
from .features import FeatureDataset, backbone_features, fit_linear_head, trainable_linear
from .model import head_module, merged_adapters
from .parts import LoopPart
from .stream_data import stream_prefix_features

logger = get_logger(__name__)


class LinearProbeHead(LoopPart):
    """Fits the head at the start of a fresh run (a resumed one already has its head)."""

    name = "linear_probe"

    def __init__(
        self,
        model: nn.Module,
        data: RunData,
        transforms: ImageTransforms,
        accelerator: Accelerator,
        clock: PhaseClock,
        args: TrainingArguments,
        shuffle_buffer: int,
    ) -> None:
        self.model, self.data, self.transforms, self.accelerator = model, data, transforms, accelerator
        self.clock, self.args, self.shuffle_buffer = clock, args, shuffle_buffer
        self.skipped = False

    def recipe(self) -> str:
        return "head from a linear probe"

    def skip(self) -> None:
        """Keep the random head (a time budget of many epochs asks for it: see ``training/budget.py``)."""
        self.skipped = True

    def images(self) -> int:
        """About how many training images the probe embeds on this process (0 when not known)."""
        shots = self.args.linear_probe_shots
        limit = shots * trainable_linear(head_module(self.model)).out_features if shots else None
        known = self.data.num_train or 0
        return math.ceil(min(known, limit or known) / self.accelerator.num_processes)

    def begin(self, resumed: bool) -> None:
        if resumed or self.skipped:
            return
        with self.clock.phase("linear_probe"):
            head = head_module(self.model)
            with merged_adapters(self.model):  # identity adapters at the start: the frozen backbone's own features
                features = self.features(head)
            accuracy = fit_linear_head(trainable_linear(head), features)
        logger.info(
            "Head initialised by a linear probe on %d cached features in %.1fs (train top-1 %.3f).",
            len(features),
            self.clock.last["linear_probe"],
            accuracy,
            main_process_only=True,
        )

    def features(self, head: nn.Module) -> FeatureDataset:
        """What the head receives for the training images (eval transform); of a stream, a prefix of it."""
        batch_size = self.args.per_device_eval_batch_size
        shots = self.args.linear_probe_shots
        if self.data.stream is not None:  # the whole of a stream is not known, nor needed
            return stream_prefix_features(
                self.data.stream, self.transforms, self.model, head, self.accelerator, {}, seed=self.args.seed,
                shuffle_buffer=self.shuffle_buffer, batch_size=batch_size,
                limit=shots * trainable_linear(head).out_features if shots else None,
            )  # fmt: skip
        train = self.data.splits["train"]
        return backbone_features(
            self.model,
            at_most_per_class(train, shots, self.args.seed) if shots else train,
            self.transforms,
            self.accelerator,
            batch_size=batch_size,
            num_workers=self.args.dataloader_num_workers,
        )
