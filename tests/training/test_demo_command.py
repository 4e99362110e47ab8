"""``python -m export demo`` end to end on a few hundred real photos: train, export both families,
serve the one that validates better as OUT/bundle, index, evaluate, examples, outfit head."""
from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.parametrize("served", ["adde", "chunk_replace"])
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
    other, other_dir = ("chunk_replace", "bundle-chunk-replace") if served == "adde" else ("adde", "bundle-adde")
    assert Bundle.load(out / "bundle").family_name == served
    assert Bundle.load(out / other_dir).family_name == other
    assert not (out / "bundle-adde" / "stale.txt").exists()
    assert not (out / ("bundle-adde" if served == "adde" else "bundle-chunk-replace")).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["served_family"] == served
    assert {"val_top30", "val_top30_chunk_replace"} <= set(report["validation"])
    quality = json.loads((out / "quality.json").read_text())
    # mean_swap is read from the chunk_replace bundle; adde is evaluated as a bundle only when it is not served
    assert quality["rows"] == ([served] + ([] if served == "adde" else ["adde"])
                               + ["mean_swap", "attribute_based", "no_manipulation"])
    chunk_dir = out / ("bundle-chunk-replace" if served == "adde" else "bundle")
    assert quality["mean_swap_means"] == str(chunk_dir.resolve())
    if served == "chunk_replace":  # the served bundle and mean_swap are one method on one table
        assert quality["top_k"]["chunk_replace"] == quality["top_k"]["mean_swap"]
    hits = Retriever(out / "bundle", out / "index").search(report["examples"][0]["query"], k=3)
    assert len(hits) == 3
