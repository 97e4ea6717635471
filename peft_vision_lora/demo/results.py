"""The results tab's content, read from a run folder: plots, per-class accuracy, the model card, and what is missing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.mistakes import MISTAKES_FILE
from ..training.outputs import CONFUSION_FILE, CURVES_FILE, METRICS_FILE

CARD_FILE = "README.md"
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)


@dataclass
class RunResults:
    """What a run folder holds for people to look at; ``None`` where the file is absent (listed in ``missing``)."""

    curves: Path | None = None
    confusion: Path | None = None
    mistakes: Path | None = None
    per_class: list[tuple[str, float]] | None = None
    split: str | None = None  # the split of ``per_class`` and ``accuracy``
    accuracy: dict[str, float] | None = None  # top1_accuracy, top5_accuracy, num_samples of the final split
    card: str | None = None
    missing: list[str] = field(default_factory=list)

    def accuracy_message(self) -> str:
        """The final accuracy in one line, or why the folder has none."""
        if not self.accuracy or self.accuracy.get("top1_accuracy") is None:
            return (
                f"No final accuracy: `{METRICS_FILE}` has no test or validation results. "
                "`peft-vision-lora evaluate FOLDER --dataset DATA` adds them."
            )
        text = f"**Top-1 accuracy {100 * self.accuracy['top1_accuracy']:.1f}%** on the {self.split} split"
        details = []
        if self.accuracy.get("num_samples"):
            details.append(f"{int(self.accuracy['num_samples'])} images")
        if self.accuracy.get("top5_accuracy") is not None:
            details.append(f"top-5 {100 * self.accuracy['top5_accuracy']:.1f}%")
        return text + (f" ({', '.join(details)})." if details else ".")

    def missing_message(self) -> str:
        """One line for the page: which files the tab would show and this folder lacks."""
        if not self.missing:
            return ""
        text = "Not in this folder: " + ", ".join(f"`{name}`" for name in self.missing) + "."
        if MISTAKES_FILE in self.missing:
            text += f" `peft-vision-lora evaluate FOLDER --dataset DATA` writes `{MISTAKES_FILE}`."
        return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _final_split(metrics: dict[str, Any]) -> str | None:
    return next((s for s in ("test", "eval", "validation") if isinstance(metrics.get(s), dict)), None)


def read_run_results(folder: Path) -> RunResults:
    """Collect the run's figures and tables; a missing or unreadable file is named in ``missing``."""
    results = RunResults()
    for attr, name in (("curves", CURVES_FILE), ("confusion", CONFUSION_FILE), ("mistakes", MISTAKES_FILE)):
        path = folder / name
        if path.is_file():
            setattr(results, attr, path)
        else:
            results.missing.append(name)
    metrics_path = folder / METRICS_FILE
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        metrics = {}
    split = _final_split(metrics)
    if split:
        results.split = split
        headline = ("top1_accuracy", "top5_accuracy", "num_samples")
        results.accuracy = {k: float(v) for k, v in metrics[split].items() if k in headline and _is_number(v)}
    per_class = metrics[split].get("per_class_accuracy") if split else None
    if isinstance(per_class, dict):
        results.per_class = [(str(label), float(acc)) for label, acc in per_class.items()]
    else:
        results.missing.append(f"{METRICS_FILE} (per-class accuracy)")
    card = folder / CARD_FILE
    if card.is_file():
        results.card = _FRONT_MATTER.sub("", card.read_text(encoding="utf-8"), count=1).strip()
    else:
        results.missing.append(f"{CARD_FILE} (model card)")
    return results
