import threading

import pytest
import torch
from helpers.adapters import as_transformers4_adapter
from transformers import ViTForImageClassification

import peft_vision_lora as pvl


@pytest.fixture
def adapters(tiny_models, tmp_path):
    """Two adapters with different label sets on the same DINOv2 backbone."""
    folders = {}
    for name, labels in {"pets": ["cat", "dog", "fox"], "digits": [str(i) for i in range(5)]}.items():
        torch.manual_seed(len(labels))
        model = pvl.build_model(tiny_models["dinov2"], labels, init_lora_weights=False)
        folders[name] = pvl.save_pretrained(model, tmp_path / name)
    return folders


def test_each_adapter_gives_its_own_logits(tiny_models, adapters, pixel_values):
    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    for name, folder in adapters.items():
        served.add_adapter(name, folder)
    for name in ["digits", "pets", "digits"]:  # switching back and forth keeps each adapter intact
        with torch.no_grad():
            alone = pvl.load_model(adapters[name])(pixel_values=pixel_values).logits
        logits = served(pixel_values, adapter=name)
        assert logits.shape == alone.shape
        assert (logits - alone).abs().max() <= 1e-5
    assert served.labels["pets"] == ["cat", "dog", "fox"] and len(served.labels["digits"]) == 5


def test_memory_grows_by_adapter_size_not_backbone(tiny_models, adapters):
    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    served.add_adapter("pets", adapters["pets"])
    one = sum(p.numel() for p in served.parameters())
    served.add_adapter("digits", adapters["digits"])
    two = sum(p.numel() for p in served.parameters())
    digits = pvl.load_model(adapters["digits"])
    lora = sum(p.numel() for n, p in digits.named_parameters() if "lora_" in n)
    head = 32 * 2 * 5 + 5  # DINOv2 classifies [CLS, mean patch] -> 2 * hidden inputs
    assert two - one == lora + head
    backbone = sum(p.numel() for n, p in digits.named_parameters() if "lora_" not in n and "classifier" not in n)
    assert two - one < backbone / 2  # a backbone copy would at least double it


def test_predict_and_unknown_adapter(tiny_models, adapters):
    from PIL import Image

    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    served.add_adapter("pets", adapters["pets"])
    result = served.predict([Image.new("RGB", (40, 30), "red")] * 2, adapter="pets", top_k=2)
    assert len(result) == 2 and len(result[0]) == 2
    assert {r["label"] for r in result[0]} <= {"cat", "dog", "fox"}
    assert sum(r["score"] for r in result[0]) <= 1.0 + 1e-6
    with pytest.raises(KeyError, match="Unknown adapter 'cars'; loaded: pets"):
        served(torch.zeros(1, 3, 32, 32), adapter="cars")
    with pytest.raises(ValueError, match="already loaded"):
        served.add_adapter("pets", adapters["pets"])
    with pytest.raises(KeyError, match="Unknown adapter 'cars'"):
        served(torch.zeros(2, 3, 32, 32), adapter=["pets", "cars"])
    with pytest.raises(ValueError, match="3 adapter names for a batch of 2 images"):
        served(torch.zeros(2, 3, 32, 32), adapter=["pets"] * 3)


def _logits(model, pixel_values):
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def test_stock_peft_and_transformers4_folders_load_like_load_model(tiny_models, tmp_path, pixel_values):
    # Neither folder has our config.json nor a processor; the second also uses transformers 4.x module names.
    from peft import LoraConfig, get_peft_model

    base = ViTForImageClassification.from_pretrained(tiny_models["vit"], num_labels=4, ignore_mismatched_sizes=True)
    config = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(tmp_path / "stock")
    model = pvl.build_model(tiny_models["vit"], ["cat", "dog", "fox"], preset="qv", init_lora_weights=False)
    as_transformers4_adapter(pvl.save_pretrained(model, tmp_path / "current"), tmp_path / "legacy")
    (tmp_path / "legacy" / "preprocessor_config.json").unlink()
    assert not (tmp_path / "stock" / "config.json").exists()

    served = pvl.MultiAdapterClassifier(tiny_models["vit"])
    for name in ("stock", "legacy"):
        served.add_adapter(name, tmp_path / name)
        alone = pvl.load_model(tmp_path / name)
        assert (served(pixel_values, adapter=name) - _logits(alone, pixel_values)).abs().max() <= 1e-5
        assert served.processors[name].to_dict() == alone.vision_lora_image_processor.to_dict()
    assert served.labels == {"stock": [f"LABEL_{i}" for i in range(4)], "legacy": ["cat", "dog", "fox"]}


def test_adapter_checks_of_load_model_apply(tiny_models, adapters, tmp_path):
    # The reader of load_model checks the adapter against the served base: an adapter of another family fails.
    served = pvl.MultiAdapterClassifier(tiny_models["vit"])
    with pytest.raises(ValueError, match="trained on a dinov2 backbone"):
        served.add_adapter("pets", adapters["pets"])
    assert served.adapters == []


def test_mixed_batch_gives_each_image_its_own_adapter(tiny_models, adapters):
    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    for name, folder in adapters.items():
        served.add_adapter(name, folder)
    pixel_values = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    names = ["pets", "digits", "digits", "pets", "digits"]
    rows = served(pixel_values, adapter=names)
    single = {name: served(pixel_values, adapter=name) for name in adapters}
    assert [row.shape[0] for row in rows] == [3, 5, 5, 3, 5]
    for i, (name, row) in enumerate(zip(names, rows)):
        assert (row - single[name][i]).abs().max() <= 1e-5

    from PIL import Image

    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    mixed = served.predict(images, adapter=["digits", "pets", "digits"], top_k=2)
    assert mixed[1] == served.predict(images[1:2], adapter="pets", top_k=2)[0]
    assert mixed[2][0]["label"] in [str(i) for i in range(5)] and mixed[1][0]["label"] in ["cat", "dog", "fox"]


def test_threads_with_different_adapters_give_the_sequential_results(tiny_models, adapters):
    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    for name, folder in adapters.items():
        served.add_adapter(name, folder)
    generator = torch.Generator().manual_seed(4)
    # 8 threads, each with its own adapter (or mix of adapters) and images, all calling at once, repeatedly.
    jobs = [
        (
            torch.randn(3, 3, 32, 32, generator=generator),
            ["pets", "digits"][i % 2] if i < 6 else ["digits", "pets", "pets"],
        )
        for i in range(8)
    ]
    expected = [served(x, adapter=adapter) for x, adapter in jobs]
    results: dict[int, list] = {i: [] for i in range(8)}
    start = threading.Barrier(8)

    def serve(i: int) -> None:
        start.wait()
        x, adapter = jobs[i]
        for _ in range(15):
            results[i].append(served(x, adapter=adapter))

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, (want, got) in enumerate(zip(expected, results.values())):
        assert len(got) == 15
        for logits in got:
            if isinstance(want, list):
                assert all(torch.equal(a, b) for a, b in zip(logits, want)), i
            else:
                assert torch.equal(logits, want), i


def test_dora_adapters_are_served_beside_lora_ones(tiny_models, adapters, tmp_path):
    # PEFT cannot mix DoRA adapters in a batch: their images run one adapter at a time, with identical results.
    torch.manual_seed(0)
    model = pvl.build_model(tiny_models["dinov2"], ["x", "y"], use_dora=True, init_lora_weights=False)
    dora = pvl.save_pretrained(model, tmp_path / "dora")
    served = pvl.MultiAdapterClassifier(tiny_models["dinov2"])
    served.add_adapter("pets", adapters["pets"])
    served.add_adapter("dora", dora)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    rows = served(pixel_values, adapter=["dora", "pets", "dora"])
    alone = _logits(pvl.load_model(dora), pixel_values)
    assert (torch.stack([rows[0], rows[2]]) - alone[[0, 2]]).abs().max() <= 1e-5
    assert (rows[1] - served(pixel_values, adapter="pets")[1]).abs().max() <= 1e-5
