"""engines.int8: a calibrated int8 engine built from a real (tiny) bundle on real photos.

Covers: accuracy against fp32, the facts recorded in the manifest, checksum verification of
the new file, backend selection (int8 preferred, fp32 on request), and the two refusals
(accuracy gate, not faster) that leave the bundle untouched. Speed is measured by the build
but never asserted here: the refusal tests move the threshold instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from realdata import real_subset

from engines.calibration import CalibrationReader, even_batch_size, sample_ids
from engines.int8 import (INT8_FILE, Int8Error, Int8Gate, Int8Options, build_int8_engine, grouped_convolutions,
                          output_layers, quantize_model)
from fashsdk import Bundle, BundleError, Retriever

# no speed rule (tests never assert performance) and a gate sized for a 60-image sample
GATE = Int8Gate(images=60, min_speedup=0.0, timing_batch=8, timing_repeats=1, max_top30_change_points=5.0)
OPTIONS = Int8Options(calibration_images=64)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """200 real photos as files and their styles.csv rows (with the real train/test split)."""
    return real_subset(tmp_path_factory.mktemp("int8_catalog"), 200)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, real_bundle_dir: Path,
                catalog: tuple[Path, Path]) -> Path:
    import shutil

    directory = Path(shutil.copytree(real_bundle_dir, tmp_path_factory.mktemp("int8") / "bundle"))
    images, labels = catalog
    build_int8_engine(directory, labels, [str(images)], OPTIONS, GATE)
    return directory


def _photos(catalog: tuple[Path, Path], split: str, n: int) -> list[Path]:
    images, labels = catalog
    return [images / f"{i}.jpg" for i in sample_ids(labels, n, split=split, seed=5)]


def test_int8_embeddings_match_fp32_on_real_photos(int8_bundle: Path, catalog: tuple[Path, Path]) -> None:
    photos = _photos(catalog, "test", 40)
    int8 = Retriever(int8_bundle, threads=1).encode(photos).embedding
    fp32 = Retriever(int8_bundle, backend="onnxruntime-cpu-fp32", threads=1).encode(photos).embedding
    cosine = (int8 * fp32).sum(axis=1)
    assert cosine.min() > 0.99, cosine.min()
    assert not np.array_equal(int8, fp32)  # it really is a different (quantised) model


def test_manifest_records_precision_calibration_accuracy_and_speed(int8_bundle: Path,
                                                                   catalog: tuple[Path, Path]) -> None:
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    entry = next(e for e in manifest["engines"] if e["precision"] == "int8")
    assert entry["backend"] == "onnxruntime" and entry["file"] == INT8_FILE
    assert manifest["files"][INT8_FILE]["bytes"] == (int8_bundle / INT8_FILE).stat().st_size
    calibration = entry["calibration"]
    assert calibration["split"] == "train" and calibration["method"] == "minmax"
    assert calibration["images"] == len(sample_ids(catalog[1], 64, split="train"))
    quant = entry["quantization"]
    assert quant["format"] == "QDQ" and quant["per_channel"] and quant["reduce_range"]
    assert quant["quantized_by_type"]["Conv"] >= 5 and quant["fp32_nodes"]  # output layers kept in fp32
    accuracy = entry["accuracy_vs_fp32"]
    assert accuracy["split"] == "test" and accuracy["mean_cosine"] > 0.99 and accuracy["top30_queries"] > 0
    speed = entry["speed_vs_fp32"]
    assert speed["fp32_ms_per_image"] > 0 and speed["int8_ms_per_image"] > 0 and speed["cpu"]
    assert entry["onnxruntime_version"] and entry["source"]["file"] == "model.onnx"


def test_selection_prefers_int8_and_the_override_picks_fp32(int8_bundle: Path) -> None:
    assert Retriever(int8_bundle, threads=1).backend_name == "onnxruntime-cpu-int8"
    assert Retriever(int8_bundle, backend="onnxruntime-cpu-fp32", threads=1).backend_name == "onnxruntime-cpu-fp32"


def test_a_modified_int8_file_is_refused(int8_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(int8_bundle, tmp_path / "bundle"))
    data = bytearray((copy / INT8_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / INT8_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(copy)


@pytest.mark.parametrize("rule, message", [({"min_mean_cosine": 1.01}, "mean cosine"),
                                           ({"max_top30_change_points": -1.0}, "Top-30 accuracy moved")])
def test_failed_accuracy_gate_leaves_the_bundle_untouched(bundle_copy: Path, catalog: tuple[Path, Path],
                                                          rule: dict, message: str) -> None:
    images, labels = catalog
    before = (bundle_copy / "manifest.json").read_bytes()
    impossible = Int8Gate(images=30, min_speedup=0.0, timing_batch=8, timing_repeats=1, **rule)
    with pytest.raises(Int8Error, match=message):
        build_int8_engine(bundle_copy, labels, [str(images)], Int8Options(calibration_images=32), impossible)
    assert (bundle_copy / "manifest.json").read_bytes() == before
    assert not (bundle_copy / INT8_FILE).exists()


def test_int8_not_faster_is_registered_only_when_forced(bundle_copy: Path, catalog: tuple[Path, Path]) -> None:
    images, labels = catalog
    before = (bundle_copy / "manifest.json").read_bytes()
    demanding = Int8Gate(images=30, min_speedup=1000.0, timing_batch=8, timing_repeats=1, max_top30_change_points=100)
    with pytest.raises(Int8Error, match="not faster"):
        build_int8_engine(bundle_copy, labels, [str(images)], Int8Options(calibration_images=32), demanding)
    assert (bundle_copy / "manifest.json").read_bytes() == before
    entry, _ = build_int8_engine(bundle_copy, labels, [str(images)], Int8Options(calibration_images=32), demanding,
                                 force=True)
    assert entry.facts["forced_although_slower"] is True
    assert Bundle.load(bundle_copy).engine("onnxruntime", "int8") is not None


def test_cli_builds_and_reports(bundle_copy: Path, catalog: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from engines.__main__ import main

    images, labels = catalog
    code = main(["int8", "--bundle", str(bundle_copy), "--labels", str(labels), "--images", str(images),
                 "--calibration-images", "32", "--gate-images", "30", "--min-speedup", "0",
                 "--max-top30-change", "100"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["engine"] == INT8_FILE and report["accuracy_vs_fp32"]["mean_cosine"] > 0.99
    assert main(["int8", "--bundle", str(bundle_copy), "--labels", str(labels), "--method", "nope"]) == 2


def test_depthwise_fp32_quantises_every_convolution_but_the_grouped_ones(tmp_path: Path) -> None:
    import onnx
    import torch

    from fashsdk.sources.preprocess import PreprocessSpec

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),  # depthwise
                              torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 12),), str(path), input_names=["images"], output_names=["out"],
                      dynamic_axes={"images": {0: "batch"}}, opset_version=18, dynamo=False)
    grouped = grouped_convolutions(onnx.load(str(path)))
    assert len(grouped) == 1
    spec = PreprocessSpec(height=16, width=12)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 12, 3), dtype=np.uint8)
    everything = quantize_model(path, tmp_path / "all.onnx", pixels, spec, "images", Int8Options(calibration_images=8))
    kept = quantize_model(path, tmp_path / "dw.onnx", pixels, spec, "images",
                          Int8Options(calibration_images=8, depthwise_fp32=True))
    # the last conv feeds the output and stays fp32 in both; the depthwise one only with the option
    assert everything["quantized_nodes"] == 3 and kept["quantized_nodes"] == 2
    assert len(kept["fp32_nodes"]) == len(everything["fp32_nodes"]) + 1 and set(grouped) <= set(kept["fp32_nodes"])


def test_output_layers_are_the_learner_outputs_and_heads(real_bundle_dir: Path) -> None:
    import onnx

    bundle = Bundle.load(real_bundle_dir)
    model = onnx.load(str(real_bundle_dir / "model.onnx"))
    found = output_layers(model, ("Conv", "Gemm", "MatMul"))
    by_name = {n.name: n for n in model.graph.node}
    assert len(found) == 2 * len(bundle.schema.attributes)  # last learner layer + head, per attribute
    assert all(by_name[name].op_type == "Gemm" for name in found)
    # with only Conv quantised, the last conv still is not an output layer (Gemms follow it)
    assert output_layers(model, ("Conv",)) == []


def test_calibration_sample_is_seeded_split_bound_and_evenly_batched(catalog: tuple[Path, Path]) -> None:
    images, labels = catalog
    first = sample_ids(labels, 50, split="train", seed=3)
    assert first == sample_ids(labels, 50, split="train", seed=3) != sample_ids(labels, 50, split="train", seed=4)
    test_ids = set(sample_ids(labels, 1000, split="test"))
    assert not test_ids & set(first)
    assert not set(sample_ids(labels, 20, split="train", exclude=first)) & set(first)
    assert even_batch_size(300) == 30 and even_batch_size(64) == 32 and even_batch_size(7) == 7
    from engines.calibration import load_pixels
    from fashsdk.sources.preprocess import PreprocessSpec

    spec = PreprocessSpec(40, 32)
    reader = CalibrationReader(load_pixels([str(images)], first, spec), spec, "images")
    shapes = []
    while (feed := reader.get_next()) is not None:
        shapes.append(feed["images"].shape)
    assert len(set(shapes)) == 1 and sum(s[0] for s in shapes) == reader.used == 50
