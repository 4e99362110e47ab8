"""FLAM (paper 003): feature-level attribute manipulation on top of a fixed retrieval feature.

Pieces (Sec. 3), all small MLPs over precomputed features x (N, D):
- ``Embedders``: per attribute a, phi_a(x) -> R^k (k = 32) and a learned dictionary d_a of one
  vector per value; trained with the two cosine triplet terms of Eq. 2 on the labelled items only.
- ``Manipulator`` G(x, e, m): x plus the condition e (A*k: the wanted embedding in the changed
  attributes' slots, zeros elsewhere) and the mask m of changed attributes -> x~. The condition
  slots are how G knows which attribute a condition belongs to (the paper does not say). G
  predicts a residual, x~ = x + g(x, e, m): an unchanged feature is the easy fixed point.
- ``Discriminator`` D(x) -> (real/fake logit, f(x) in R^(A*k)): f is the feature-matching output
  of Eq. 4, which should equal the attribute embeddings the feature carries.
- ``ExportedManipulator`` wraps G in the generator family's signature (feature (N, D), wanted
  (N, J) multi-hot -> manipulated (N, D)); the dictionary turns the wanted values into the
  condition inside the graph. ``FoldedManipulator``, the same function with the condition folded
  into G's first layer, is what the bundle's ``manipulator.onnx`` holds.

The retrieval feature (export/flam_bundle.py) is ImageNet-pretrained EfficientNet-Lite0, sum-pooled,
PCA-whitened on the catalog's own photos and, by default, refined on the labelled rows only, so
training with 10% of the labels leaves 90% of the photos unlabelled throughout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

K = 32  # the attribute embedding size (paper: k = 32)
HIDDEN = 512


def _mlp(inputs: int, outputs: int, hidden: int = HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, outputs))


class Embedders(nn.Module):
    """phi_a for every attribute and the value dictionaries d_a (J, k) in one table."""

    def __init__(self, dim: int, sizes: list[int], k: int = K) -> None:
        super().__init__()
        self.sizes, self.k = list(sizes), k
        self.phi = nn.ModuleList(nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, k)) for _ in sizes)
        self.dictionary = nn.Parameter(torch.randn(sum(sizes), k) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, A, k) normalised attribute embeddings."""
        return torch.stack([F.normalize(p(x), dim=1) for p in self.phi], dim=1)

    def values(self, a: int) -> torch.Tensor:
        """(n_a, k) normalised dictionary of attribute a."""
        start = sum(self.sizes[:a])
        return F.normalize(self.dictionary[start:start + self.sizes[a]], dim=1)

    def logits(self, x: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
        """(N, J): per attribute, scaled cosine to each value's dictionary vector (predict()'s logits)."""
        e = self(x)
        return torch.cat([scale * e[:, a] @ self.values(a).T for a in range(len(self.sizes))], dim=1)


class Manipulator(nn.Module):
    """G(x, e, m) = x + g([x, e, m])."""

    def __init__(self, dim: int, attributes: int, k: int = K) -> None:
        super().__init__()
        self.net = _mlp(dim + attributes * k + attributes, dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.net(torch.cat([x, condition, mask], dim=1))


class Discriminator(nn.Module):
    """D(x) -> (real/fake logit (N,), feature-matching output (N, A, k) normalised)."""

    def __init__(self, dim: int, attributes: int, k: int = K) -> None:
        super().__init__()
        self.attributes, self.k = attributes, k
        self.body = nn.Sequential(nn.Linear(dim, HIDDEN), nn.LeakyReLU(0.2), nn.Linear(HIDDEN, HIDDEN),
                                  nn.LeakyReLU(0.2))
        self.real = nn.Linear(HIDDEN, 1)
        self.match = nn.Linear(HIDDEN, attributes * k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        match = F.normalize(self.match(h).view(-1, self.attributes, self.k), dim=2)
        return self.real(h).squeeze(1), match


def condition_of(embeddings: torch.Tensor, changed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, A, k) wanted embeddings and (N, A) bool changed -> G's condition (N, A*k) and mask (N, A)."""
    mask = changed.float()
    return (embeddings * mask[..., None]).flatten(1), mask


class ExportedManipulator(nn.Module):
    """The bundle's manipulator.onnx: (feature (N, D), wanted (N, J) multi-hot) -> manipulated (N, D)."""

    def __init__(self, embedders: Embedders, generator: Manipulator) -> None:
        super().__init__()
        self.embedders, self.generator = embedders, generator
        blocks = torch.zeros(len(embedders.sizes), sum(embedders.sizes))
        start = 0
        for a, n in enumerate(embedders.sizes):
            blocks[a, start:start + n] = 1.0
            start += n
        self.register_buffer("attribute_of_value", blocks.T.contiguous())  # (J, A)

    def forward(self, feature: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        dictionary = torch.cat([self.embedders.values(a) for a in range(len(self.embedders.sizes))], dim=0)  # (J, k)
        mask = (wanted @ self.attribute_of_value).clamp(max=1.0)  # (N, A)
        # per attribute slot: the wanted value's dictionary vector (wanted is one-hot within each changed attribute)
        slots = torch.einsum("nj,jk,ja->nak", wanted, dictionary, self.attribute_of_value)
        return self.generator(feature, slots.flatten(1), mask)

    def folded(self) -> "FoldedManipulator":
        """The same function with the condition folded into G's first layer (what is exported)."""
        return FoldedManipulator(self)


class FoldedManipulator(nn.Module):
    """G's first layer split into x @ W_x + wanted @ T: T (J, hidden) holds, per value, its dictionary
    vector through the condition weights plus its attribute's mask weight. Exact while ``wanted`` has at
    most one value per attribute (the runtime's only input); a query then pays one small matrix
    product instead of the dictionary, the einsum and the concatenation (docs/flam.md has the timing)."""

    def __init__(self, manipulator: ExportedManipulator) -> None:
        super().__init__()
        embedders, net = manipulator.embedders, manipulator.generator.net
        first = net[0]
        count, k = len(embedders.sizes), embedders.k
        dim = first.in_features - count * k - count
        with torch.no_grad():
            dictionary = torch.cat([embedders.values(a) for a in range(count)], dim=0)  # (J, k)
            owner = manipulator.attribute_of_value  # (J, A)
            slots = torch.einsum("jk,ja->jak", dictionary, owner).flatten(1)  # (J, A*k)
            w_x, w_c, w_m = torch.split(first.weight, [dim, count * k, count], dim=1)
            table = slots @ w_c.T + owner @ w_m.T  # (J, hidden)
        self.first = nn.Linear(dim, first.out_features)
        self.first.weight.data.copy_(w_x)
        self.first.bias.data.copy_(first.bias.detach())
        self.register_buffer("table", table.contiguous())
        self.rest = net[1:]

    def forward(self, feature: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        return feature + self.rest(self.first(feature) + wanted @ self.table)


def triplet_cosine(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 1 with the cosine distance (1 - cos) on normalised rows."""
    d_pos = 1 - (anchor * positive).sum(-1)
    d_neg = 1 - (anchor * negative).sum(-1)
    return F.relu(d_pos - d_neg + margin).mean()
