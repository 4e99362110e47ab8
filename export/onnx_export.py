"""Export a trained model to ONNX and package it as a fashsdk bundle of one model family.

Eval mode, fp32, only the batch axis dynamic, pinned opset, onnx.checker, then a parity
check against PyTorch on real images that fails loudly above a tolerance.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashsdk.bundle import Bundle, write_bundle
from fashsdk.schema import AttributeSchema
from fashsdk.sources.preprocess import PreprocessSpec, normalize

from .models import ADDE

OPSET = 18
INPUT_NAME = "images"


class ParityError(RuntimeError):
    """The ONNX model disagrees with PyTorch beyond the tolerance."""


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    min_cosine: float
    max_logit_diff: float
    max_box_diff: float | None = None  # FashionSearchNet's boxes, in input pixels

    def to_json(self) -> dict[str, Any]:
        out = {"images": self.images, "max_abs_diff": self.max_abs_diff, "min_cosine": self.min_cosine,
               "max_logit_diff": self.max_logit_diff}
        return out if self.max_box_diff is None else {**out, "max_box_diff": self.max_box_diff}


def export_onnx(model: ADDE, spec: PreprocessSpec, path: str | Path) -> Path:
    """Write the ONNX model: images (N,3,H,W) -> embedding (N,D), logits (N,J) (and FashionSearchNet's
    boxes (N,A,4)): the model's ``output_names``."""
    import onnx

    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 3, spec.height, spec.width)
    batch = torch.export.Dim("batch", min=1, max=65536)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=list(model.output_names), opset_version=OPSET,
                                    dynamic_shapes={"images": {0: batch}}, verbose=False, optimize=True)
    path = Path(path)
    program.save(str(path))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_value != 0 or [d.dim_value for d in dims[1:]] != [3, spec.height, spec.width]:
        raise RuntimeError(f"exported input shape is {dims}; expected (batch, 3, {spec.height}, {spec.width})")
    return path


def check_parity(model: ADDE, onnx_path: str | Path, pixels: np.ndarray, spec: PreprocessSpec,
                 tolerance: float = 1e-4) -> Parity:
    """Compare ONNX Runtime with PyTorch on real images (uint8 (N,H,W,3)); raise above tolerance."""
    import onnxruntime as ort

    x = normalize(pixels, spec)
    with torch.no_grad():
        reference = [t.numpy() for t in model.eval()(torch.from_numpy(x))]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(model.output_names), {INPUT_NAME: x})
    (emb, logits), (ref_emb, ref_logits) = outputs[:2], reference[:2]
    cos = (emb * ref_emb).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref_emb, axis=1))
    boxes = float(np.abs(outputs[2] - reference[2]).max()) if len(outputs) > 2 else None
    parity = Parity(len(x), float(np.abs(emb - ref_emb).max()), float(cos.min()),
                    float(np.abs(logits - ref_logits).max()), boxes)
    if parity.max_abs_diff > tolerance or parity.min_cosine < 1 - tolerance or (boxes or 0.0) > tolerance:
        raise ParityError(f"ONNX/PyTorch parity failed on {len(x)} real images: max |diff| "
                          f"{parity.max_abs_diff:.2e}, min cosine {parity.min_cosine:.6f}, boxes "
                          f"{'-' if boxes is None else f'{boxes:.2e}'} (tolerance {tolerance})")
    return parity


def build_bundle(model: ADDE, schema: AttributeSchema, spec: PreprocessSpec, directory: str | Path,
                 parity_pixels: np.ndarray, extra: dict[str, Any] | None = None, family: str = "adde",
                 family_arrays: dict[str, np.ndarray] | None = None) -> tuple[Bundle, Parity]:
    """Export, check, and write ``directory`` as a bundle of ``family``.

    ``family_arrays`` are the family's files (role -> array); for ``adde`` they default to the
    model's memory block as ``prototypes``.
    """
    cfg = model.config
    if family_arrays is None:
        if family != "adde":
            raise ValueError(f"family {family!r} needs its files (family_arrays); only adde has defaults")
        family_arrays = {"prototypes": model.memory.detach().cpu().numpy().astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, spec, Path(tmp) / "model.onnx")
        parity = check_parity(model, onnx_path, parity_pixels, spec)
        d = cfg.dim
        layout = {name: (i * d, (i + 1) * d) for i, name in enumerate(schema.names)}
        info = {"architecture": cfg.architecture, "backbone": cfg.backbone, "dim_per_attribute": d,
                "config": cfg.to_json(), "input_name": INPUT_NAME, "outputs": list(model.output_names),
                "opset": OPSET, "torch_version": torch.__version__, "parity": parity.to_json(), **(extra or {})}
        bundle = write_bundle(directory, onnx_path, schema, spec, layout, info, family, family_arrays)
    return bundle, parity


def derive_bundle(source: str | Path, directory: str | Path, family: str, family_arrays: dict[str, np.ndarray],
                  family_models: dict[str, Path] | None = None) -> Bundle:
    """A bundle of another family over the same exported model (same embedding space, so
    the two share an index): the model file is copied, not exported again."""
    base = Bundle.load(source)
    info = {**base.manifest["model"], "derived_from": base.sha256()}
    return write_bundle(directory, base.path_of("model.onnx"), base.schema, base.preprocess, base.layout, info,
                        family, family_arrays, family_models)
