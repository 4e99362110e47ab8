"""End to end on real catalog images: train a tiny ADDE, export with parity, index, search.

A few hundred real photos from the shared catalog; the claim under test is the product's
core promise: asking for a change returns items with the requested value more often than
the same query without the change.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from manipulation import wanted_value_counts
from realdata import real_subset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    from export.data import decode_catalog, split_validation
    from export.models import ModelConfig
    from export.onnx_export import build_bundle
    from export.train import TrainConfig, save_checkpoint, train_adde
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.preprocess import PreprocessSpec

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("e2e")
    folder, labels = real_subset(tmp, 700)
    catalog, report = read_catalog(labels, ["baseColour", "gender", "masterCategory"], min_count=15)
    spec = PreprocessSpec(height=40, width=32)
    train_catalog = catalog.split("train")
    pixels = decode_catalog(train_catalog, folder, spec)
    train_rows, val_rows = split_validation(train_catalog, 0.15)
    config = TrainConfig(stage1_epochs=3, stage2_epochs=4, batch_p=8, batch_k=4, batch_random=16, stage2_batch=64, val_queries=300)
    model_config = ModelConfig(backbone="compact", attribute_sizes=catalog.schema.sizes, dim=16, width=8,
                               height_px=spec.height, width_px=spec.width)
    result = train_adde(catalog.schema, spec, pixels.subset(train_rows), pixels.subset(val_rows), model_config, config)
    bundle, parity = build_bundle(result.model, catalog.schema, spec, tmp / "bundle", pixels.pixels[:32])
    checkpoint = save_checkpoint(tmp / "checkpoint", result, catalog.schema, spec, config)
    return {"tmp": tmp, "folder": folder, "labels": labels, "catalog": catalog, "bundle": bundle, "parity": parity,
            "checkpoint": checkpoint}


def test_export_matches_pytorch_on_real_images(trained: dict) -> None:
    parity = trained["parity"]
    assert parity.images == 32 and parity.max_abs_diff < 1e-4 and parity.min_cosine > 0.9999
    manifest = json.loads((trained["bundle"].directory / "manifest.json").read_text())
    assert manifest["preprocess"]["height"] == 40 and manifest["model"]["opset"] == 18
    assert set(manifest["files"]) == {"model.onnx", "prototypes.npy"}


def test_manipulation_returns_the_requested_value_more_often(trained: dict) -> None:
    from fashsdk import Retriever
    from fashsdk.sources.images import iter_images

    catalog = trained["catalog"]
    gallery = catalog.split("test") if len(catalog.split("test")) >= 80 else catalog
    retriever = Retriever(trained["bundle"].directory)
    labels = {i: catalog.schema.decode(c) for i, c in zip(gallery.ids, gallery.codes)}
    retriever.add(iter_images(trained["folder"], gallery.ids), labels)
    with_change, without, trials = wanted_value_counts(retriever, gallery.ids, gallery.codes, 60, 3)
    assert trials >= 30
    assert with_change > 1.5 * without + trials, (with_change, without, trials)


def test_cli_indexes_and_searches_with_a_contact_sheet(trained: dict) -> None:
    tmp, bundle = trained["tmp"], trained["bundle"].directory
    run = [sys.executable, "-m", "fashsdk"]
    done = subprocess.run(run + ["index", "--bundle", str(bundle), "--labels", str(trained["labels"]), "--images",
                                 str(trained["folder"]), "--out", str(tmp / "cli-index"), "--split", "test"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    test_ids = trained["catalog"].split("test").ids
    assert summary["indexed"] == len(test_ids) and summary["skipped"] == 0
    query = test_ids[0]
    colour = trained["catalog"].schema.attributes[0].values[0]
    done = subprocess.run(run + ["search", "--bundle", str(bundle), "--index", str(tmp / "cli-index"), "--query", query,
                                 "--change", f"baseColour={colour}", "-k", "5", "--sheet", str(tmp / "sheet.png"),
                                 "--images", str(trained["folder"])], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["results"]) == 5 and query not in [r["id"] for r in out["results"]]
    assert (tmp / "sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = subprocess.run(run + ["search", "--bundle", str(bundle), "--index", str(tmp / "cli-index"), "--query", query,
                                 "--change", "baseColor=Red"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "did you mean 'baseColour'" in done.stderr


def test_quality_ablation_figures_match_the_runtime(trained: dict) -> None:
    """The ablation measures on PyTorch features; its checkpoint figures must be the ones the
    exported bundle gives through ONNX Runtime on the same queries, or its verdicts mean nothing."""
    from benchmarks import quality_ablation
    from fashsdk import Retriever
    from fashsdk.eval.protocol import exact_topk, hit_rates, manipulation_queries
    from fashsdk.sources.images import iter_images

    tmp, catalog = trained["tmp"], trained["catalog"]
    out = tmp / "ablation.json"
    assert quality_ablation.main(["--checkpoint", str(trained["checkpoint"]), "--labels", str(trained["labels"]),
                                  "--images", str(trained["folder"]), "--json", str(out),
                                  "--stage2-epochs", "1", "--test-queries", "400", "--cache", str(tmp / "cache")]) == 0
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"checkpoint", "stage2_again", "stage2_fresh_heads", "stage2_flip_averaged"}
    for figures in report["variants"].values():
        assert all(0.0 <= figures[split][k] <= 1.0 for split in ("val_top_k", "test_top_k") for k in ("10", "30", "50"))
    accuracy = report["attribute_accuracy"]
    assert len(accuracy["train"]) == len(catalog.schema.sizes) and all(0.0 <= a <= 1.0 for a in accuracy["test"])

    test = catalog.split("test")
    retriever = Retriever(trained["bundle"].directory)
    retriever.add(iter_images(trained["folder"], test.ids), {i: catalog.schema.decode(c) for i, c in zip(test.ids, test.codes)})
    ids, vectors, _ = retriever.index.vectors_and_codes()
    vectors = vectors[[ids.index(i) for i in test.ids]]
    sizes = catalog.schema.sizes
    queries = manipulation_queries(test.codes, sizes, max_queries=400, seed=0)
    assert report["test_queries"] == len(queries) > 50
    q = retriever.family.change_batch(vectors[queries.rows], test.codes[queries.rows], queries.attrs, queries.values)
    runtime = hit_rates(exact_topk(q, vectors, 50), test.codes, queries.targets, (10, 30, 50))
    for k in (10, 30, 50):
        assert abs(runtime[k] - report["variants"]["checkpoint"]["test_top_k"][str(k)]) <= 0.01, (k, runtime, report)


def test_chunk_replace_export_and_two_families_in_one_quality_table(trained: dict) -> None:
    """``python -m export onnx --family chunk_replace`` makes a second bundle over the same model,
    and ``python -m benchmarks.quality`` ranks both families and the baselines on the same queries."""
    from benchmarks import quality

    tmp = trained["tmp"]
    done = subprocess.run([sys.executable, "-m", "export", "onnx", "--family", "chunk_replace", "--checkpoint",
                           str(trained["checkpoint"]), "--labels", str(trained["labels"]), "--images",
                           str(trained["folder"]), "--out", str(tmp / "chunk-bundle"), "--parity-images", "16"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp / "chunk-bundle" / "manifest.json").read_text())
    assert manifest["family"] == {"name": "chunk_replace", "files": {"value_table": "value_table.npy"}}
    out = tmp / "families.json"
    assert quality.main(["--bundle", str(trained["bundle"].directory), "--bundle", str(tmp / "chunk-bundle"),
                         "--labels", str(trained["labels"]), "--images", str(trained["folder"]), "--json", str(out),
                         "--max-queries", "100000", "--per-attribute-queries", "100000", "--pair-queries", "200"]) == 0
    report = json.loads(out.read_text())
    # every valid query in both samples: the per-attribute section repeats the main table's split exactly
    each = report["per_attribute_queries"]
    assert sum(each["queries"].values()) == report["queries"] == report["valid_queries"]
    assert each["per_attribute"] == report["per_attribute"]
    assert "queries per attribute" in out.with_suffix(".md").read_text()
    assert report["rows"] == ["adde", "chunk_replace", "mean_swap", "attribute_based", "no_manipulation"]
    assert set(report["top_k"]) == set(report["rows"]) and report["queries"] > 50
    assert all(0.0 <= report["top_k"][m]["30"] <= 1.0 for m in report["rows"])
    # the exported chunk_replace bundle and the benchmark's own mean_swap apply one rule to the same reference images
    assert abs(report["top_k"]["chunk_replace"]["30"] - report["top_k"]["mean_swap"]["30"]) <= 0.02
    assert report["top_k"]["adde"]["30"] > report["top_k"]["no_manipulation"]["30"]
    assert "| chunk_replace |" in out.with_suffix(".md").read_text()
    # the demo's shortcut: mean_swap read from that chunk_replace bundle is that bundle's row, exactly
    again = tmp / "mean-swap-from.json"
    assert quality.main(["--bundle", str(trained["bundle"].directory), "--mean-swap-from", str(tmp / "chunk-bundle"),
                         "--labels", str(trained["labels"]), "--images", str(trained["folder"]), "--json", str(again),
                         "--max-queries", "100000", "--per-attribute-queries", "0", "--pair-queries", "200"]) == 0
    shortcut = json.loads(again.read_text())
    assert shortcut["rows"] == ["adde", "mean_swap", "attribute_based", "no_manipulation"]
    assert shortcut["top_k"]["mean_swap"] == report["top_k"]["chunk_replace"]
    assert shortcut["mean_swap_means"] == str(tmp / "chunk-bundle") and shortcut["per_attribute_queries"] == {}
    with pytest.raises(SystemExit, match="has no value means; pass a chunk_replace bundle"):
        quality.main(["--bundle", str(trained["bundle"].directory), "--mean-swap-from", str(trained["bundle"].directory),
                      "--labels", str(trained["labels"]), "--images", str(trained["folder"]), "--json", str(again)])
