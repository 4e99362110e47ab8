"""Structural check of an ONNX model before ONNX Runtime parses it.

A checksum says the file is the one exported; this says it is a model of the shape the
manifest describes: one float32 image input (N, 3, H, W) and float32 outputs ``embedding``
(N, D) and ``logits`` (N, J). It reads the protobuf wire format directly (the field numbers
of onnx.proto3), descending only into the graph's inputs and outputs, so it needs neither the
``onnx`` package nor torch, and a malformed file is a typed error, not a parser crash.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BundleError

FLOAT = 1  # TensorProto.DataType.FLOAT


class _Malformed(ValueError):
    pass


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> list[tuple[int, int | memoryview]]:
    """(field number, value) pairs of one message; length-delimited values as views, others as ints."""
    out: list[tuple[int, int | memoryview]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            out.append((number, value))
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if size > len(data) - pos:
                raise _Malformed(f"field {number} claims {size} bytes, {len(data) - pos} remain")
            out.append((number, data[pos:pos + size]))
            pos += size
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if pos > len(data):
            raise _Malformed("a field runs past the end of its message")
    return out


def _tensor(info: memoryview) -> tuple[str, int, list[int | str]]:
    """(name, element type, dims) of a ValueInfoProto; a dim is its value, or its symbolic name."""
    name, elem, dims = "", 0, []
    for number, value in _fields(info):
        if number == 1 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == 2 and isinstance(value, memoryview):
            for t_number, tensor in _fields(value):
                if t_number != 1 or not isinstance(tensor, memoryview):
                    continue
                for s_number, part in _fields(tensor):
                    if s_number == 1 and isinstance(part, int):
                        elem = part
                    elif s_number == 2 and isinstance(part, memoryview):
                        for d_number, dim in _fields(part):
                            if d_number == 1 and isinstance(dim, memoryview):
                                entries = dict(_fields(dim))
                                value_or_name = entries.get(1, entries.get(2, ""))
                                dims.append(value_or_name if isinstance(value_or_name, int)
                                            else bytes(value_or_name).decode("utf-8", "replace"))
    return name, elem, dims


def check_onnx_model(path: Path, input_name: str, height: int, width: int, dim: int, logits: int) -> None:
    """Raise BundleError unless the model's graph has the inputs and outputs the manifest describes."""
    where = f"model {str(path)!r}"
    try:
        data = memoryview(path.read_bytes())
        graphs = [v for n, v in _fields(data) if n == 7 and isinstance(v, memoryview)]
        if len(graphs) != 1:
            raise _Malformed(f"{len(graphs)} graphs")
        graph = _fields(graphs[0])
        inputs = [_tensor(v) for n, v in graph if n == 11 and isinstance(v, memoryview)]
        outputs = {t[0]: t for t in (_tensor(v) for n, v in graph if n == 12 and isinstance(v, memoryview))}
    except (_Malformed, OSError) as exc:
        raise BundleError(f"{where} is not a readable ONNX model ({exc}); restore or re-export the bundle") from None
    problems = []
    images = [t for t in inputs if t[0] == input_name]
    if len(images) != 1 or images[0][1] != FLOAT or len(images[0][2]) != 4 or images[0][2][1:] != [3, height, width]:
        problems.append(f"input {input_name!r} should be float32 (N, 3, {height}, {width}), found "
                        f"{[(t[0], t[1], t[2]) for t in inputs][:3]}")
    for name, width_expected in (("embedding", dim), ("logits", logits)):
        found = outputs.get(name)
        if found is None or found[1] != FLOAT or len(found[2]) != 2 or found[2][1] != width_expected:
            problems.append(f"output {name!r} should be float32 (N, {width_expected}), found "
                            f"{None if found is None else (found[1], found[2])}")
    if problems:
        raise BundleError(f"{where} does not have the shape its manifest describes: " + "; ".join(problems)
                          + ". The model and manifest do not belong together; re-export the bundle")
