"""Backbones and ADDE's shapes: the paper's AlexNet/fc7, ResNet18, the compact CNN."""
from __future__ import annotations

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
