import numpy as np
from PIL import Image

from peft_vision_lora.evaluation.plots import MAX_FIGURE_INCHES, plot_confusion_matrix


def test_confusion_matrix_of_many_classes_stays_bounded(tmp_path):
    # NABirds has 555 classes: the figure must not grow with them (it once needed 23 GB).
    n = 555
    counts = np.diag(np.full(n, 3)) + np.random.default_rng(0).integers(0, 2, (n, n))
    path = plot_confusion_matrix(counts, [f"class {i}" for i in range(n)], tmp_path / "cm.png")
    width, height = Image.open(path).size
    assert max(width, height) <= (MAX_FIGURE_INCHES + 1) * 100


def test_confusion_matrix_small_has_counts(tmp_path):
    path = plot_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"], tmp_path / "cm.png")
    assert Image.open(path).size[0] > 300
