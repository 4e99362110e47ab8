"""Backbones and ADDE's shapes: the paper's AlexNet/fc7, ResNet18, the compact CNN."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.losses import batch_hard_triplet, classification, offblock_l1  # noqa: E402
from export.models import ADDE, ModelConfig  # noqa: E402


@pytest.mark.parametrize("backbone, size, features", [("alexnet", 224, 4096), ("resnet18", 112, 512), ("compact", 80, 192)])
def test_backbones_give_normalised_embeddings_at_batch_one(backbone: str, size: int, features: int) -> None:
    model = ADDE(ModelConfig(backbone=backbone, attribute_sizes=[5, 3], dim=16, width=24)).eval()
    assert model.backbone.out_features == features
    with torch.no_grad():
        emb, logits = model(torch.randn(1, 3, size, size))  # batch 1 works (the reference squeezes it away)
    assert emb.shape == (1, 32) and logits.shape == (1, 8)
    assert torch.allclose(emb.norm(dim=1), torch.ones(1), atol=1e-5)


def test_memory_is_block_structured_by_the_offblock_penalty() -> None:
    model = ADDE(ModelConfig(attribute_sizes=[2, 3], dim=4))
    assert model.memory.shape == (8, 5)
    mask = model.offblock_mask
    assert mask[:4, :2].sum() == 0 and mask[4:, 2:].sum() == 0 and mask[:4, 2:].all() and mask[4:, :2].all()
    with torch.no_grad():
        model.memory.fill_(1.0)
    assert offblock_l1(model.memory, mask).item() == pytest.approx((8 * 5 - 4 * 2 - 4 * 3) / 5)


def test_losses_ignore_unknown_labels() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0, 9.0]])
    assert classification(logits, torch.tensor([[-1, -1]]), [2, 2]).item() == 0.0
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    keys = torch.tensor([0, 0, 1, 1, -1, -1])
    loss = batch_hard_triplet(emb, emb, keys, keys, margin=0.3, same_set=True)
    assert loss.item() >= 0.0
    far = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [-1.0, 0, 0, 0], [-1.0, 0, 0, 0]])
    assert batch_hard_triplet(far, far, keys[:4], keys[:4], 0.3, True).item() == 0.0  # positives identical, negatives 2 apart


def test_label_smoothing_moves_the_target_mass_to_the_other_values() -> None:
    """Two values, logits (2, 0), true value 0, smoothing 0.2: the target is (0.9, 0.1)."""
    import math
    logits = torch.tensor([[2.0, 0.0]])
    log_p0 = 2.0 - math.log(math.exp(2.0) + 1.0)
    log_p1 = -math.log(math.exp(2.0) + 1.0)
    plain = classification(logits, torch.tensor([[0]]), [2]).item()
    smoothed = classification(logits, torch.tensor([[0]]), [2], label_smoothing=0.2).item()
    assert plain == pytest.approx(-log_p0, rel=1e-5)
    assert smoothed == pytest.approx(-(0.9 * log_p0 + 0.1 * log_p1), rel=1e-5)
    assert classification(logits, torch.tensor([[-1]]), [2], label_smoothing=0.2).item() == 0.0  # unknowns still skipped


def test_weight_decay_reaches_kernels_and_matrices_but_not_norms_biases_or_memory() -> None:
    from export.train import _decay_groups

    model = ADDE(ModelConfig(attribute_sizes=[2, 3], dim=4, width=8))
    decayed, kept = _decay_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    kept_names = {names[id(p)] for p in kept["params"]}
    assert "memory" not in decayed_names | kept_names  # stage 2 trains the memory, with its own optimiser
    assert decayed_names | kept_names == set(names.values()) - {"memory"} and not decayed_names & kept_names
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in kept["params"])
    assert any(n.endswith("bias") for n in kept_names) and decayed_names


def test_regularisation_flags_reach_the_training_config() -> None:
    import argparse

    from export.__main__ import _add_train_args
    from export.train import TrainConfig

    parser = argparse.ArgumentParser()
    _add_train_args(parser)
    args = parser.parse_args(["--weight-decay", "0.05", "--label-smoothing", "0.1"])
    assert (args.weight_decay, args.label_smoothing) == (0.05, 0.1)
    assert (TrainConfig.weight_decay, TrainConfig.label_smoothing) == (0.0, 0.0)  # make demo's recipe unchanged


def _shifted_offsets(shift_per_sample: bool) -> list[tuple[int, int]]:
    """Augment 16 copies of one random image and find, for each output, the window of the
    padded (and maybe flipped) image it was cut from."""
    from export.data import SHIFT_PAD, to_tensor
    from fashsdk.sources.preprocess import PreprocessSpec

    spec = PreprocessSpec(height=12, width=10, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = to_tensor(np.stack([image] * 16), spec, augment=True, generator=torch.Generator().manual_seed(3),
                    shift_per_sample=shift_per_sample)
    base = torch.from_numpy(image).permute(2, 0, 1).float()[None]
    offsets = []
    for x in out:
        found = []
        for flipped in (base, base.flip(3)):
            padded = torch.nn.functional.pad(flipped, (SHIFT_PAD,) * 4, mode="replicate")[0]
            found += [(dy, dx) for dy in range(2 * SHIFT_PAD + 1) for dx in range(2 * SHIFT_PAD + 1)
                      if torch.equal(padded[:, dy:dy + 12, dx:dx + 10], x)]
        assert len(found) == 1, "every augmented image is exactly one shifted window of the (flipped) input"
        offsets.append(found[0])
    return offsets


def test_shift_is_one_per_batch_by_default_and_one_per_image_on_request() -> None:
    assert len(set(_shifted_offsets(False))) == 1
    assert len(set(_shifted_offsets(True))) > 4  # 16 draws from 81 offsets


def test_boolean_training_flags_parse_as_switches() -> None:
    import argparse

    from export.__main__ import _add_train_args
    from export.train import TrainConfig

    parser = argparse.ArgumentParser()
    _add_train_args(parser)
    assert parser.parse_args(["--shift-per-sample"]).shift_per_sample is True
    assert parser.parse_args([]).shift_per_sample is TrainConfig.shift_per_sample is False


def test_training_and_the_runtime_share_one_adde_arithmetic() -> None:
    """Stage 2 trains through fashsdk.families.adde.apply on torch tensors: same vectors as numpy, gradients into M."""
    from fashsdk.families.adde import apply, indicator
    from fashsdk.schema import AttributeSchema

    schema = AttributeSchema.from_dict({"colour": ["Black", "Blue", "Red"], "kind": ["Shirt", "Shoe"], "sex": ["M", "W"]})
    rng = np.random.default_rng(5)
    memory = rng.normal(size=(12, schema.total_values)).astype(np.float32)
    vectors = rng.normal(size=(4, 12)).astype(np.float32)
    ind = indicator(schema, np.array([[0, 1, 0]] * 4), np.array([[0], [1], [2], [0]]), np.array([[2], [0], [1], [1]]))
    m = torch.tensor(memory, requires_grad=True)
    out = apply(torch.from_numpy(vectors), torch.from_numpy(ind), m)
    out.sum().backward()
    assert np.allclose(out.detach().numpy(), apply(vectors, ind, memory), atol=1e-6)
    assert m.grad is not None and float(m.grad.abs().sum()) > 0


def test_a_catalog_without_a_split_column_gets_a_fixed_split_from_its_ids(tmp_path) -> None:
    import argparse

    from export.catalog_args import TEST_SHARE, load_catalog_from_args

    rows = ["id,colour"] + [f"item{i},{'Red' if i % 2 else 'Blue'}" for i in range(400)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = argparse.Namespace(labels=tmp_path / "labels.csv", images=[str(tmp_path)], data=tmp_path,
                              attributes=["colour"], id_column="id", split_column="split", min_count=5)
    first, _ = load_catalog_from_args(args)
    again, _ = load_catalog_from_args(args)
    assert first.splits == again.splits and set(first.splits) == {"train", "test"}
    assert abs(first.splits.count("test") / 400 - TEST_SHARE) < 0.07
    assert list(first.schema.attributes[0].values) == ["Blue", "Red"] and len(first.split("train")) > 250
