"""FLAM's retrieval feature and its two-graph bundle.

The retrieval feature: ImageNet-pretrained EfficientNet-Lite0 to its 1280-channel head, sum-pooled
(SPoC) and L2-normalised, then mapped linearly to ``dim`` dimensions and normalised again. The map is
PCA whitening fitted on the catalog's own training photos (label-free), optionally refined on the
labelled rows (``fit_label_projection``, the command's default). ``model.onnx`` maps images to that feature
and to logits (the embedders' scaled cosine to each value's dictionary vector, for ``predict()``
and a query's current values); ``manipulator.onnx`` is G (export/flam.py). Both are checked
against PyTorch on real data before the bundle is written.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fashsdk.bundle import Bundle, write_bundle
from fashsdk.families.base import normalized
from fashsdk.schema import AttributeSchema
from fashsdk.sources.preprocess import PreprocessSpec

from .backbones import LiteBackbone
from .flam import Embedders, ExportedManipulator, Manipulator
from .onnx_export import OPSET, ParityError, check_parity, export_onnx


def retrieval_network(pretrained: bool = True) -> nn.Sequential:
    """Lite0 from pixels to its pooled 1280-d head (average pooling: sum pooling up to a scale)."""
    lite = LiteBackbone(16, pretrained)
    return nn.Sequential(*lite.trunk, *lite.top).eval()


def fit_whitening(features: np.ndarray, dim: int, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), projection (C, dim)): PCA whitening fitted on normalised features (no labels)."""
    x = normalized(features)
    mean = x.mean(0)
    values, vectors = np.linalg.eigh(np.cov((x - mean).T))
    top = np.argsort(values)[::-1][:dim]
    return mean.astype(np.float32), (vectors[:, top] / np.sqrt(values[top] + eps)).astype(np.float32)


def fit_label_projection(features: np.ndarray, mean: np.ndarray, projection: np.ndarray, codes: np.ndarray,
                         labelled: np.ndarray, sizes: list[int], steps: int = 1500, seed: int = 0,
                         log: Callable[[str], None] = print) -> np.ndarray:
    """The whitening ``projection`` (C, dim) refined on the labelled rows only: per attribute a cosine
    classifier (scale 16) on the normalised projected feature, cross-entropy on known values. The
    feature stays one linear map of the pooled trunk (the bundle's graph does not change), now shaped
    so that items sharing values sit together; unlabelled rows never enter."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = normalized(features)
    x_lab = torch.from_numpy((x[labelled] - mean).astype(np.float32))
    y_lab = torch.from_numpy(codes[labelled].astype(np.int64))
    # the whitening's scale (1/sqrt of small eigenvalues) would make Adam's steps negligible; the feature
    # is normalised after the map, so rescaling it changes nothing but the step size
    weight = torch.nn.Parameter(torch.from_numpy(projection / np.linalg.norm(projection, axis=0).mean()))
    heads = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(n, projection.shape[1]) * 0.01) for n in sizes)
    opt = torch.optim.Adam([weight, *heads], lr=1e-3)
    for step in range(steps):
        rows = torch.randint(0, len(x_lab), (min(512, len(x_lab)),), generator=gen)
        z = F.normalize(x_lab[rows] @ weight, dim=1)
        loss = z.sum() * 0.0
        for a, head in enumerate(heads):
            known = y_lab[rows, a] >= 0
            if known.any():
                loss = loss + F.cross_entropy(16.0 * z[known] @ F.normalize(head, dim=1).T, y_lab[rows, a][known])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            log(f"  label projection step {step}: loss {loss.item():.3f} ({len(labelled)} labelled rows)")
    return weight.detach().numpy().astype(np.float32)


def whiten(features: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    x = normalized(features)
    z = (x - mean) @ projection
    return normalized(z).astype(np.float32)


class FlamEncoder(nn.Module):
    """images -> (retrieval feature (N, dim), logits (N, J)): the bundle's model.onnx."""

    output_names = ("embedding", "logits")

    def __init__(self, network: nn.Module, mean: np.ndarray, projection: np.ndarray, embedders: Embedders) -> None:
        super().__init__()
        self.network, self.embedders = network, embedders
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("projection", torch.from_numpy(projection))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.normalize(self.network(images), dim=1)
        x = F.normalize((f - self.mean) @ self.projection, dim=1)
        return x, self.embedders.logits(x)


def export_manipulator(manipulator: nn.Module, dim: int, values: int, path: Path) -> Path:
    """G (folded, ``ExportedManipulator.folded()``) as manipulator.onnx, the batch axis dynamic."""
    import onnx

    manipulator = manipulator.eval()
    example = (torch.zeros(2, dim), torch.zeros(2, values))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(manipulator, example, dynamo=True, input_names=["feature", "wanted"],
                                    output_names=["manipulated"], opset_version=OPSET,
                                    dynamic_shapes={"feature": {0: batch}, "wanted": {0: batch}}, verbose=False,
                                    optimize=True)
    program.save(str(path))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def manipulator_parity(manipulator: ExportedManipulator, path: Path, features: np.ndarray, sizes: list[int],
                       seed: int = 0, tolerance: float = 1e-4) -> float:
    """Max |ONNX - PyTorch| of G on real features with random single and double changes: the exported
    (folded) graph against the unfolded reference, so the folding is checked too."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    wanted = np.zeros((len(features), sum(sizes)), np.float32)
    offsets = np.cumsum([0, *sizes[:-1]])
    for i in range(len(features)):
        for a in rng.choice(len(sizes), 1 + i % 2, replace=False):
            wanted[i, offsets[a] + rng.integers(sizes[a])] = 1.0
    with torch.no_grad():
        reference = manipulator(torch.from_numpy(features), torch.from_numpy(wanted)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(["manipulated"], {"feature": features, "wanted": wanted})[0]
    diff = float(np.abs(ours - reference).max())
    if diff > tolerance:
        raise ParityError(f"manipulator ONNX/PyTorch parity failed: max |diff| {diff:.2e} (tolerance {tolerance})")
    return diff


def build_flam_bundle(encoder: FlamEncoder, generator: Manipulator, schema: AttributeSchema, spec: PreprocessSpec,
                      directory: Path, parity_pixels: np.ndarray, parity_features: np.ndarray,
                      info: dict[str, Any]) -> tuple[Bundle, dict[str, Any]]:
    """Export both graphs, check their parity, write the generator-family bundle."""
    dim = encoder.projection.shape[1]
    per, extra = divmod(dim, len(schema.names))
    # the manifest's layout must cover the vector; FLAM's feature has no attribute subspaces
    bounds = np.cumsum([0] + [per + (1 if a < extra else 0) for a in range(len(schema.names))])
    layout = {name: (int(bounds[a]), int(bounds[a + 1])) for a, name in enumerate(schema.names)}
    with tempfile.TemporaryDirectory() as tmp:
        model_path = export_onnx(encoder, spec, Path(tmp) / "model.onnx")
        parity = check_parity(encoder, model_path, parity_pixels, spec)
        manipulator = ExportedManipulator(encoder.embedders, generator)
        g_path = export_manipulator(manipulator.folded(), dim, schema.total_values, Path(tmp) / "manipulator.onnx")
        g_diff = manipulator_parity(manipulator, g_path, parity_features, schema.sizes)
        checks = {"parity": parity.to_json(), "manipulator_max_abs_diff": g_diff}
        model_info = {"architecture": "flam", "backbone": "efficientnet-lite0", "input_name": "images",
                      "outputs": list(encoder.output_names), "opset": OPSET, "torch_version": torch.__version__,
                      "attribute_subspaces": False, **checks, **info}
        bundle = write_bundle(directory, model_path, schema, spec, layout, model_info, "generator", {},
                              {"manipulator": g_path})
    return bundle, checks
