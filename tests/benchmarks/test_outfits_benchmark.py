"""benchmarks.outfits at toy size: on outfits derived from real labels, embedded by the real test
bundle, the label oracle answers every hard fill-in-the-blank question, every method is scored
on the same questions, and outfit items without an embedding are named."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")  # the real bundle fixture exports a model
pytest.importorskip("pyarrow", reason="pyarrow (the shards extra) not installed")
from realdata import real_subset  # noqa: E402

from benchmarks.outfits import auc, main  # noqa: E402
from export.outfit_rules import OutfitRules  # noqa: E402
from export.outfits import write_outfits  # noqa: E402
from fashsdk import Retriever  # noqa: E402

RULES = {"category_column": "masterCategory", "slots": {"wear": ["Apparel"], "feet": ["Footwear"],
                                                        "extra": ["Accessories"]},
         "templates": [{"slots": ["wear", "feet", "extra"], "required": 2}]}


def test_auc_counts_ties_as_half() -> None:
    assert auc([2.0, 3.0], [1.0]) == 1.0 and auc([1.0], [1.0]) == 0.5 and auc([0.0], [1.0, 2.0]) == 0.0


def test_baselines_are_scored_on_derived_outfits(tmp_path: Path, real_bundle_dir: Path, capsys) -> None:
    images, labels = real_subset(tmp_path, 400, shard=2)
    Retriever(real_bundle_dir, threads=1).embed_shards(labels, [images], tmp_path / "shards")
    write_outfits(labels, tmp_path / "outfits", OutfitRules.from_json(RULES), 60, 30, seed=1)
    out = tmp_path / "outfits.json"
    args = ["--bundle", str(real_bundle_dir), "--embeddings", str(tmp_path / "shards"), "--outfits",
            str(tmp_path / "outfits"), "--labels", str(labels), "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["derived"] and result["questions"] > 10
    oracle = result["methods"]["label oracle (the derivation rule)"]
    assert oracle["fitb_hard"] == 1.0 and oracle["compatibility_auc"] > 0.5
    for scores in result["methods"].values():
        assert 0.0 <= scores["fitb_random"] <= 1.0 and 0.0 <= scores["compatibility_auc"] <= 1.0
    assert "DERIVED" in out.with_suffix(".md").read_text()
    other = tmp_path / "few"
    Retriever(real_bundle_dir, threads=1).embed_shards(labels, [images], other, split="train")
    with pytest.raises(SystemExit):
        main(args[:3] + [str(other)] + args[4:])
    assert "have no embedding" in capsys.readouterr().err


def test_a_bundle_with_an_outfit_head_is_scored_served_and_drawn(tmp_path: Path, real_bundle_dir: Path) -> None:
    import numpy as np

    from export.outfit_bundle import write_head_bundle
    from fashsdk.bundle import Bundle

    images, labels = real_subset(tmp_path, 400, shard=2)
    Retriever(real_bundle_dir, threads=1).embed_shards(labels, [images], tmp_path / "shards")
    write_outfits(labels, tmp_path / "outfits", OutfitRules.from_json(RULES), 60, 30, seed=1)
    categories = ["Accessories", "Apparel", "Footwear"]
    layout = list(Bundle.load(real_bundle_dir).layout.values())
    rng = np.random.default_rng(0)
    arrays = {f"psi_{a}": rng.normal(size=(4, e - s)) for a, (s, e) in enumerate(layout)}
    arrays.update({"kappa_w1": rng.normal(size=(6, 5)), "kappa_b1": rng.normal(size=5),
                   "kappa_w2": rng.normal(size=(5, len(layout))), "kappa_b2": rng.normal(size=len(layout))})
    write_head_bundle(real_bundle_dir, tmp_path / "head", arrays, {"categories": categories,
                      "category_attribute": "masterCategory", "value_category": {c: c for c in categories}})
    out = tmp_path / "with-head.json"
    assert main(["--bundle", str(tmp_path / "head"), "--embeddings", str(tmp_path / "shards"), "--outfits",
                 str(tmp_path / "outfits"), "--labels", str(labels), "--served-queries", "15", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "outfit head (learned psi, kappa)" in result["methods"]
    served = result["served"]
    assert served["queries"] + served["refused"] >= 1 and served["top50_exact"] == served["queries"]
    assert result["category_pair_weights"] and out.with_suffix(".png").stat().st_size > 5000
