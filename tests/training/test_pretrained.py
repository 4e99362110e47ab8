"""The ImageNet-pretrained backbone: a frozen trunk computed once, a fine-tuned top, a time
budget that holds, the guard's report, and an exported bundle that matches PyTorch."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite_pytorch")

from realdata import real_subset  # noqa: E402

from export.backbones import LITE_MEAN, LITE_STD, LiteBackbone  # noqa: E402
from export.data import ImageSet, decode_catalog, split_validation  # noqa: E402
from export.features import TrunkFeatures  # noqa: E402
from export.models import ADDE, ModelConfig  # noqa: E402
from export.onnx_export import build_bundle  # noqa: E402
from export.train import GuardFailed, TrainConfig, train_adde  # noqa: E402
from fashsdk.sources.catalog import read_catalog  # noqa: E402
from fashsdk.sources.preprocess import PreprocessSpec  # noqa: E402

SPEC = PreprocessSpec(height=64, width=48, mean=LITE_MEAN, std=LITE_STD)


@pytest.fixture(scope="module")
def catalog_images(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("lite")
    folder, labels = real_subset(tmp, 400)
    catalog, _ = read_catalog(labels, ["gender", "masterCategory"], min_count=10)
    train = catalog.split("train")
    return catalog, decode_catalog(train, folder, SPEC)


def test_the_trunk_is_pretrained_frozen_and_stays_in_eval_mode() -> None:
    net = LiteBackbone(split=11)
    model = ADDE(ModelConfig(backbone="efficientnet-lite0", attribute_sizes=[3, 2], dim=8, lite_split=11))
    model.train()
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
    assert all(p.requires_grad for p in model.backbone.top.parameters())
    assert not model.backbone.trunk.training and model.backbone.top.training
    random = LiteBackbone(split=11, pretrained=False)
    first = next(net.trunk.parameters())
    assert not torch.equal(first, next(random.trunk.parameters()))  # the package's ImageNet weights were loaded
    assert net(torch.zeros(2, 3, 64, 48)).shape == (2, 1280)


def test_trunk_features_are_the_trunks_output_plain_and_flipped(catalog_images: tuple) -> None:
    _, images = catalog_images
    few = images.subset(np.arange(12))
    model = ADDE(ModelConfig(backbone="efficientnet-lite0", attribute_sizes=[3, 2], dim=8, lite_split=11)).eval()
    cache = TrunkFeatures.build(model.backbone.trunk, few, SPEC, variants=3, seed=0)
    assert tuple(cache.activations.shape[:2]) == (12, 3) and cache.activations.dtype == torch.float16
    from fashsdk.sources.preprocess import normalize

    x = torch.from_numpy(normalize(few.pixels, SPEC))
    with torch.no_grad():
        plain, flipped = model.backbone.trunk(x), model.backbone.trunk(x.flip(3))
    assert torch.allclose(cache.activations[:, 0].float(), plain, atol=2e-2, rtol=1e-2)
    assert torch.allclose(cache.activations[:, 1].float(), flipped, atol=2e-2, rtol=1e-2)
    assert not torch.allclose(cache.activations[:, 2].float(), plain, atol=2e-2)  # shifted (and maybe flipped)
    feats = cache.features(model)
    with torch.no_grad():
        assert torch.allclose(feats, model.backbone(x), atol=5e-2)


def test_training_keeps_its_time_budget_reports_the_guard_and_exports(catalog_images: tuple, tmp_path: Path) -> None:
    catalog, images = catalog_images
    train_rows, val_rows = split_validation(images.catalog, 0.2)
    config = TrainConfig(stage1_steps=100000, stage1_time_budget_s=25, stage2_epochs=3, batch_p=8, batch_k=4,
                         batch_random=16, stage2_batch=64, val_queries=200, trunk_variants=2)
    model_config = ModelConfig(backbone="efficientnet-lite0", attribute_sizes=catalog.schema.sizes, dim=16,
                               height_px=SPEC.height, width_px=SPEC.width, lite_split=11)
    start = time.perf_counter()
    result = train_adde(catalog.schema, SPEC, images.subset(train_rows), images.subset(val_rows), model_config, config)
    assert result.seconds["stage1"] <= 25 + 15  # the budget, plus at most one evaluation's overrun
    assert time.perf_counter() - start < 120
    steps = [h["step"] for h in result.history if h.get("stage") == 1]
    assert steps and steps[-1] < 100000  # the plan came from the budget, not from stage1_steps
    guard = result.guard
    assert {r["attribute"] for r in guard["attributes"]} == {"gender", "masterCategory"}
    assert {"adde", "no_manipulation", "attribute_based"} <= set(guard["retrieval"])
    bundle, parity = build_bundle(result.model, catalog.schema, SPEC, tmp_path / "bundle", images.pixels[:8])
    assert parity.max_abs_diff < 1e-4 and bundle.preprocess.mean == pytest.approx(LITE_MEAN)
    # the train and val embeddings training hands on (the demo's outfit head reads them) are the served ones
    from fashsdk import Retriever

    assert result.embeddings is not None
    for rows, kept in zip((train_rows, val_rows), result.embeddings):
        served = Retriever(bundle, threads=1).encode(list(images.pixels[rows])).embedding
        assert kept.shape == served.shape
        assert np.min(np.sum(kept * served, axis=1)) > 0.999  # unit vectors; the cache holds float16 activations


def test_strict_turns_a_failed_guard_into_an_error(catalog_images: tuple) -> None:
    catalog, images = catalog_images
    train_rows, val_rows = split_validation(images.catalog, 0.2)
    config = TrainConfig(stage1_steps=2, stage2_epochs=0, batch_p=4, batch_k=2, batch_random=4, val_queries=100,
                         trunk_variants=1, strict=True, eval_every=1)
    model_config = ModelConfig(backbone="efficientnet-lite0", attribute_sizes=catalog.schema.sizes, dim=8,
                               height_px=SPEC.height, width_px=SPEC.width, lite_split=14)
    with pytest.raises(GuardFailed, match="not clearly better"):
        train_adde(catalog.schema, SPEC, images.subset(train_rows), images.subset(val_rows), model_config, config)


def test_imageset_subset_keeps_rows_aligned(catalog_images: tuple) -> None:
    _, images = catalog_images
    part = images.subset(np.array([3, 1]))
    assert isinstance(part, ImageSet) and part.catalog.ids == [images.catalog.ids[3], images.catalog.ids[1]]
