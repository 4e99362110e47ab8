"""``python -m export demo`` end to end on a few hundred real photos: train, export both families,
serve the one that validates better as OUT/bundle, index, evaluate, examples, outfit head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from realdata import real_subset

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from export import pipeline  # noqa: E402
from export.__main__ import main  # noqa: E402
from fashsdk import Bundle, Retriever  # noqa: E402


def test_the_family_that_validates_better_is_served() -> None:
    assert pipeline.served_adde_family({"val_top30": 0.80, "val_top30_chunk_replace": 0.82}) == "chunk_replace"
    assert pipeline.served_adde_family({"val_top30": 0.82, "val_top30_chunk_replace": 0.82}) == "adde"  # ties: adde
    assert pipeline.served_adde_family({"val_top30": 0.5}) == "adde"  # no chunk_replace score (other families)


def test_chunk_replace_is_served_only_when_its_lead_is_beyond_the_validation_noise() -> None:
    # a lead like a 96x72 demo run's: chunk_replace 0.3 points ahead on validation (1.7 behind on test)
    close = {"val_top30": 0.890, "val_top30_chunk_replace": 0.893, "val_top30_chunk_replace_lead": 0.003,
             "val_top30_chunk_replace_lead_se": 0.0035}
    assert pipeline.served_adde_family(close) == "adde"
    clear = {**close, "val_top30_chunk_replace": 0.91, "val_top30_chunk_replace_lead": 0.02}
    assert pipeline.served_adde_family(clear) == "chunk_replace"


def test_chunk_replace_with_a_chosen_emphasis_is_served_as_fsn() -> None:
    # the 128x96 demo's validation: adde 0.892, chunk_replace 0.883, weighted x2 0.900 (0.8 points ahead)
    weighted = {"val_top30": 0.892, "val_top30_chunk_replace": 0.883, "val_top30_weighted": 0.900,
                "chunk_emphasis": 2.0, "val_top30_chunk_replace_lead": 0.008, "val_top30_chunk_replace_lead_se": 0.002}
    assert pipeline.served_adde_family(weighted) == "fsn"
    assert pipeline.served_adde_family({**weighted, "val_top30_chunk_replace_lead_se": 0.005}) == "adde"
    assert pipeline.served_adde_family({**weighted, "chunk_emphasis": 1.0}) == "chunk_replace"


@pytest.mark.parametrize("served", ["adde", "chunk_replace", "fsn"])
def test_demo_serves_the_chosen_family_and_evaluates_the_other(served: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder, labels = real_subset(tmp_path, 400)
    monkeypatch.setattr(pipeline, "served_adde_family", lambda best: served)
    out = tmp_path / "run"
    (out / "bundle-adde").mkdir(parents=True)  # a stale output of an earlier run is replaced, never mixed in
    (out / "bundle-adde" / "stale.txt").write_text("old")
    assert main(["demo", "--labels", str(labels), "--images", str(folder), "--attributes", "gender",
                 "masterCategory", "baseColour", "--min-count", "15", "--backbone", "compact", "--input-size", "40",
                 "32", "--width", "8", "--dim", "16", "--stage1-steps", "30", "--stage1-time-budget-s", "20",
                 "--stage2-epochs", "2", "--stage2-time-budget-s", "5", "--batch-p", "8", "--batch-k", "4",
                 "--batch-random", "16", "--stage2-batch", "64", "--val-queries", "200", "--cache",
                 str(tmp_path / "cache"), "--out", str(out)]) == 0
    others = {"adde": "bundle-adde", "chunk_replace": "bundle-chunk-replace"}
    others.pop(served, None)
    assert Bundle.load(out / "bundle").family_name == served
    for family, directory in others.items():
        assert Bundle.load(out / directory).family_name == family
    assert not (out / "bundle-adde" / "stale.txt").exists()
    assert {"adde": not (out / "bundle-adde").exists(), "chunk_replace": not (out / "bundle-chunk-replace").exists(),
            "fsn": True}[served]
    report = json.loads((out / "report.json").read_text())
    assert report["served_family"] == served
    assert {"val_top30", "val_top30_chunk_replace", "val_top30_weighted", "chunk_emphasis",
            "val_top30_by_chunk_emphasis"} <= set(report["validation"])
    if served == "fsn":  # the emphasis training chose, on the changed attribute's chunk only
        weights = Bundle.load(out / "bundle").family_array("attribute_weights")
        emphasis = report["validation"]["chunk_emphasis"]
        assert np.allclose(np.diag(weights), emphasis) and np.allclose(weights[~np.eye(3, dtype=bool)], 1.0)
        # `export onnx` on the demo's checkpoint exports the family training chose, with the same weights
        assert main(["onnx", "--checkpoint", str(out / "checkpoint"), "--labels", str(labels), "--images", str(folder),
                     "--reference-per-value", "20", "--parity-images", "8", "--out", str(tmp_path / "onnx")]) == 0
        exported = Bundle.load(tmp_path / "onnx")
        assert exported.family_name == "fsn" and np.array_equal(exported.family_array("attribute_weights"), weights)
    quality = json.loads((out / "quality.json").read_text())
    # mean_swap is read from the chunk_replace bundle; adde is evaluated as a bundle only when it is not served
    served_row = {"fsn": "chunk_replace_weighted"}.get(served, served)  # fsn over an ADDE model
    assert quality["rows"] == ([served_row] + ([] if served == "adde" else ["adde"])
                               + ["mean_swap", "attribute_based", "no_manipulation"])
    chunk_dir = out / ("bundle" if served == "chunk_replace" else "bundle-chunk-replace")
    assert quality["mean_swap_means"] == str(chunk_dir.resolve())
    if served == "chunk_replace":  # the served bundle and mean_swap are one method on one table
        assert quality["top_k"]["chunk_replace"] == quality["top_k"]["mean_swap"]
    hits = Retriever(out / "bundle", out / "index").search(report["examples"][0]["query"], k=3)
    assert len(hits) == 3
