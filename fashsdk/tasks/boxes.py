"""Where a localising model looked: FashionSearchNet's box per attribute for one image.

A bundle whose model has a ``boxes`` output (N, A, 4; x0, y0, x1, y1 in the model's input
pixels) answers; any other bundle raises QueryError. The boxes come from the bundle's own
checksummed ONNX file through a CPU session, so they are the served model's boxes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import QueryError
from ..sources.preprocess import ImageInput, decode_resized, normalize
from ..system import cpu_session

if TYPE_CHECKING:
    from ..bundle import Bundle

Box = tuple[float, float, float, float]


def has_boxes(bundle: "Bundle") -> bool:
    return "boxes" in bundle.manifest.get("model", {}).get("outputs", [])


def attribute_boxes(bundle: "Bundle", image: ImageInput) -> tuple[np.ndarray, dict[str, Box]]:
    """(the image as the model saw it (H, W, 3) uint8, {attribute: box in those pixels})."""
    if not has_boxes(bundle):
        raise QueryError(f"bundle {str(bundle.directory)!r} ({bundle.manifest.get('model', {}).get('architecture')}) "
                         f"has no boxes output; only FashionSearchNet bundles (--family fsn) localise attributes")
    pixels = decode_resized(image, bundle.preprocess)
    session = cpu_session(str(bundle.path_of("model.onnx")), threads=1)
    boxes = session.run(["boxes"], {bundle.input_name: normalize(pixels[None], bundle.preprocess)})[0][0]
    return pixels, {name: tuple(float(v) for v in box) for name, box in zip(bundle.schema.names, boxes)}
