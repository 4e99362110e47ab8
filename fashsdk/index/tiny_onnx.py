"""Two tiny ONNX graphs that score float16 vectors, written without the ``onnx`` package.

numpy converts float16 to float32 at about 0.35 G values/s on this class of CPU (no F16C
path), which would make a re-rank over 4080-d float16 vectors cost milliseconds; ONNX Runtime
(already a runtime dependency) does the same cast with F16C. The runtime does not depend on
``onnx``, so the two model protos are encoded here directly (protobuf wire format, the
field numbers of onnx.proto3).
"""
from __future__ import annotations

import threading
from typing import Any

from ..system import cpu_session

# onnx.proto TensorProto.DataType
FLOAT, INT64, FLOAT16 = 1, 7, 10
OPSET = 18
IR_VERSION = 8


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, elem_type: int, dims: list[str]) -> bytes:
    shape = b"".join(_field(1, _field(2, d)) for d in dims)  # Dimension.dim_param
    tensor = _field(1, elem_type) + _field(2, shape)  # TypeProto.Tensor
    return _field(1, name) + _field(2, _field(1, tensor))  # ValueInfoProto(name, TypeProto(tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], **ints: int) -> bytes:
    body = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs) + _field(4, op)
    for name, value in ints.items():  # AttributeProto(name, i, type=INT)
        body += _field(5, _field(1, name) + _field(3, value) + _field(20, 2))
    return body


def _model(name: str, nodes: list[bytes], inputs: list[bytes], outputs: list[bytes]) -> bytes:
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, name)
             + b"".join(_field(11, i) for i in inputs) + b"".join(_field(12, o) for o in outputs))
    opset = _field(1, "") + _field(2, OPSET)
    return _field(1, IR_VERSION) + _field(2, "fashsdk") + _field(7, graph) + _field(8, opset)


def rerank_model() -> bytes:
    """scores (Q, C, 1) = float(store[idx]) @ query; store (N, D) f16, idx (Q, C), query (Q, D, 1)."""
    nodes = [_node("Gather", ["store", "idx"], ["cand"], axis=0),
             _node("Cast", ["cand"], ["cand32"], to=FLOAT),
             _node("MatMul", ["cand32", "query"], ["scores"])]
    inputs = [_value_info("store", FLOAT16, ["N", "D"]), _value_info("idx", INT64, ["Q", "C"]),
              _value_info("query", FLOAT, ["Q", "D", "one"])]
    return _model("fashsdk_rerank_f16", nodes, inputs, [_value_info("scores", FLOAT, ["Q", "C", "one"])])


def scan_model() -> bytes:
    """scores (Q, N) = query @ float(block)^T; block (N, D) f16, query (Q, D)."""
    nodes = [_node("Cast", ["block"], ["block32"], to=FLOAT),
             _node("Gemm", ["query", "block32"], ["scores"], transB=1)]
    inputs = [_value_info("block", FLOAT16, ["N", "D"]), _value_info("query", FLOAT, ["Q", "D"])]
    return _model("fashsdk_scan_f16", nodes, inputs, [_value_info("scores", FLOAT, ["Q", "N"])])


def cast_model(source: int, target: int) -> bytes:
    """y = Cast(x): float32 <-> float16 for bulk conversion (numpy's runs at ~0.1-0.3 G values/s)."""
    return _model("fashsdk_cast", [_node("Cast", ["x"], ["y"], to=target)],
                  [_value_info("x", source, ["N", "D"])], [_value_info("y", target, ["N", "D"])])


MODELS = {"rerank": rerank_model, "scan": scan_model,
          "to_float16": lambda: cast_model(FLOAT, FLOAT16), "to_float32": lambda: cast_model(FLOAT16, FLOAT)}
_sessions: dict[str, Any] = {}
_sessions_lock = threading.Lock()


def session(kind: str) -> Any:
    """A shared single-thread ONNX Runtime session for one of MODELS (run() is thread-safe)."""
    with _sessions_lock:
        if kind not in _sessions:
            _sessions[kind] = cpu_session(MODELS[kind](), threads=1)
        return _sessions[kind]
