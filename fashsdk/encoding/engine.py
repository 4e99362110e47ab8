"""Open a bundle's engine and check it against its manifest before the first real query."""
from __future__ import annotations

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError, FashsdkError
from .backends import EmbeddingBackend, open_backend
from .backends.select import resolve
from .onnx_check import check_onnx_model


def open_checked_backend(bundle: Bundle, name: str = "auto", threads: int | None = None) -> EmbeddingBackend:
    """The engine, run once on a blank image: a model that disagrees with its manifest (input
    size, embedding or logit width) is a BundleError here, not a native error or a wrong
    answer on the first real query."""
    where = f"bundle {str(bundle.directory)!r}"
    spec, entry = resolve(bundle, name)
    if spec.manifest_backend == "onnxruntime":  # its structure first: ONNX Runtime trusts what it parses
        check_onnx_model(bundle.path_of(entry.file), bundle.input_name, bundle.preprocess.height,
                         bundle.preprocess.width, bundle.dim, bundle.schema.total_values)
    try:
        backend: EmbeddingBackend = open_backend(bundle, spec.name, threads)
    except FashsdkError:
        raise
    except Exception as exc:
        raise BundleError(f"{where}: its engine could not be opened ({type(exc).__name__}: {str(exc)[:300]})") from None
    spec = bundle.preprocess
    try:
        out = backend.run(np.zeros((1, 3, spec.height, spec.width), np.float32))
        shapes = (np.shape(out.embedding), np.shape(out.logits))
    except Exception as exc:
        raise BundleError(f"{where}: the model rejects the {spec.height}x{spec.width} input its manifest's "
                          f"preprocess asks for ({type(exc).__name__}: {str(exc)[:300]})") from None
    expected = ((1, bundle.dim), (1, bundle.schema.total_values))
    if shapes != expected:
        raise BundleError(f"{where}: the model outputs embedding/logits of shapes {shapes}, the manifest "
                          f"describes {expected}; the model and manifest do not belong together")
    return backend
