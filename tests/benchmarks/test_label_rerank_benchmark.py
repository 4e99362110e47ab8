"""benchmarks.label_rerank: one row by cosine alone and one per pool (nearest and value candidates), quality
and latency measured on the same queries; nearest counts that cover the whole gallery rank alike."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from realdata import real_subset

from benchmarks.label_rerank import CANDIDATES, VALUE_CANDIDATES, main
from export.label_probe import RerankChoice, attach_rerank, fit_probe
from fashsdk import Retriever
from fashsdk.tasks.label_rerank import LabelRerank


def test_the_sweep_reports_each_candidate_count_beside_cosine_alone(bundle_copy: Path, real_index_dir: Path,
                                                                     real_retriever: Retriever, tmp_path: Path) -> None:
    folder, labels = real_subset(tmp_path, 100)  # the photos the real index holds; their test split is the gallery
    _, vectors, codes = real_retriever.index.vectors_and_codes()
    weights, bias = fit_probe(vectors, codes, real_retriever.schema.sizes, steps=100)
    rerank = LabelRerank(weights, bias, tuple(real_retriever.schema.sizes), 0.2, 0.2, 7, value_candidates=5)
    attach_rerank(bundle_copy, RerankChoice(rerank, np.zeros(1, bool), {(0.2, 0.2): np.ones(1, bool)}, {}))
    out = tmp_path / "sweep.json"
    assert main(["--bundle", str(bundle_copy), "--index", str(real_index_dir), "--labels", str(labels), "--images",
                 str(folder), "--json", str(out), "--max-queries", "300", "--pair-queries", "100",
                 "--latency-queries", "10", "--rounds", "1"]) == 0
    report = json.loads(out.read_text())
    family = Retriever(bundle_copy).family.name
    pools = sorted({*((k, 5) for k in CANDIDATES), *((7, m) for m in VALUE_CANDIDATES)})
    assert list(report["rows"]) == [family] + [f"{family}+rerank {k}+{m}" for k, m in pools]
    assert report["served_candidates"] == 7 and report["served_value_candidates"] == 5
    assert report["gallery"] < CANDIDATES[0]
    rows = report["rows"]
    for name, row in rows.items():
        assert 0 <= row["top10"] <= row["top30"] <= 1 and row["p50_ms"] > 0
        assert set(row["per_attribute_top30"]) <= set(report["attributes"]) and row["per_attribute_top30"]
        assert all(0 <= v <= 1 for v in row["per_attribute_top30"].values())
    # every count at or above the gallery's size reorders the same candidates: the same figures
    whole = [rows[f"{family}+rerank {k}+5"] for k in CANDIDATES]
    assert all({k: v for k, v in r.items() if k != "p50_ms"} == {k: v for k, v in whole[0].items() if k != "p50_ms"}
               for r in whole)
    assert out.with_suffix(".md").read_text().count("\n|") == len(rows) + 2  # header, rule, one line a row
    with pytest.raises(SystemExit, match="no label rerank"):
        main(["--bundle", str(real_retriever.bundle.directory), "--index", str(real_index_dir), "--labels",
              str(labels), "--images", str(folder), "--json", str(tmp_path / "none.json")])
