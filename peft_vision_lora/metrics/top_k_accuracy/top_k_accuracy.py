"""Top-k accuracy: the fraction of samples whose true class is among the k highest scores."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-k accuracy of a classifier. A sample counts as correct when its reference class is among the ``k`` classes with
the highest scores; ``k=1`` is the usual accuracy. Ties are broken towards the lower class index, like ``argmax``.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): per-sample class scores (logits or probabilities), shape (N, C).
    references (`list` of `int`): true class indices, shape (N,).
    k (`int`, defaults to 1): how many of the highest-scoring classes count as a hit; at most C.
Returns:
    accuracy (`float`): the top-k accuracy, in [0, 1].
Examples:
    >>> metric = evaluate.load("peft_vision_lora/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], references=[2, 0], k=2)
    {'accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k: int = 1) -> dict[str, float]:
        scores = np.asarray(predictions, dtype=np.float32)
        references = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or not 1 <= k <= scores.shape[1]:
            raise ValueError(
                f"k must be between 1 and the number of classes; got k={k} for scores of shape {scores.shape}."
            )
        # A stable sort of the negated scores ranks ties by class index, so k=1 agrees with argmax.
        top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        hits = (top_k == references[:, None]).any(axis=1)
        return {"accuracy": float(hits.mean()) if len(hits) else float("nan")}
