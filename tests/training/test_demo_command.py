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


def test_the_blend_is_served_only_when_its_lead_is_beyond_the_validation_noise() -> None:
    assert pipeline.served_adde_family({"val_top30": 0.5}) == "adde"  # no query mix chosen (other families)
    # the 128x96 demo's validation: adde 0.886, blend 0.907
    clear = {"val_top30": 0.886, "query_mix": {}, "val_top30_mix": 0.907, "val_top30_mix_lead": 0.021,
             "val_top30_mix_lead_se": 0.003}
    assert pipeline.served_adde_family(clear) == "blend"
    assert pipeline.served_adde_family({**clear, "val_top30_mix_lead": 0.005}) == "adde"  # under two errors
    assert pipeline.served_adde_family({**clear, "val_top30_mix_lead": 0.0, "val_top30_mix_lead_se": 0.0}) == "adde"


def test_input_size_defaults_follow_the_family_and_an_explicit_size_wins() -> None:
    from argparse import Namespace

    from export.backbones import LITE_MEAN

    adde = pipeline._spec_for(Namespace(backbone="efficientnet-lite0", family="adde", input_size=None))
    assert (adde.height, adde.width) == (104, 78) and adde.mean == tuple(LITE_MEAN)  # the pretrained weights' scaling
    for family in ("datrnet", "fsn"):  # measured and documented at 128x96
        spec = pipeline._spec_for(Namespace(backbone="efficientnet-lite0", family=family, input_size=None))
        assert (spec.height, spec.width) == (128, 96)
    compact = pipeline._spec_for(Namespace(backbone="compact", family="adde", input_size=None))
    assert (compact.height, compact.width) == (80, 64) and compact.mean != adde.mean
    chosen = pipeline._spec_for(Namespace(backbone="efficientnet-lite0", family="adde", input_size=[160, 128]))
    assert (chosen.height, chosen.width) == (160, 128)


@pytest.mark.parametrize("served", ["adde", "blend"])
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
    assert Bundle.load(out / "bundle").family_name == served
    assert Bundle.load(out / "bundle-chunk-replace").family_name == "chunk_replace"
    assert (served == "adde") != (out / "bundle-adde").exists()
    assert not (out / "bundle-adde" / "stale.txt").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["served_family"] == served
    validation = report["validation"]
    assert {"val_top30", "val_top30_chunk_replace", "val_top30_mix", "query_mix", "val_top30_by_mix"} <= set(validation)
    assert validation["val_top30_by_mix"]["b0 x1"] == pytest.approx(validation["val_top30"], abs=2e-3)  # adde, twice
    if served == "blend":  # the mix training chose: blend weights, the changed chunk's emphasis, the memory block
        served_bundle = Bundle.load(out / "bundle")
        mix = validation["query_mix"]
        assert served_bundle.family_array("blend_weights").tolist() == [mix[n]["blend"] for n in served_bundle.schema.names]
        weights = served_bundle.family_array("attribute_weights")
        assert np.allclose(np.diag(weights), [mix[n]["chunk_emphasis"] for n in served_bundle.schema.names])
        assert np.allclose(weights[~np.eye(3, dtype=bool)], 1.0)
        assert np.array_equal(served_bundle.family_array("prototypes"),
                              Bundle.load(out / "bundle-adde").family_array("prototypes"))
        # `export onnx` on the demo's checkpoint exports the family training chose, with the same arrays
        assert main(["onnx", "--checkpoint", str(out / "checkpoint"), "--labels", str(labels), "--images", str(folder),
                     "--reference-per-value", "20", "--parity-images", "8", "--out", str(tmp_path / "onnx")]) == 0
        exported = Bundle.load(tmp_path / "onnx")
        assert exported.family_name == "blend"
        for role in ("attribute_weights", "blend_weights", "prototypes"):
            assert np.array_equal(exported.family_array(role), served_bundle.family_array(role))
        query = Retriever(out / "bundle", out / "index")
        hits_blend = query.search(report["examples"][0]["query"], change=report["examples"][0]["change"], k=5)
        assert len(hits_blend) == 5
    quality = json.loads((out / "quality.json").read_text())
    # the served bundle's label rerank, when validation chose one, is its first row (what the SDK serves)
    rerank = report["label_rerank"]
    reranked = Retriever(out / "bundle").rerank is not None
    assert reranked == (rerank["val_top30"] > rerank["val_top30_plain"])
    assert set(rerank["probe_accuracy"]) == {"gender", "masterCategory", "baseColour"}
    # mean_swap is read from the chunk_replace bundle; adde is evaluated as a bundle only when it is not served
    assert quality["rows"] == (([served + "+rerank"] if reranked else []) + [served]
                               + ([] if served == "adde" else ["adde"])
                               + ["mean_swap", "attribute_based", "no_manipulation"])
    assert quality["mean_swap_means"] == str((out / "bundle-chunk-replace").resolve())
    hits = Retriever(out / "bundle", out / "index").search(report["examples"][0]["query"], k=3)
    assert len(hits) == 3
