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
    split: str | None = None  # the split of ``per_class``
    card: str | None = None
    missing: list[str] = field(default_factory=list)

    def missing_message(self) -> str:
        """One line for the page: which files the tab would show and this folder lacks."""
        if not self.missing:
            return ""
        text = "Not in this folder: " + ", ".join(f"`{name}`" for name in self.missing) + "."
        if MISTAKES_FILE in self.missing:
            text += f" `peft-vision-lora evaluate FOLDER --dataset DATA` writes `{MISTAKES_FILE}`."
        return text


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
    per_class = metrics[split].get("per_class_accuracy") if split else None
    if isinstance(per_class, dict):
        results.per_class = [(str(label), float(acc)) for label, acc in per_class.items()]
        results.split = split
    else:
        results.missing.append(f"{METRICS_FILE} (per-class accuracy)")
    card = folder / CARD_FILE
    if card.is_file():
        results.card = _FRONT_MATTER.sub("", card.read_text(encoding="utf-8"), count=1).strip()
    else:
        results.missing.append(f"{CARD_FILE} (model card)")
    return results
