"""benchmarks.peers_tasks at toy size: ``similar`` and ``where`` are measured against hnswlib (and
faiss/usearch when installed) and the exact scans, with recall against the right ground truth
(the chunk scan; the filtered scan), and each task gets its own report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")  # the real bundle fixture exports a model
from benchmarks.peers_tasks import main, pick_value  # noqa: E402


def test_pick_value_takes_the_share_closest_to_the_target() -> None:
    codes = np.stack([np.r_[np.zeros(90, int), np.ones(10, int)], np.r_[np.zeros(50, int), np.ones(50, int)]], 1)
    assert pick_value(codes, 0.10) == (0, 1, 0.10)
    assert pick_value(codes, 0.45)[2] == 0.5


def test_similar_and_where_are_measured_against_peers(tmp_path: Path, real_bundle_dir: Path,
                                                      real_index_dir: Path) -> None:
    out = tmp_path / "tasks.json"
    assert main(["--bundle", str(real_bundle_dir), "--index", str(real_index_dir), "--sizes", "3000",
                 "--queries", "60", "--latency-queries", "30", "--rounds", "2", "--json", str(out)]) == 0
    results = [json.loads(f.read_text()) for f in sorted(tmp_path.glob("tasks-*.json"))]
    tasks = [r["task"] for r in results]
    assert "similar" in tasks and sum(t.startswith("where ") for t in tasks) == 2
    for result in results:
        best = {}
        for row in result["rows"]:
            assert 0.0 <= row["recall_at_10"] <= 1.0 and row["p50_ms"] > 0
            best[row["method"]] = max(best.get(row["method"], 0.0), row["recall_at_10"])
        assert best["exact numpy scan"] == 1.0 and best["fashsdk"] >= 0.9
        if result["task"] == "similar":
            assert best["hnswlib"] >= 0.9
        else:  # the callback filters too; an unfiltered search would miss most of the filtered truth
            assert best["hnswlib filter callback"] >= 0.9
        md = Path(str(tmp_path / f"tasks-{result['task'].split(' (')[0].replace(' = ', '-').replace(' ', '-').lower()}.md"))
        assert md.read_text().startswith("# Vector search peers") and result["task"] in md.read_text()
