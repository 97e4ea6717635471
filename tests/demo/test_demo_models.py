"""DemoModels and read_image: adapters on one backbone, awkward uploads refused in words or converted."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import PIL.Image
import pytest
from helpers.demo import CONVERTED, REFUSED

from peft_vision_lora.data.images import BadImageError
from peft_vision_lora.demo import DemoModels, read_image

REASONS = {
    "not_an_image": "not an image file",
    "truncated": "truncated",
    "one_pixel": "1x1 pixels",
    "bomb": "decompression-bomb limit",
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", REFUSED)
def test_refused_uploads_say_why(bad_images, kind):
    with pytest.raises(BadImageError) as info:
        read_image(bad_images[kind])
    assert REASONS[kind] in info.value.reason


@pytest.mark.parametrize("kind", CONVERTED)
def test_sixteen_bit_and_cmyk_are_converted_and_noted(bad_images, kind):
    image = read_image(bad_images[kind])
    assert image.image.mode == "RGB" and image.image.size == (128, 96)
    assert image.notes and ("16-bit" in image.notes[0] or "CMYK" in image.notes[0])
    if kind == "sixteen_bit":  # scaled to 8 bits, not clipped to white
        assert 20 < sum(image.image.convert("L").getdata()) / (128 * 96) < 235


def test_adapters_share_one_backbone_with_their_own_labels(tiny_adapters):
    models = DemoModels([tiny_adapters["colours"], tiny_adapters["pets"]])
    assert models.names == ["colours", "pets"]
    assert models.labels("colours") == ["red", "green", "blue"] and models.labels("pets") == ["cat", "dog"]
    image = PIL.Image.new("RGB", (40, 40), "red")
    colours, pets = models.predict("colours", [image], top_k=5)[0], models.predict("pets", [image], top_k=5)[0]
    assert [p["label"] for p in pets] != [p["label"] for p in colours]
    assert len(colours) == 3 and len(pets) == 2 and abs(sum(p["score"] for p in colours) - 1) < 1e-5
    with pytest.raises(KeyError, match="Unknown model 'birds'"):
        models.predict("birds", [image])


def test_same_folder_twice_gets_two_names(tiny_adapters):
    assert DemoModels([tiny_adapters["pets"], tiny_adapters["pets"]]).names == ["pets", "pets (2)"]


def test_refuses_a_folder_that_is_not_an_adapter(tiny_models):
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        DemoModels([tiny_models["vit"]])


def test_concurrent_calls_match_sequential_ones(tiny_adapters):
    """Threads calling two adapters at once get exactly the sequential answers (the calls are serialised)."""
    models = DemoModels([tiny_adapters["colours"], tiny_adapters["pets"]])
    images = [PIL.Image.new("RGB", (40, 40), (30 * i, 200 - 20 * i, 90)) for i in range(8)]
    jobs = [("colours" if i % 2 else "pets", image) for i, image in enumerate(images)]
    sequential = [models.predict(name, [image], top_k=2) for name, image in jobs]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda job: models.predict(job[0], [job[1]], top_k=2), jobs * 4))
    assert concurrent == sequential * 4


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_package_does_not_import_gradio():
    import subprocess

    code = "import sys, peft_vision_lora, peft_vision_lora.demo; print('gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
