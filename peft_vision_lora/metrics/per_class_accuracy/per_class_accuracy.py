"""Per-class accuracy (recall): for each class, the fraction of its samples predicted as that class."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy within each true class, i.e. per-class recall. Unlike overall accuracy it shows which classes a classifier
gets wrong, whatever the class balance. Classes without samples get ``None``.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    num_classes (`int`, optional): number of classes; defaults to the largest index seen plus one.
Returns:
    per_class_accuracy (`list` of `float` or `None`): accuracy of class i at position i.
Examples:
    >>> metric = evaluate.load("peft_vision_lora/metrics/per_class_accuracy")
    >>> metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], num_classes=4)
    {'per_class_accuracy': [1.0, 1.0, 0.5, None]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PerClassAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes: int | None = None) -> dict[str, list[float | None]]:
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if num_classes is None:
            num_classes = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
        correct = np.bincount(references[predictions == references], minlength=num_classes)
        total = np.bincount(references, minlength=num_classes)
        return {"per_class_accuracy": [float(c / t) if t else None for c, t in zip(correct, total)]}
