"""benchmarks.stage2_variants: every stage-2 variant runs from the same stage-1 state and is measured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from realdata import real_subset

torch = pytest.importorskip("torch")

from benchmarks.stage2_variants import VARIANTS, main  # noqa: E402
from export.train import load_checkpoint  # noqa: E402


def test_each_variant_starts_from_one_stage1_and_is_reported(tmp_path: Path) -> None:
    folder, labels = real_subset(tmp_path, 300)
    out = tmp_path / "out"
    code = main(["--out", str(out), "--", "--labels", str(labels), "--images", str(folder),
                 "--attributes", "gender", "masterCategory", "--min-count", "10", "--backbone", "compact",
                 "--input-size", "40", "32", "--width", "8", "--dim", "8", "--stage1-steps", "6", "--eval-every", "6",
                 "--stage2-epochs", "3", "--stage2-batch", "16", "--batch-p", "4", "--batch-k", "2",
                 "--batch-random", "8", "--val-queries", "50", "--cache", str(tmp_path / "cache")])
    assert code == 0
    report = json.loads((out / "stage2-variants.json").read_text())
    rows = report["variants"]
    assert [r["variant"] for r in rows] == ["memory by averaging (no stage 2)", *VARIANTS]
    start = rows[0]
    for row in rows[1:]:
        assert 1 <= len(row["val_curve"]) <= 3
        # each variant began at the averaged memory's score: stage 2 keeps its best state, never a worse one
        assert row["val_top30"] >= start["val_top30"]
        for key in ("test_top10", "test_top30", "val_top30_blend", "test_top30_blend"):
            assert 0.0 <= row[key] <= 1.0
        assert row["test_top10"] <= row["test_top30"]
    md = (out / "stage2-variants.md").read_text()
    assert all(r["variant"] in md for r in rows)
    # the checkpoint keeps the default stage 2, and the patched training functions were restored
    _, _, _, config = load_checkpoint(out / "checkpoint")
    assert config["train"]["stage2_memory_only"] is False
    import export.train as train_module
    from export.stage2 import stage2
    assert train_module.stage2 is stage2
