"""Confusion matrix: counts of (true class, predicted class) pairs."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The confusion matrix of a classifier: entry [i][j] counts the samples of true class i predicted as class j, so the
diagonal holds the correct predictions and each row sums to the number of samples of that class.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices.
    num_classes (`int`, optional): size of the matrix; defaults to the largest index seen plus one.
Returns:
    confusion_matrix (`list` of `list` of `int`): a num_classes x num_classes matrix, rows are true classes.
Examples:
    >>> metric = evaluate.load("peft_vision_lora/metrics/confusion_matrix")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'confusion_matrix': [[1, 1], [0, 1]]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_classes: int | None = None) -> dict[str, list[list[int]]]:
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if num_classes is None:
            num_classes = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
        matrix = np.bincount(references * num_classes + predictions, minlength=num_classes * num_classes)
        return {"confusion_matrix": matrix.reshape(num_classes, num_classes).tolist()}
