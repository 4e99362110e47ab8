"""generator: a second ONNX graph rewrites the query's feature for the wanted values (FLAM).

The bundle carries ``manipulator.onnx`` beside ``model.onnx``, pinned by the manifest's checksums
like every file (verified before ONNX Runtime reads it). Its signature:

    feature (N, D) float32, wanted (N, J) float32 -> manipulated (N, D) float32

``wanted`` is the multi-hot of the wanted values' global indices (the schema's order); the graph
holds the value dictionary and turns it into its condition. Several changes go in together, in
one call. The output is re-normalised and searched in the plain retrieval space, so a search
without a change never runs the manipulator. It runs on the CPU with one thread: it is small,
and a query is one row.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..errors import BundleError
from ..schema import AttributeSchema
from .base import NO_CHANGE, check_change_batch, normalized

if TYPE_CHECKING:
    from ..bundle import Bundle

NAME = "generator"
MANIPULATOR = "manipulator"  # the family file's role in the manifest
INPUTS = ("feature", "wanted")
OUTPUT = "manipulated"


class Generator:
    """The generator family over one manipulator session."""

    name = NAME

    def __init__(self, schema: AttributeSchema, dim: int, session: Any) -> None:
        self.schema, self.dim, self.session = schema, dim, session
        self._offsets = np.asarray(schema.offsets)
        _check_signature(session, dim, schema.total_values)

    @classmethod
    def from_bundle(cls, bundle: "Bundle") -> "Generator":
        from ..system import cpu_session

        name = bundle.family_files.get(MANIPULATOR)
        if name is None:
            raise BundleError(f"bundle {str(bundle.directory)!r} (generator) lacks its {MANIPULATOR!r} file; "
                              "re-export the bundle")
        path = bundle.path_of(name)  # checksum verified before native code reads it
        try:
            session = cpu_session(str(path), threads=1)
        except Exception as exc:  # ONNX Runtime's own parse errors
            raise BundleError(f"bundle {str(bundle.directory)!r}: {name} is not a loadable ONNX graph "
                              f"({type(exc).__name__}); re-export the bundle") from None
        try:
            return cls(bundle.schema, bundle.dim, session)
        except ValueError as exc:
            raise BundleError(f"bundle {str(bundle.directory)!r}: {exc}; re-export the bundle") from None

    def _run(self, features: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT], {"feature": features, "wanted": wanted})[0]
        return normalized(np.asarray(out, np.float32)).astype(np.float32)

    def change_one(self, vector: np.ndarray, current: Sequence[int], change: Mapping[int, int]) -> np.ndarray:
        vector = np.asarray(vector, np.float32)
        if not change:
            return vector.copy()
        wanted = np.zeros((1, self.schema.total_values), np.float32)
        for a, v in change.items():
            wanted[0, self._offsets[a] + v] = 1.0
        return self._run(vector[None], wanted)[0]

    def change_batch(self, vectors: np.ndarray, current: np.ndarray, attrs: np.ndarray,
                     values: np.ndarray) -> np.ndarray:
        vectors, current, attrs, values = check_change_batch(vectors, current, attrs, values, self.schema.sizes)
        out = vectors.copy()
        used = attrs != NO_CHANGE
        rows = np.flatnonzero(used.any(1))
        if not len(rows):
            return out
        wanted = np.zeros((len(rows), self.schema.total_values), np.float32)
        r, c = np.nonzero(used[rows])
        wanted[r, self._offsets[attrs[rows][r, c]] + values[rows][r, c]] = 1.0
        out[rows] = self._run(np.ascontiguousarray(vectors[rows]), wanted)
        return out


def _check_signature(session: Any, dim: int, values: int) -> None:
    """The manipulator's inputs and output are the ones this family feeds and reads."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = [f"input {name!r} is missing" for name in INPUTS if name not in inputs]
    if OUTPUT not in outputs:
        problems.append(f"output {OUTPUT!r} is missing")
    for name, width in (("feature", dim), ("wanted", values)):
        if name in inputs and inputs[name].shape[-1] != width:
            problems.append(f"input {name!r} has shape {inputs[name].shape}, expected (N, {width})")
    if OUTPUT in outputs and outputs[OUTPUT].shape[-1] not in (dim, None) and \
            not isinstance(outputs[OUTPUT].shape[-1], str):
        problems.append(f"output {OUTPUT!r} has shape {outputs[OUTPUT].shape}, expected (N, {dim})")
    if problems:
        raise ValueError("the manipulator graph does not match the bundle: " + "; ".join(problems))
