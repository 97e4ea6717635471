import pytest
import torch

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
