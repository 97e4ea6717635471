"""``pipeline("image-classification" | "vision-efficient-tuning", model=<adapter folder>)`` with every input kind."""

import functools
import http.server
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

import peft_vision_lora as pvl

LABELS = ["cat", "dog", "fox", "owl"]


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    torch.manual_seed(0)
    model = pvl.build_model(tiny_models["vit"], LABELS, init_lora_weights=False)
    return pvl.save_pretrained(model, tmp_path_factory.mktemp("pipe") / "adapter")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 36, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def served_folder(images):
    """A loopback HTTP server over the image folder, to test URL inputs."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(images[0].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("task", ["image-classification", "vision-efficient-tuning"])
def test_inputs_paths_pil_lists_urls(adapter, images, served_folder, task):
    classify = pipeline(task, model=str(adapter))
    by_path = classify(str(images[0]))
    by_pil = classify(Image.open(images[0]))
    by_url = classify(f"{served_folder}/{images[0].name}")
    assert by_path == by_pil == by_url
    assert len(by_path) == min(5, len(LABELS)) == 4  # default top_k is min(5, num_labels)
    assert by_path[0]["label"] in LABELS and 0 < by_path[0]["score"] <= 1
    batch = classify([str(p) for p in images], top_k=2, batch_size=2)
    assert len(batch) == 3 and all(len(r) == 2 for r in batch)
    single = classify(str(images[0]), top_k=2)
    assert [r["label"] for r in batch[0]] == [r["label"] for r in single]
    assert [r["score"] for r in batch[0]] == pytest.approx([r["score"] for r in single], abs=1e-6)


def test_top_k_orders_by_score(adapter, images):
    result = pipeline("image-classification", model=str(adapter))(str(images[1]), top_k=4)
    scores = [r["score"] for r in result]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
