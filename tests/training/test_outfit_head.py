"""python -m export outfit-head: the head learns what makes outfit items belong together, and the
command writes a checksummed bundle that Retriever.complete serves over the base bundle's index."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from realdata import real_subset

from export.outfit_head_train import OutfitModel, train
from fashsdk import Retriever

ROOT = Path(__file__).resolve().parents[2]


def test_the_head_learns_a_style_shared_within_outfits() -> None:
    """Items carry a hidden style in attribute 0's chunk; outfits share it; negatives of the same
    category do not. Before training the held-out item is closer than the negative about half
    the time; after, almost always."""
    rng = np.random.default_rng(0)
    n, spans = 600, [(0, 4), (4, 8)]
    style, category = rng.integers(0, 2, n), np.arange(n) % 3
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors[:, :4] *= 0.1
    vectors[:, 0] += 0.5 * style  # a small signal in chunk 0, drowned by chunk 1's noise until the head learns
    by = {(s, c): np.flatnonzero((style == s) & (category == c)) for s in (0, 1) for c in range(3)}
    outfits = [[int(rng.choice(by[(s, c)])) for c in range(3)] for s in rng.integers(0, 2, 400)]

    def closer(model: OutfitModel) -> float:
        wins = []
        for outfit in outfits[:200]:
            o = torch.from_numpy(vectors[outfit[:2]])[None]
            negative = int(rng.choice(by[(1 - style[outfit[2]], 2)]))
            args = (o, torch.tensor([[0, 1]]), torch.ones(1, 2), torch.tensor([2]))
            with torch.no_grad():
                wins.append(float(model.distance(*args, torch.from_numpy(vectors[[outfit[2]]]))) <
                            float(model.distance(*args, torch.from_numpy(vectors[[negative]]))))
        return float(np.mean(wins))

    torch.manual_seed(0)
    before = closer(OutfitModel(spans, 3, 4))
    after = closer(train(vectors, category, outfits, spans, 3, 4, steps=300, batch=64, margin=0.3, seed=0))
    assert before < 0.8 and after > 0.95, (before, after)


def test_command_writes_a_bundle_that_complete_serves(tmp_path: Path, real_bundle_dir: Path, real_index_dir: Path) -> None:
    from export.outfit_rules import OutfitRules
    from export.outfits import write_outfits

    images, labels = real_subset(tmp_path, 300, shard=3)
    Retriever(real_bundle_dir, threads=1).embed_shards(labels, [images], tmp_path / "shards")
    rules = {"category_column": "masterCategory", "slots": {"wear": ["Apparel"], "feet": ["Footwear"]},
             "templates": [{"slots": ["wear", "feet"], "required": 2}],
             "gender_column": "-", "usage_column": "-", "season_column": "-"}  # a few hundred photos: any pairing
    write_outfits(labels, tmp_path / "outfits", OutfitRules.from_json(rules), 80, 10, seed=0)
    base = [sys.executable, "-m", "export", "outfit-head", "--bundle", str(real_bundle_dir), "--embeddings",
            str(tmp_path / "shards"), "--outfits", str(tmp_path / "outfits"), "--labels", str(labels), "--steps", "30",
            "--batch", "16", "--projection-dim", "4"]
    run = subprocess.run(base + ["--category-attribute", "masterCategory", "--out", str(tmp_path / "b")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["categories"] == ["Apparel", "Footwear"] and summary["derived_outfits"]
    shop = Retriever(tmp_path / "b", real_index_dir, threads=1)  # same embedding space: the base bundle's index
    some = [i for i in shop.index.ids if shop.index.get(i)[1][1] >= 0][:1]
    found = shop.complete(some, "Footwear", k=3)
    assert found and all(r.attributes["masterCategory"] == "Footwear" for r in found)
    bad = subprocess.run(base + ["--category-attribute", "colour", "--out", str(tmp_path / "c")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "is not an attribute of the bundle" in bad.stderr
    (tmp_path / "outfits" / "rules.json").unlink()  # outfits a user brings: no derivation rule beside them
    own = subprocess.run(base + ["--category-attribute", "masterCategory", "--category-column", "masterCategory",
                                 "--out", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert own.returncode == 0, own.stderr[-2000:]
    assert json.loads(own.stdout.strip().splitlines()[-1])["derived_outfits"] is False


def test_the_demo_skips_the_outfit_head_with_the_reason(tmp_path: Path, real_bundle_dir: Path, capsys) -> None:
    """A catalog the default outfit rule does not fit (too few items of its categories; no articleType
    attribute in the bundle) gets no outfit bundle, and the demo says why instead of failing."""
    import shutil
    from types import SimpleNamespace

    from export.pipeline import _outfit_head

    shutil.copytree(real_bundle_dir, tmp_path / "bundle")
    images, labels = real_subset(tmp_path, 120, shard=1)
    ids = [p.stem for p in sorted(images.iterdir())]
    parts = [SimpleNamespace(catalog=SimpleNamespace(ids=ids), pixels=np.zeros((len(ids), 40, 32, 3), np.uint8))]
    args = SimpleNamespace(labels=labels, images=[str(images)], data=None, seed=0, split_column="split", id_column="id")
    assert _outfit_head(args, tmp_path, Retriever(tmp_path / "bundle", threads=1), parts) is None
    said = capsys.readouterr().out
    assert "outfit head skipped" in said and ("articleType" in said or "pass --rules" in said)
    assert not (tmp_path / "bundle-outfit").exists()
