"""The Gradio app over HTTP (gradio_client): classification, refusals in words, batch CSV, concurrency, the CLI."""

from __future__ import annotations

import csv
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL.Image
import pytest
from gradio_client import Client, handle_file
from helpers.demo import CONVERTED, REFUSED, TWO_CLASSES, make_adapter, serving
from transformers import pipeline

from peft_vision_lora.cli import main
from peft_vision_lora.demo import build_app, read_run_results


@pytest.fixture(scope="module")
def red_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("uploads") / "red.png"
    PIL.Image.new("RGB", (40, 40), "red").save(path)
    return path


def _labels(label_output: dict) -> list[tuple[str, float]]:
    return [(c["label"], c["confidence"]) for c in label_output.get("confidences", [])]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_uploads_get_a_readable_message_and_the_server_keeps_serving(tiny_adapters, bad_images, red_png):
    with serving(build_app([tiny_adapters["colours"]], top_k=3)) as url:
        client = Client(url, verbose=False)
        good = client.predict("colours", handle_file(red_png), api_name="/classify")
        assert len(_labels(good[0])) == 3 and "Latency:" in good[1]
        for kind in REFUSED:
            labels, status = client.predict("colours", handle_file(bad_images[kind]), api_name="/classify")
            assert not _labels(labels) and status.startswith("**Cannot classify this file:**"), (kind, status)
            assert client.predict("colours", handle_file(red_png), api_name="/classify") == (good[0], _any(good[1]))
        for kind in CONVERTED:
            labels, status = client.predict("colours", handle_file(bad_images[kind]), api_name="/classify")
            assert len(_labels(labels)) == 3 and "Note:" in status, (kind, status)


class _any:  # noqa: N801 - equals any latency line: only the labels must repeat exactly
    def __init__(self, like: str):
        self.like = like

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith("**Latency:**")


def test_batch_gives_a_table_and_a_csv(tiny_adapters, bad_images, red_png):
    with serving(build_app([tiny_adapters["colours"], tiny_adapters["pets"]])) as url:
        client = Client(url, verbose=False)
        files = [handle_file(red_png), handle_file(bad_images["not_an_image"]), handle_file(bad_images["cmyk"])]
        table, csv_path, summary = client.predict("pets", files, api_name="/classify_batch")
    rows = table["data"]
    assert [row[0] for row in rows] == ["red.png", "notes.jpg", "cmyk.jpg"]
    assert rows[0][1] in ("cat", "dog") and 0.5 <= rows[0][2] <= 1
    assert rows[1][1] == "" and rows[1][3].startswith("not classified: not an image file")
    assert "CMYK" in rows[2][3]
    assert summary.startswith("2 of 3 images classified by `pets`")
    with open(csv_path, newline="", encoding="utf-8") as f:
        written = list(csv.reader(f))
    assert written[0] == ["file", "top label", "score", "note"] and [r[0] for r in written[1:]] == [r[0] for r in rows]


def test_results_tab_reads_the_run_folder_and_names_what_is_missing(tiny_adapters):
    full = read_run_results(tiny_adapters["colours"])
    assert full.curves.name == "training_curves.png" and full.confusion.name == "confusion_matrix.png"
    assert full.per_class == [("red", 1.0), ("green", 0.9), ("blue", 0.8)] and full.split == "test"
    assert full.card.startswith("# LoRA image classifier") and full.missing == ["mistakes.png"]
    assert "peft-vision-lora evaluate" in full.missing_message()
    bare = read_run_results(tiny_adapters["pets"])
    assert bare.curves is bare.confusion is bare.per_class is None
    assert "`training_curves.png`" in bare.missing_message() and "`confusion_matrix.png`" in bare.missing_message()


def test_demo_command_binds_localhost_unless_told(tiny_adapters, monkeypatch, capsys):
    from peft_vision_lora.demo import app

    calls = []
    monkeypatch.setattr(app, "launch", lambda models, **kwargs: calls.append((models, kwargs)))
    assert main(["demo", str(tiny_adapters["pets"])]) == 0
    assert main(["demo", str(tiny_adapters["pets"]), "--host", "0.0.0.0", "--port", "8001", "--top_k", "2"]) == 0
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 7860 and calls[0][1]["top_k"] == 5
    assert calls[1][1]["host"] == "0.0.0.0" and calls[1][1]["port"] == 8001 and calls[1][1]["top_k"] == 2
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "127.0.0.1" in capsys.readouterr().out.replace("\n", " ")


@pytest.mark.slow
@pytest.mark.shared
def test_eight_concurrent_requests_match_sequential_ones(flowers_run, shared_vit, flowers12, tmp_path):
    """8 threads against one adapter and against two (same real backbone): the labels and scores of sequential calls.

    Prints the measured requests/s (run with -s to see it).
    """
    other = make_adapter(shared_vit, tmp_path / "three-way", ["a", "b", "c"], seed=3, results=False, image_size=56)
    photos = [sorted((flowers12 / "test" / name).glob("*.jpg"))[i] for i in range(3) for name in TWO_CLASSES]
    # The three-way adapter is random: its expected top labels are those the stock pipeline gives on its folder.
    stock = pipeline("image-classification", model=str(other))
    three_way_label = {photo: stock(str(photo), top_k=1)[0]["label"] for photo in photos}
    app = build_app([flowers_run, other], top_k=3)
    flowers, three_way = app.demo_models.names
    with serving(app) as url:
        clients = [Client(url, verbose=False) for _ in range(8)]

        def call(job: tuple[int, str, Path]) -> list[tuple[str, float]]:
            i, name, photo = job
            return _labels(clients[i % 8].predict(name, handle_file(photo), api_name="/classify")[0])

        rates = {}
        for case, models in (("one adapter", [flowers]), ("two adapters", [flowers, three_way])):
            jobs = [(i, models[i % len(models)], photo) for i, photo in enumerate(photos * 2)]
            start = time.perf_counter()
            sequential = [call(job) for job in jobs]
            rates[f"{case}, sequential"] = len(jobs) / (time.perf_counter() - start)
            for labels, (_, name, photo) in zip(sequential, jobs):
                assert labels[0][0] == (photo.parent.name if name == flowers else three_way_label[photo])
                assert {label for label, _ in labels} <= ({*TWO_CLASSES} if name == flowers else {"a", "b", "c"})
            with ThreadPoolExecutor(8) as pool:
                start = time.perf_counter()
                concurrent = list(pool.map(call, jobs))
                rates[f"{case}, 8 threads"] = len(jobs) / (time.perf_counter() - start)
            assert concurrent == sequential, case
    print("\ndemo requests/s: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()))
