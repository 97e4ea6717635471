import numpy as np
from matplotlib.axes import Axes
from PIL import Image

from peft_vision_lora.evaluation.plots import MAX_FIGURE_INCHES, plot_confusion_matrix


def test_confusion_matrix_of_many_classes_stays_bounded(tmp_path):
    # NABirds has 555 classes: the figure must not grow with them (it once needed 23 GB).
    n = 555
    counts = np.diag(np.full(n, 3)) + np.random.default_rng(0).integers(0, 2, (n, n))
    path = plot_confusion_matrix(counts, [f"class {i}" for i in range(n)], tmp_path / "cm.png")
    width, height = Image.open(path).size
    assert max(width, height) <= (MAX_FIGURE_INCHES + 1) * 100


def test_confusion_matrix_small_has_counts(tmp_path, monkeypatch):
    """Each raw count is written in its cell, readable: white on the dark cells, black on the light ones."""
    written = []
    text = Axes.text

    def recording_text(self, x, y, s, *args, **kwargs):
        artist = text(self, x, y, s, *args, **kwargs)
        written.append(artist)
        return artist

    monkeypatch.setattr(Axes, "text", recording_text)
    path = plot_confusion_matrix([[5, 1], [0, 4]], ["cat", "dog"], tmp_path / "cm.png")
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in written}
    assert {cell: t.get_text() for cell, t in cells.items()} == {(0, 0): "5", (0, 1): "1", (1, 0): "0", (1, 1): "4"}
    assert {cell: t.get_color() for cell, t in cells.items()} == {
        (0, 0): "white",
        (0, 1): "black",
        (1, 0): "black",
        (1, 1): "white",
    }
    # The counts are in the saved image: inside each number's box, pixels of its colour stand out from the cell.
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int32)
    for cell, artist in cells.items():
        box = artist.get_window_extent()
        top, bottom = pixels.shape[0] - int(box.y1), pixels.shape[0] - int(box.y0)
        patch = pixels[top : bottom + 1, int(box.x0) : int(box.x1) + 1]
        ink = 255 if artist.get_color() == "white" else 0
        assert (np.abs(patch - ink).max(axis=2) < 60).sum() >= 5, (cell, artist.get_text())
