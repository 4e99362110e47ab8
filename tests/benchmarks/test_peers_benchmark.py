"""benchmarks.peers at toy size: every method answers the same queries, recall is measured
against the exact scan, the fastest setting per recall target is read off correctly, and the
report names the embedding's shape."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the real bundle fixture exports a model
from benchmarks.peers import embedding_shape, fastest_at, main  # noqa: E402


def test_fastest_at_takes_the_quickest_setting_that_reaches_the_recall() -> None:
    rows = [{"n": 10, "method": "a", "recall_at_10": 0.99, "p50_ms": 0.3},
            {"n": 10, "method": "a", "recall_at_10": 0.97, "p50_ms": 0.1},
            {"n": 10, "method": "a", "recall_at_10": 0.985, "p50_ms": 0.2},
            {"n": 10, "method": "b", "recall_at_10": 0.90, "p50_ms": 0.05}]
    assert fastest_at(rows, 0.98) == {(10, "a"): 0.2, (10, "b"): None}
    assert fastest_at(rows, 0.95) == {(10, "a"): 0.1, (10, "b"): None}


def test_embedding_shape_reports_chunk_shares_and_random_cosines() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 4)) * 3, rng.normal(size=(500, 4))], 1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    shape = embedding_shape(x.astype(np.float32), [(0, 4), (4, 8)], ["big", "small"])
    shares = shape["chunk_share_of_squared_norm"]
    assert shares["big"] > 0.8 and abs(shares["big"] + shares["small"] - 1) < 0.01
    assert abs(shape["random_pair_cosine_mean"]) < 0.1


def test_the_benchmark_measures_every_method_against_the_exact_scan(tmp_path: Path, real_bundle_dir: Path,
                                                                   real_index_dir: Path) -> None:
    out = tmp_path / "peers.json"
    assert main(["--bundle", str(real_bundle_dir), "--index", str(real_index_dir), "--sizes", "3000",
                 "--queries", "60", "--latency-queries", "30", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    methods = {r["method"] for r in result["rows"]}
    assert {"fashsdk", "hnswlib", "exact numpy scan"} <= methods
    for row in result["rows"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and row["p50_ms"] > 0
    best = {m: max(r["recall_at_10"] for r in result["rows"] if r["method"] == m) for m in methods}
    assert best["fashsdk"] >= 0.9 and best["hnswlib"] >= 0.9 and best["exact numpy scan"] == 1.0
    assert sum(result["embedding"]["chunk_share_of_squared_norm"].values()) == pytest.approx(1.0, abs=0.01)
    md = out.with_suffix(".md").read_text()
    assert "Fastest p50 (ms) at recall@10 >= 0.98" in md and "| fashsdk |" in md
