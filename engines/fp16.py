"""Convert an fp32 ONNX model to mixed precision: fp16 compute, fp32 IO and fp32 normalisation.

TensorRT 11 dropped the FP16 builder flag: the supported route is a mixed-precision ONNX
model built as a strongly typed network, and the same model is what ONNX Runtime's CUDA
provider runs. Which nodes stay fp32, and why:

- the model's inputs and outputs (``keep_io_types``), so callers keep passing float32;
- numerically sensitive ops (L2 / Lp normalisation, softmax, layer-style normalisation)
  and the elementwise tail that consumes them (``Clip(norm)``, ``Expand``, ``Div`` by the
  norm): a sum of thousands of squares overflows fp16's 65504 long before it is wrong
  in fp32, and this tail is what makes the embedding unit length;
- any node fed by a weight that fp16 cannot represent (|w| > 65504);
- ops whose ONNX type constraints have no float16, and ops outside the default domain.

Casts are inserted exactly where a tensor crosses between the two regions. Everything is
written with the ``onnx`` helpers, and the result passes ``onnx.checker`` (full check).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10  # onnx.TensorProto.FLOAT16
FP16_MAX = 65504.0

# Normalisation and its relatives: computed in fp32, whatever the rest of the graph does.
SENSITIVE_OPS = frozenset({
    "ReduceL2", "LpNormalization", "ReduceSumSquare", "ReduceLogSumExp", "Softmax", "LogSoftmax",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "RMSNormalization",
})
# Cheap elementwise / shape ops that stay fp32 when a sensitive op feeds them (the tail
# of an L2 normalisation: clamp the norm, broadcast it, divide by it; with one normalisation
# per attribute chunk, the concatenation of the chunks and its scaling too).
TAIL_OPS = frozenset({
    "Div", "Mul", "Add", "Sub", "Sqrt", "Reciprocal", "Clip", "Max", "Min", "Pow", "Abs",
    "Expand", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Concat",
})
# Default-domain ops without float16 in their type constraints.
NO_FP16_OPS = frozenset({"Range", "NonMaxSuppression", "TfIdfVectorizer"})
# Inputs that the ONNX spec types as float32 whatever the op computes in.
FIXED_FLOAT_INPUTS = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}


class Fp16ConversionError(ValueError):
    """The model cannot be converted safely (subgraphs, missing type information...)."""


@dataclass
class Fp16Report:
    """What the conversion did, recorded in the bundle manifest next to the fp16 model."""

    fp32_nodes: list[str] = field(default_factory=list)  # node names kept in fp32
    fp16_nodes: int = 0
    casts_inserted: int = 0
    initializers_fp16: int = 0
    initializers_fp32: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # fp32 node -> why

    def to_json(self) -> dict[str, Any]:
        return {"fp32_nodes": self.fp32_nodes, "fp16_nodes": self.fp16_nodes,
                "casts_inserted": self.casts_inserted, "initializers_fp16": self.initializers_fp16,
                "initializers_fp32": self.initializers_fp32, "fp32_reasons": self.reasons}


def _float_tensors(model: Any) -> dict[str, int]:
    """Element type of every tensor in the main graph (shape inference fills the gaps)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises its own InferenceError subclasses
        raise Fp16ConversionError(f"ONNX shape inference failed ({exc}); export the model with "
                                  "static types (opset 17/18, dynamo exporter) before converting") from None
    types: dict[str, int] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attr.t.data_type
    missing = [o for n in model.graph.node for o in n.output if o and o not in types]
    if missing:
        raise Fp16ConversionError(f"no type information for {len(missing)} tensors (first: {missing[:5]}); "
                                  "run onnx shape inference or re-export the model")
    return types


def _check_supported(model: Any) -> None:
    import onnx

    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise Fp16ConversionError(f"node {node.name or node.op_type!r} ({node.op_type}) has a subgraph; "
                                          "models with control flow are not supported by the fp16 converter")
    if len(model.functions):
        raise Fp16ConversionError("the model has local ONNX functions; inline them first "
                                  "(onnx.inliner.inline_local_functions)")


def _name_nodes(model: Any) -> None:
    """Give every node a unique name, so reports and TensorRT layers can refer to it."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def choose_fp32_nodes(model: Any, types: dict[str, int]) -> dict[str, str]:
    """Names of nodes that must compute in fp32, each with the reason."""
    from onnx import numpy_helper

    producer = {o: n for n in model.graph.node for o in n.output}
    big_weights = {init.name for init in model.graph.initializer if init.data_type == FLOAT
                   and init.name and np.abs(numpy_helper.to_array(init)).max(initial=0.0) > FP16_MAX}
    keep: dict[str, str] = {}
    for node in model.graph.node:  # nodes come topologically sorted in a valid ONNX graph
        if node.domain not in ("", "ai.onnx"):
            keep[node.name] = f"custom-domain op {node.domain}::{node.op_type}"
        elif node.op_type in SENSITIVE_OPS:
            keep[node.name] = "numerically sensitive (normalisation)"
        elif node.op_type in NO_FP16_OPS:
            keep[node.name] = "op has no float16 kernel in the ONNX spec"
        elif any(i in big_weights for i in node.input):
            keep[node.name] = "weight exceeds the fp16 range"
        elif node.op_type in TAIL_OPS and any(
                types.get(i) == FLOAT and i in producer and producer[i].name in keep
                and producer[i].op_type in SENSITIVE_OPS | TAIL_OPS for i in node.input):
            keep[node.name] = "consumes a normalisation result"
    return keep


def convert_to_fp16(model: Any) -> tuple[Any, Fp16Report]:
    """Return a mixed-precision copy of ``model`` (an onnx.ModelProto) and what was done."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _check_supported(model)
    _name_nodes(model)
    types = _float_tensors(model)
    keep = choose_fp32_nodes(model, types)
    graph = model.graph
    report = Fp16Report(reasons=dict(keep))
    graph_inputs = {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    initializers = {i.name: i for i in graph.initializer}

    def is_float(name: str) -> bool:
        return types.get(name) == FLOAT

    # 1) Which precision does each float tensor have after conversion?
    precision: dict[str, int] = {}
    for name in graph_inputs:
        if is_float(name):
            precision[name] = FLOAT  # keep_io_types
    consumers: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name:
                consumers[name].append((node, k))

    def wants(node: Any, k: int) -> int:
        if node.name in keep or k in FIXED_FLOAT_INPUTS.get(node.op_type, ()):
            return FLOAT
        return FLOAT16

    for name, init in initializers.items():
        if init.data_type != FLOAT:
            continue
        uses = {wants(n, k) for n, k in consumers.get(name, [])}
        if uses == {FLOAT16}:
            array = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(array, name))
            precision[name] = FLOAT16
            report.initializers_fp16 += 1
        else:
            precision[name] = FLOAT
            report.initializers_fp32 += 1

    for node in graph.node:
        low = node.name not in keep
        if low:
            _lower_attributes(node)
        for out in node.output:
            if is_float(out):
                precision[out] = FLOAT16 if low else FLOAT
        if low:
            report.fp16_nodes += 1
        else:
            report.fp32_nodes.append(node.name)

    # 2) Insert a Cast wherever a consumer wants the other precision (one Cast per tensor and type).
    new_nodes: list[Any] = []
    cast_cache: dict[tuple[str, int], str] = {}
    used_names = {n.name for n in graph.node}

    def cast_of(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_cache:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            out = f"{name}__{suffix}"
            node_name = f"Cast_{name}_to_{suffix}"
            while node_name in used_names:
                node_name += "_"
            used_names.add(node_name)
            new_nodes.append(helper.make_node("Cast", [name], [out], name=node_name, to=to))
            cast_cache[key] = out
            report.casts_inserted += 1
        return cast_cache[key]

    for node in graph.node:
        for k, name in enumerate(node.input):
            have = precision.get(name)
            if have is None:
                continue  # not a float tensor
            want = wants(node, k)
            if have != want:
                node.input[k] = cast_of(name, want)
        new_nodes.append(node)

    # 3) Outputs stay fp32: rename an fp16 producer's output and cast back under the old name.
    renamed: dict[str, str] = {}
    for out in graph_outputs:
        if precision.get(out) == FLOAT16:
            inner = f"{out}__fp16_out"
            renamed[out] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [out], name=f"Cast_{out}_to_output_fp32", to=FLOAT))
            report.casts_inserted += 1
    for node in new_nodes:
        for k, name in enumerate(node.output):
            if name in renamed and not (node.op_type == "Cast" and node.name.endswith("_to_output_fp32")):
                node.output[k] = renamed[name]
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]

    del graph.node[:]
    graph.node.extend(_toposort(new_nodes, graph_inputs | set(initializers)))
    del graph.value_info[:]  # stale types; recomputed below
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model, report


def _lower_attributes(node: Any) -> None:
    """Make an fp16-region node produce fp16: Cast targets and float constants."""
    import onnx
    from onnx import numpy_helper

    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
            attr.i = FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT and \
                node.op_type in ("Constant", "ConstantOfShape"):
            array = numpy_helper.to_array(attr.t)
            attr.t.CopyFrom(numpy_helper.from_array(np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16),
                                                    attr.t.name))


def _toposort(nodes: list[Any], available: Iterable[str]) -> list[Any]:
    """Kahn's order; inserted casts land right after the tensor they read."""
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[Any] = []
    while pending:
        progressed = []
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                progressed.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if not progressed:
            raise Fp16ConversionError(f"graph has a cycle or dangling inputs near {rest[0].name!r}")
        ordered.extend(progressed)
        pending = rest
    return ordered


def convert_file(source: str | Path, target: str | Path) -> Fp16Report:
    """Convert ``source`` (fp32 ONNX) into ``target``; metadata records the source's sha256."""
    import onnx

    from fashsdk.files import atomic_write_bytes, sha256_file

    model = onnx.load(str(source))
    converted, report = convert_to_fp16(model)
    meta = {p.key: p.value for p in converted.metadata_props}
    meta["fashsdk.precision"] = "fp16-mixed"
    meta["fashsdk.fp16_source_sha256"] = sha256_file(source)
    meta["fashsdk.fp32_nodes"] = ",".join(report.fp32_nodes)
    del converted.metadata_props[:]
    for key, value in meta.items():
        converted.metadata_props.add(key=key, value=value)
    atomic_write_bytes(target, converted.SerializeToString())
    return report


FP16_MODEL = "model.fp16.onnx"


def build_fp16_engine(bundle_dir: str | Path, labels: str | Path, images: Any, *, gate_images: int = 500,
                      split: str | None = "test", seed: int = 0) -> tuple[Any, Any]:
    """Convert the bundle's fp32 model, gate it against fp32 on real images, register it.

    The candidate runs on ONNX Runtime CUDA when this machine has it; otherwise on ONNX
    Runtime CPU, which checks the graph and the fp16 rounding of weights and activations
    between kernels but not GPU fp16 arithmetic; the manifest records which one ran.
    Returns (engine entry, gate report); raises GateError (nothing registered) on failure.
    """
    import tempfile

    from fashsdk.bundle import Bundle, EngineEntry
    from fashsdk.encoding.backends.gpu_probe import onnxruntime_cuda_usable
    from fashsdk.encoding.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
    from fashsdk.families import load_family

    from .gpu_gate import gate_sample, require_pass, run_gate

    bundle = Bundle.load(bundle_dir)
    fp32 = bundle.engine("onnxruntime", "fp32")
    if fp32 is None:
        raise Fp16ConversionError(f"bundle {str(bundle_dir)!r} has no fp32 ONNX model to convert")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / FP16_MODEL
        report = convert_file(bundle.path_of(fp32.file), target)
        pixels, codes, _ = gate_sample(bundle, labels, images, n=gate_images, split=split, seed=seed)
        reference = OnnxRuntimeCpuBackend(bundle.path_of(fp32.file), "fp32")
        if onnxruntime_cuda_usable():
            from fashsdk.encoding.backends.onnxruntime_cuda import OnnxRuntimeCudaBackend

            candidate: Any = OnnxRuntimeCudaBackend(target, "fp16")
        else:
            candidate = OnnxRuntimeCpuBackend(target, "fp16")
        try:
            gate = require_pass(run_gate(reference, candidate, pixels, codes, load_family(bundle), bundle.schema))
        finally:
            reference.close()
            candidate.close()
        facts = {"converter": "engines.fp16", "source_onnx": fp32.file,
                 "source_sha256": bundle.manifest["files"][fp32.file]["sha256"],
                 "io_dtype": "float32", "conversion": report.to_json(), "gate": gate.to_json()}
        entry = EngineEntry("onnxruntime", "fp16", FP16_MODEL, facts)
        entry = bundle.register_engine(entry, source=target) or entry  # may rename to keep old files intact
    return entry, gate
