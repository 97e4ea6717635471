"""``peft-vision-lora demo``: a Gradio page for adapter folders or Hub ids (install the ``demo`` extra).

:class:`DemoModels` and the results reader need no gradio; :func:`build_app` and :func:`launch` import it on first use,
so neither ``import peft_vision_lora`` nor ``import peft_vision_lora.demo`` loads gradio.
"""

from ..evaluation.examples import example_images
from .models import DemoModels, read_image, resolve_run_folder
from .results import RunResults, read_run_results

_APP_NAMES = {"build_app", "launch", "DEFAULT_HOST", "DEFAULT_PORT"}


def __getattr__(name: str):
    if name in _APP_NAMES:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DemoModels",
    "RunResults",
    "build_app",
    "example_images",
    "launch",
    "read_image",
    "read_run_results",
    "resolve_run_folder",
]
