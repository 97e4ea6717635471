"""The Gradio page: classify an image (or a batch), and the training run's results, for one or several adapters.

This is the only module that imports gradio (the ``demo`` extra); ``import peft_vision_lora`` never loads it.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from ..data.images import BadImageError
from ..evaluation.examples import EXAMPLES_DIR, example_images
from .models import DemoModels, read_image
from .results import read_run_results

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
BATCH_COLUMNS = ["file", "top label", "score", "note"]
BATCH_CHUNK = 16  # images per model call in the batch tab


def image_input(**kwargs: Any) -> gr.Image:
    """``gr.Image`` (upload, paste, drop) that hands the uploaded file to the demo unopened.

    ``gr.Image`` opens every upload with PIL before the event runs, so a file that is not an image fails there with
    a generic error; the demo reads the file itself and answers with a readable message instead. The override is
    per instance: a subclass would make gradio write a ``.pyi`` stub next to this module at import time.
    """
    image = gr.Image(type="filepath", **kwargs)
    opened = image.preprocess

    def preprocess(payload: Any) -> str | None:
        if payload is None or getattr(payload, "path", None) is None:
            return opened(payload)  # nothing uploaded, or a data: URL (a webcam snapshot)
        return str(payload.path)

    image.preprocess = preprocess
    return image


def _status(name: str, seconds: float, notes: Sequence[str]) -> str:
    lines = [f"**Latency:** {seconds * 1000:.0f} ms (decode, preprocess and forward) · model `{name}`"]
    lines += [f"Note: {note}" for note in notes]
    return "\n\n".join(lines)


def _refusal(reason: str) -> str:
    return f"**Cannot classify this file:** {reason}"


MAX_LISTED_LABELS = 12


def _label_list(labels: Sequence[str]) -> str:
    shown = ", ".join(labels[:MAX_LISTED_LABELS])
    return shown + (f" and {len(labels) - MAX_LISTED_LABELS} more" if len(labels) > MAX_LISTED_LABELS else "")


def page_title(models: DemoModels) -> str:
    """The task the page serves: the model's name and its classes (several models: their names)."""
    if len(models.names) > 1:
        return " · ".join(models.names)
    name = models.names[0]
    return f"{name}: {len(models.labels(name))} classes"


def _intro(models: DemoModels) -> str:
    if len(models.names) == 1:
        return f"Classes: {_label_list(models.labels(models.names[0]))}."
    return "\n\n".join(f"`{name}` classes: {_label_list(models.labels(name))}." for name in models.names)


def build_app(
    models: Sequence[str | os.PathLike] | DemoModels,
    *,
    top_k: int = 5,
    title: str | None = None,
    base_model: str | None = None,
) -> gr.Blocks:
    """The demo page for adapter folders or Hub ids (one shared backbone; a selector when there are several).

    ``title`` defaults to the task: the folder's name and its number of classes (:func:`page_title`).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not isinstance(models, DemoModels):
        models = DemoModels(models, base_model=base_model)
    # Serve the run folders' plots and example images without copying them around.
    gr.set_static_paths(paths=[str(folder) for folder in models.folders.values()])
    first = models.names[0]

    def classify(name: str, path: str | None) -> tuple[dict[str, float] | None, str]:
        if path is None:
            return None, ""
        try:
            predictions, image, seconds = models.classify(name, path, top_k)
        except BadImageError as error:
            return None, _refusal(error.reason)
        except Exception as error:  # the page must answer, and the server keep serving
            logger.exception("Classifying %s failed", path)
            return None, _refusal(f"{type(error).__name__}: {error}")
        return {p["label"]: p["score"] for p in predictions}, _status(name, seconds, image.notes)

    def classify_batch(name: str, paths: list[str] | None) -> tuple[list[list[Any]], str | None, str]:
        if not paths:
            return [], None, ""
        rows: list[list[Any]] = [[Path(p).name, "", None, ""] for p in paths]
        readable = []
        for i, path in enumerate(paths):
            try:
                image = read_image(path, name=Path(path).name)
            except BadImageError as error:
                rows[i][3] = f"not classified: {error.reason}"
                continue
            rows[i][3] = " ".join(image.notes)
            readable.append((i, image))
        for start in range(0, len(readable), BATCH_CHUNK):
            chunk = readable[start : start + BATCH_CHUNK]
            for (i, _), top in zip(chunk, models.predict(name, [image for _, image in chunk], top_k=1)):
                rows[i][1], rows[i][2] = top[0]["label"], round(top[0]["score"], 4)
        csv_path = Path(tempfile.mkdtemp(prefix="pvl-demo-")) / "predictions.csv"
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(BATCH_COLUMNS)
            writer.writerows(rows)
        refused = sum(1 for row in rows if row[1] == "")
        summary = f"{len(rows) - refused} of {len(rows)} images classified by `{name}`."
        if refused:
            summary += f" {refused} could not be read (see the note column)."
        return rows, str(csv_path), summary

    def show_results(name: str) -> tuple[Any, ...]:
        results = read_run_results(models.folders[name])
        header = [f"### Results of `{name}`", results.accuracy_message()]
        if results.missing:
            header.append(results.missing_message())
        table = [[label, f"{100 * acc:.1f}%"] for label, acc in results.per_class or []]

        def image(path: Path | None) -> Any:
            return gr.Image(value=str(path) if path else None, visible=path is not None)

        return (
            "\n\n".join(header),
            image(results.curves),
            image(results.confusion),
            image(results.mistakes),
            gr.Dataframe(
                value=table,
                visible=results.per_class is not None,
                label=f"Per-class accuracy ({results.split} split)" if results.split else "Per-class accuracy",
            ),
            results.card or "",
        )

    examples = [str(p) for folder in models.folders.values() for p in example_images(folder)]
    title = title or page_title(models)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\n\n{_intro(models)}", elem_id="pvl-title")
        selector = gr.Dropdown(
            choices=models.names, value=first, label="Model", visible=len(models.names) > 1, elem_id="pvl-model"
        )
        with gr.Tab("Classify", elem_id="pvl-tab-classify"), gr.Row():
            with gr.Column():
                image = image_input(
                    sources=["upload", "clipboard"],
                    label="Image (upload, paste or drop)",
                    elem_id="pvl-image",
                )
                if examples:
                    gr.Examples(examples=examples, inputs=image, label="Examples (click one)", elem_id="pvl-examples")
                else:
                    gr.Markdown(
                        f"No example images: the folder has no `{EXAMPLES_DIR}/`. `peft-vision-lora evaluate FOLDER "
                        f"--dataset DATA` writes one image per class of the evaluated split there.",
                        elem_id="pvl-no-examples",
                    )
            with gr.Column():
                labels = gr.Label(num_top_classes=top_k, label="Top labels", elem_id="pvl-labels")
                status = gr.Markdown(elem_id="pvl-status")
        with gr.Tab("Batch", elem_id="pvl-tab-batch"):
            files = gr.File(file_count="multiple", type="filepath", label="Images", elem_id="pvl-batch-files")
            run_batch = gr.Button("Classify all", variant="primary", elem_id="pvl-batch-run")
            batch_status = gr.Markdown(elem_id="pvl-batch-status")
            table = gr.Dataframe(headers=BATCH_COLUMNS, label="Predictions", elem_id="pvl-batch-table")
            csv_file = gr.File(label="Download CSV", elem_id="pvl-batch-csv")
        with gr.Tab("Training results", elem_id="pvl-tab-results"):
            results_header = gr.Markdown(elem_id="pvl-results-header")
            curves = gr.Image(label="Training curves", interactive=False, elem_id="pvl-curves")
            with gr.Row():
                confusion = gr.Image(label="Confusion matrix", interactive=False, elem_id="pvl-confusion")
                mistakes = gr.Image(label="Most confident mistakes", interactive=False, elem_id="pvl-mistakes")
            per_class = gr.Dataframe(headers=["class", "accuracy"], label="Per-class accuracy", elem_id="pvl-per-class")
            card = gr.Markdown(elem_id="pvl-card")

        result_outputs = [results_header, curves, confusion, mistakes, per_class, card]
        image.change(classify, [selector, image], [labels, status], api_name="classify")
        run_batch.click(classify_batch, [selector, files], [table, csv_file, batch_status], api_name="classify_batch")
        selector.change(show_results, selector, result_outputs, api_name=False).then(
            classify, [selector, image], [labels, status], api_name=False
        )
        app.load(show_results, selector, result_outputs, api_name=False)
    app.demo_models = models  # for callers (and tests) that want the loaded classifiers
    return app


def launch(
    models: Sequence[str | os.PathLike],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    top_k: int = 5,
    base_model: str | None = None,
    **launch_kwargs: Any,
) -> gr.Blocks:
    """Build the page and serve it on ``host:port`` (this machine only by default); blocks unless told otherwise."""
    app = build_app(models, top_k=top_k, base_model=base_model)
    # A few requests at a time: model calls are thread-safe, and more concurrent forwards than cores only thrash.
    app.queue(default_concurrency_limit=4)
    app.launch(server_name=host, server_port=port, show_error=True, **launch_kwargs)
    return app
