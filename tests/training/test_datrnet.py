"""DAtRNet as a served family: the architecture's defining pieces, its query arithmetic on
hand-made cases, and end to end on real photos through the documented commands
(``python -m export train --family datrnet``, ``python -m export onnx``), served by
``Retriever`` with parity, an int8 engine and a manipulation that finds the wanted value.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from int8_check import assert_int8_engine_serves  # noqa: E402
from family_run import indexed, train_and_export  # noqa: E402
from manipulation import wanted_value_counts  # noqa: E402

from export.datrnet import ASEModule, AxialAttention, DAtRNet, ResidualBlock  # noqa: E402
from export.models import ModelConfig, build_model  # noqa: E402
from fashsdk.families.chunk_replace import ChunkReplace  # noqa: E402
from fashsdk.schema import AttributeSchema  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _model(block: str = "ase", sizes: tuple[int, ...] = (3, 2), dim: int = 8) -> DAtRNet:
    config = ModelConfig(architecture="datrnet", backbone="efficientnet-lite0", attribute_sizes=list(sizes), dim=dim,
                         width=8, height_px=64, width_px=48, lite_split=3, pretrained=False, block=block)
    model = build_model(config)
    assert isinstance(model, DAtRNet)
    return model.eval()


def test_each_attribute_has_its_own_network_of_three_ase_modules_with_the_three_masks() -> None:
    model = _model()
    nets = model.backbone.top.nets
    assert len(nets) == 2
    for net in nets:
        modules = [m for m in net.body if isinstance(m, ASEModule)]
        assert len(modules) == 3 and all(isinstance(m.attention, AxialAttention) for m in modules)
    x = torch.randn(3, 3, 64, 48)
    embedding, logits = model(x)
    assert embedding.shape == (3, 16) and logits.shape == (3, 5)
    # chunk a comes from attribute a's network alone: changing network 1 leaves chunk 0 as it was
    with torch.no_grad():
        before = model(x)[0]
        for p in nets[1].parameters():
            p.add_(0.5)
        after = model(x)[0]
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert not torch.allclose(before[:, 8:], after[:, 8:], atol=1e-3)


def test_axial_attention_masks_scale_the_features_by_factors_between_zero_and_one() -> None:
    attention = AxialAttention(channels=6, height=5, width=4).eval()
    x = torch.rand(2, 6, 5, 4) + 0.1
    with torch.no_grad():
        y = attention(x)
    ratio = y / x
    assert ratio.min() > 0 and ratio.max() < 1
    # the height mask varies along H and the width mask along W: the scale is not one number per channel
    assert ratio.std(dim=(2, 3)).min() > 1e-4


def test_the_ablation_blocks_drop_the_attention_or_the_multi_scale_paths() -> None:
    msf = _model("msf")
    assert not any(isinstance(m, AxialAttention) for m in msf.modules())
    assert sum(isinstance(m, ASEModule) for m in msf.modules()) == 6
    residual = _model("residual")
    assert not any(isinstance(m, ASEModule) for m in residual.modules())
    assert sum(isinstance(m, ResidualBlock) for m in residual.modules()) == 6
    with pytest.raises(ValueError, match="unknown DAtRNet block"):
        _model("transformer")


def test_a_trunk_too_deep_for_three_ase_modules_is_refused_with_the_fix() -> None:
    config = ModelConfig(architecture="datrnet", backbone="efficientnet-lite0", attribute_sizes=[2], dim=4,
                         height_px=64, width_px=48, lite_split=12, pretrained=False)
    with pytest.raises(ValueError, match="use 3"):
        build_model(config)


def test_queries_swap_in_the_wanted_values_mean_chunk() -> None:
    """Hand-made: the value means stored in ``memory`` are the runtime's chunk_replace table."""
    model = _model(dim=2)
    schema = AttributeSchema.from_json([{"name": "colour", "values": ["red", "blue", "green"]},
                                                       {"name": "gender", "values": ["men", "women"]}])
    memory = torch.zeros(4, 5)
    memory[0:2, 0] = torch.tensor([0.7, 0.0])   # colour=red
    memory[0:2, 1] = torch.tensor([0.0, 0.7])   # colour=blue
    memory[2:4, 4] = torch.tensor([0.5, 0.5])   # gender=women
    with torch.no_grad():
        model.memory.copy_(memory)
    family = model.query_family(schema)
    assert isinstance(family, ChunkReplace)
    query = np.array([[0.6, 0.0, 0.0, 0.8]], np.float32)  # red, some gender
    changed = family.change_batch(query, np.array([[0, 0]]), np.array([[0]]), np.array([[1]]))  # -> blue
    expected = np.array([0.0, 0.7, 0.0, 0.8]) / np.hypot(0.7, 0.8)
    np.testing.assert_allclose(changed[0], expected, atol=1e-6)
    both = family.change_batch(query, np.array([[0, 0]]), np.array([[0, 1]]), np.array([[1, 1]]))  # blue, women
    np.testing.assert_allclose(both[0], np.array([0.0, 0.7, 0.5, 0.5]) / np.sqrt(0.49 + 0.5), atol=1e-6)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A DAtRNet trained for 40 s on 600 real photos with the documented command, then exported."""
    return train_and_export(tmp_path_factory.mktemp("datrnet"), "datrnet", ["--width", "8"])


def test_training_uses_the_datrnet_defaults_and_exports_chunk_replace_with_parity(exported: dict) -> None:
    config = json.loads((exported["tmp"] / "ckpt" / "config.json").read_text())
    assert config["model"]["architecture"] == "datrnet" and config["model"]["lite_split"] == 3
    assert config["train"]["stage2_epochs"] == 0 and config["train"]["w_label_triplet"] == 0.0
    assert "training datrnet/efficientnet-lite0" in exported["train_log"]
    result = exported["onnx"]
    assert result["family"] == "chunk_replace"
    assert result["parity"]["images"] == 32 and result["parity"]["max_abs_diff"] <= 1e-4
    manifest = json.loads((exported["tmp"] / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["architecture"] == "datrnet"
    assert manifest["family"]["name"] == "chunk_replace"


def test_an_adde_family_export_of_a_datrnet_checkpoint_is_refused(exported: dict) -> None:
    tmp = exported["tmp"]
    done = subprocess.run([sys.executable, "-m", "export", "onnx", "--family", "adde", "--checkpoint", str(tmp / "ckpt"),
                           "--labels", str(exported["labels"]), "--images", str(exported["folder"]),
                           "--out", str(tmp / "wrong")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0 and "chunk_replace" in done.stderr
    assert not (tmp / "wrong" / "manifest.json").exists()


def test_served_manipulation_finds_the_wanted_value_more_often_than_no_change(exported: dict) -> None:
    retriever, catalog = indexed(exported)
    with_change, without, trials = wanted_value_counts(retriever, catalog.ids, catalog.codes, 80, 5)
    assert trials >= 40
    assert with_change > 1.5 * without + trials, (with_change, without, trials)


def test_the_int8_engine_builds_under_the_accuracy_gate_and_serves(exported: dict) -> None:
    # the demo-size DAtRNet's int8 is refused by the default gate (docs/datrnet.md)
    assert_int8_engine_serves(exported["tmp"] / "bundle", exported["labels"], exported["folder"])
