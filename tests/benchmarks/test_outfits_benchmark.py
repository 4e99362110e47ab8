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
