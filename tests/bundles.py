"""A real but untrained bundle (compact ADDE -> ONNX -> manifest) for fast runtime tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fashsdk.bundle import Bundle
from fashsdk.schema import AttributeSchema
from fashsdk.sources.preprocess import PreprocessSpec

SCHEMA = AttributeSchema.from_dict({
    "colour": ["Black", "Blue", "Red", "White"], "kind": ["Shirt", "Shoe", "Watch"], "sex": ["Men", "Women"]})
SPEC = PreprocessSpec(height=40, width=32)


def make_tiny_bundle(directory: Path, seed: int = 0, dim: int = 16) -> Bundle:
    import torch

    from export.models import ADDE, ModelConfig
    from export.onnx_export import build_bundle

    torch.manual_seed(seed)
    model = ADDE(ModelConfig(backbone="compact", attribute_sizes=SCHEMA.sizes, dim=dim, width=8,
                             height_px=SPEC.height, width_px=SPEC.width))
    sample = np.stack([_resize(img) for img in random_images(64, seed=seed + 100)])
    spread_untrained(model, sample, SPEC)
    with torch.no_grad():  # no learner biases: different images get clearly different embeddings
        for learner in model.learners:
            learner[0].bias.zero_()
            learner[2].bias.zero_()
    pixels = np.random.default_rng(seed).integers(0, 256, (4, SPEC.height, SPEC.width, 3), dtype=np.uint8)
    bundle, _ = build_bundle(model.eval(), SCHEMA, SPEC, directory, pixels)
    return bundle


def spread_untrained(model: Any, pixels: np.ndarray, spec: PreprocessSpec) -> None:
    """Make an untrained ADDE usable in tests: untrained weights map every photo to nearly the
    same vector, so recompute the batch-norm statistics on ``pixels`` (uint8 NHWC) to spread
    them out, and give the memory random block-structured prototypes."""
    import torch

    from fashsdk.sources.preprocess import normalize

    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batch below
    with torch.no_grad():
        model.train()(torch.from_numpy(normalize(pixels, spec)))
        model.memory.normal_(0, 0.3)
        model.memory.mul_(1 - model.offblock_mask)
    model.eval()


def _resize(img: np.ndarray) -> np.ndarray:
    from fashsdk.sources.preprocess import decode_resized

    return decode_resized(img, SPEC)


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """Distinct synthetic photos: a coloured background with a coloured block and noise."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = 60 + i % 7, 50 + i % 5
        img = np.empty((h, w, 3), np.float32)
        img[:] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3)
        img += rng.normal(0, 12, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def make_shift_manipulator(path: Path, shift: np.ndarray, input_name: str = "feature") -> Path:
    """manipulated = feature + wanted @ shift: each wanted value adds its own row."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    j, d = shift.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["wanted", "shift"], ["moved"]),
         helper.make_node("Add", [input_name, "moved"], ["manipulated"])], "manipulator",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("wanted", TensorProto.FLOAT, ["N", j])],
        [helper.make_tensor_value_info("manipulated", TensorProto.FLOAT, ["N", d])],
        [numpy_helper.from_array(shift.astype(np.float32), "shift")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def make_shift_generator_bundle(tmp: Path, name: str = "generator") -> tuple[Bundle, Bundle, np.ndarray]:
    """(base bundle, its generator-family twin whose manipulator adds one random row per wanted value,
    the rows): a generator bundle with known arithmetic."""
    from export.onnx_export import derive_bundle

    base = make_tiny_bundle(tmp / "base")
    shift = np.random.default_rng(0).normal(size=(SCHEMA.total_values, base.dim)).astype(np.float32)
    generator = derive_bundle(tmp / "base", tmp / name, "generator", {},
                              {"manipulator": make_shift_manipulator(tmp / "m.onnx", shift)})
    return base, generator, shift
