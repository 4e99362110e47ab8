"""Training losses: classification with unknowns ignored, batch-hard and soft triplets, memory terms."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_hard_triplet(anchors: torch.Tensor, candidates: torch.Tensor, anchor_keys: torch.Tensor,
                       candidate_keys: torch.Tensor, margin: float, same_set: bool = False) -> torch.Tensor:
    """Mean over anchors of relu(d(hardest positive) - d(hardest negative) + margin).

    Keys < 0 (unknown) never act as positives or negatives; anchors without a positive
    or a negative are skipped. ``same_set`` excludes each anchor from its own positives.
    """
    dist = torch.cdist(anchors, candidates)
    valid_anchor = anchor_keys >= 0
    same = (anchor_keys[:, None] == candidate_keys[None, :]) & (candidate_keys[None, :] >= 0)
    if same_set:
        same = same & ~torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
    diff = (anchor_keys[:, None] != candidate_keys[None, :]) & (candidate_keys[None, :] >= 0)
    hardest_pos = torch.where(same, dist, torch.full_like(dist, -1.0)).max(dim=1).values
    hardest_neg = torch.where(diff, dist, torch.full_like(dist, 1e9)).min(dim=1).values
    usable = valid_anchor & same.any(1) & diff.any(1)
    if not usable.any():
        return anchors.sum() * 0.0
    return F.relu(hardest_pos - hardest_neg + margin)[usable].mean()


def classification(logits: torch.Tensor, codes: torch.Tensor, sizes: list[int],
                   label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over attributes of cross-entropy; unknown labels (-1) are ignored."""
    total = logits.sum() * 0.0
    offset = 0
    for a, n in enumerate(sizes):
        target = codes[:, a].long()
        if (target >= 0).any():
            total = total + F.cross_entropy(logits[:, offset:offset + n], target, ignore_index=-1,
                                            label_smoothing=label_smoothing)
        offset += n
    return total


def attribute_triplets(embedding: torch.Tensor, codes: torch.Tensor, dim: int, margin: float) -> torch.Tensor:
    """Per-attribute batch-hard triplets on each normalised chunk, keyed by that attribute."""
    total = embedding.sum() * 0.0
    for a in range(codes.shape[1]):
        chunk = F.normalize(embedding[:, a * dim:(a + 1) * dim], dim=1)
        keys = codes[:, a].long()
        total = total + batch_hard_triplet(chunk, chunk, keys, keys, margin, same_set=True)
    return total


def offblock_l1(memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pushes each prototype's entries outside its attribute's block to zero."""
    return (memory.abs() * mask).sum() / memory.shape[1]


def soft_triplet(anchors: torch.Tensor, keys: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """FashionSearchNet's soft triplet (Eqs. 3-5): mean of d+ = sigmoid(|a - p| - |a - n|) with, per
    anchor, a random positive of the same key (not itself) and a random negative of another key.
    Keys < 0 (unknown) take no part; anchors without a positive or a negative are skipped."""
    known = keys >= 0
    same = (keys[:, None] == keys[None, :]) & known[:, None] & known[None, :]
    same &= ~torch.eye(len(keys), dtype=torch.bool, device=keys.device)
    diff = (keys[:, None] != keys[None, :]) & known[:, None] & known[None, :]
    usable = same.any(1) & diff.any(1)
    if not usable.any():
        return anchors.sum() * 0.0
    a = usable.nonzero().squeeze(1)
    pos = torch.multinomial(same[a].float(), 1, generator=generator).squeeze(1)
    neg = torch.multinomial(diff[a].float(), 1, generator=generator).squeeze(1)
    d_pos = (anchors[a] - anchors[pos]).norm(dim=1)
    d_neg = (anchors[a] - anchors[neg]).norm(dim=1)
    return torch.sigmoid(d_pos - d_neg).mean()


def soft_triplets(embedding: torch.Tensor, codes: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Per-attribute soft triplets on each normalised chunk, keyed by that attribute (Eq. 5)."""
    total = embedding.sum() * 0.0
    for a in range(codes.shape[1]):
        chunk = F.normalize(embedding[:, a * dim:(a + 1) * dim], dim=1)
        total = total + soft_triplet(chunk, codes[:, a].long(), generator)
    return total
