"""Static int8 (QDQ) engine for ONNX Runtime CPU, calibrated on real catalog images.

Choices, and why (measured on an AMD EPYC with AVX2 and no VNNI; Top-30 = manipulation
accuracy over 20,000 queries on 2,000 test photos):
- ``reduce_range`` (7-bit weights): without VNNI, MLAS multiplies u8 x s8 with VPMADDUBSW,
  which adds pairs of products into int16 and saturates. Full 8-bit weights kept the mean
  cosine to fp32 at 0.996 yet took the trained demo model's Top-30 from 80.4% to 28.6%;
  7-bit weights cannot overflow (80.4%).
- uint8 activations x int8 weights: the combination MLAS has fast x86 kernels for.
- per-channel weight scales: conv filters differ in range by orders of magnitude.
- BatchNorm is already folded into the convolutions by the exporter; ``quant_pre_process``
  runs ONNX Runtime's graph optimisations and shape inference before quantising.
- only Conv/Gemm/MatMul are quantised (the FLOPs), and not the last compute layer before
  each output (ADDE's per-attribute learner outputs and heads, under 3% of the FLOPs):
  quantising them cost the small smoke model 9.5 points of Top-30 (the demo model 0.2) at
  a mean cosine of 0.99998, because manipulation ranks items whose embeddings differ by
  less than that rounding. Mean cosine alone is therefore not the gate; Top-30 is.

The engine is registered only when it passes an accuracy gate against fp32 on images the
model never trained on, and (unless forced) only when it is measured faster than fp32 on
this machine: ``select.py`` prefers int8 whenever a bundle lists it, so listing a slower
int8 engine would make the default slower. Every figure goes into the manifest.
"""
from __future__ import annotations

import collections
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fashsdk.bundle import Bundle, EngineEntry
from fashsdk.encoding.backends.base import ModelOutputs
from fashsdk.errors import FashsdkError
from fashsdk.families import load_family
from fashsdk.files import sha256_file
from fashsdk.sources.preprocess import PreprocessSpec, normalize
from fashsdk.system import cpu_session, machine

from .calibration import CalibrationReader, ids_digest, load_pixels, sample_ids
from .speed import compare_models

INT8_FILE = "model.int8.onnx"
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
METHODS = ("minmax", "entropy", "percentile")


class Int8Error(FashsdkError):
    """The int8 engine was not registered: not accurate enough, not faster, or not buildable."""


@dataclass(frozen=True)
class Int8Options:
    """How to quantise; the defaults are the measured best on AVX2 (see the module doc)."""

    per_channel: bool = True
    reduce_range: bool = True
    activations: str = "uint8"  # "uint8" or "int8"
    op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    exclude_nodes: tuple[str, ...] = ()
    output_layers_fp32: bool = True  # keep the last compute layer before each output in fp32
    depthwise_fp32: bool = False  # keep grouped (depthwise) convolutions in fp32
    method: str = "minmax"
    calibration_images: int = 300
    calibration_split: str | None = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r} is not one of {METHODS}")
        if self.activations not in ("uint8", "int8"):
            raise ValueError("activations must be 'uint8' or 'int8'")
        if self.calibration_images < 1:
            raise ValueError("calibration_images must be >= 1")


@dataclass(frozen=True)
class Int8Gate:
    """What an int8 engine must meet against fp32 on held-out real images."""

    min_mean_cosine: float = 0.99
    min_neighbour_overlap: float = 0.85  # tie-aware top-10 overlap within the sample
    max_top30_change_points: float = 1.0  # on the sample as gallery; the full test split is benchmarks.quality
    min_speedup: float = 1.0  # int8 / fp32 throughput measured here; 0 disables the speed rule
    images: int = 500
    split: str | None = "test"
    neighbours: int = 10
    timing_batch: int = 32
    timing_repeats: int = 5


@dataclass
class Int8Report:
    """Accuracy and speed of the int8 model against fp32, and the verdict."""

    images: int
    mean_cosine: float
    min_cosine: float
    neighbour_overlap: float
    neighbour_overlap_strict: float
    top30_fp32: float | None
    top30_int8: float | None
    top30_queries: int
    speed: dict[str, Any] | None
    gate: Int8Gate
    failures: list[str] = field(default_factory=list)
    slower: bool = False
    predicted_agreement: float | None = None  # share of (image, attribute) predictions unchanged

    @property
    def top30_change_points(self) -> float | None:
        if self.top30_fp32 is None or self.top30_int8 is None:
            return None
        return 100.0 * (self.top30_int8 - self.top30_fp32)

    def accuracy_json(self) -> dict[str, Any]:
        return {"images": self.images, "split": self.gate.split, "mean_cosine": round(self.mean_cosine, 6),
                "min_cosine": round(self.min_cosine, 6), "top10_neighbour_overlap": round(self.neighbour_overlap, 4),
                "top10_neighbour_overlap_strict": round(self.neighbour_overlap_strict, 4),
                "top30_fp32": _round(self.top30_fp32), "top30_int8": _round(self.top30_int8),
                "top30_change_points": _round(self.top30_change_points), "top30_queries": self.top30_queries,
                "predicted_attribute_agreement": self.predicted_agreement}

    def summary(self) -> str:
        top = ("" if self.top30_change_points is None else
               f", Top-30 on the sample {100 * self.top30_fp32:.2f} -> {100 * self.top30_int8:.2f} "  # type: ignore[operator]
               f"({self.top30_change_points:+.2f} points over {self.top30_queries} queries)")
        speed = ""
        if self.speed is not None:
            speed = (f"; speed {self.speed['fp32_ms_per_image']:.3f} -> {self.speed['int8_ms_per_image']:.3f} ms/image "
                     f"(x{self.speed['speedup']:.2f}, batch {self.speed['batch']}, {self.speed['threads']} threads)")
        verdict = "PASS" if not self.failures else "FAIL: " + "; ".join(self.failures)
        return (f"int8 vs fp32 on {self.images} held-out images: mean cosine {self.mean_cosine:.5f} "
                f"(min {self.min_cosine:.5f}), top-{self.gate.neighbours} neighbour overlap "
                f"{self.neighbour_overlap:.4f} (strict {self.neighbour_overlap_strict:.4f}){top}{speed}: {verdict}")


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(value, digits)


def quantize_model(fp32_path: str | Path, out_path: str | Path, pixels: np.ndarray, spec: PreprocessSpec,
                   input_name: str, options: Int8Options = Int8Options()) -> dict[str, Any]:
    """Write a QDQ int8 copy of ``fp32_path`` calibrated on ``pixels``; returns what was quantised."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    with tempfile.TemporaryDirectory(prefix="fashsdk-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        reader = CalibrationReader(pixels, spec, input_name)
        exclude = list(options.exclude_nodes)
        graph = onnx.load(str(prepared), load_external_data=False)
        if options.output_layers_fp32:
            exclude += output_layers(graph, options.op_types)
        if options.depthwise_fp32:
            exclude += grouped_convolutions(graph)
        quantize_static(
            str(prepared), str(out_path), reader,
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(options.op_types),
            per_channel=options.per_channel, reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
            calibrate_method=method, extra_options={"CalibMaxIntermediateOutputs": 64})
    model = onnx.load(str(out_path), load_external_data=False)
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    targets = [n for n in model.graph.node if n.op_type in options.op_types]
    quantized = [n.name for n in targets if n.input and n.input[0] in dequantized]
    kept = [n.name for n in targets if n.name not in set(quantized)]
    return {"quantized_nodes": len(quantized), "fp32_nodes": kept, "calibration_images_used": reader.used,
            "quantized_by_type": dict(collections.Counter(n.op_type for n in targets if n.name in set(quantized)))}


def grouped_convolutions(model: Any) -> list[str]:
    """Names of the Conv nodes with more than one group (depthwise convolutions): few FLOPs,
    one small filter per channel, which 8 bits describe poorly."""
    return [n.name for n in model.graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def output_layers(model: Any, op_types: Sequence[str]) -> list[str]:
    """Names of the ``op_types`` nodes from which a graph output is reachable without
    passing through another compute node: the last compute layer before each output."""
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in model.graph.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        stack, seen = list(node.output), set(node.output)
        while stack:
            tensor = stack.pop()
            if tensor in outputs:
                found.append(node.name)
                break
            for nxt in consumers[tensor]:
                if nxt.op_type in COMPUTE_OPS or nxt.op_type in op_types:
                    continue
                for out in nxt.output:
                    if out not in seen:
                        seen.add(out)
                        stack.append(out)
    return found


def _embed(session: Any, input_name: str, images: np.ndarray, batch_size: int = 64) -> ModelOutputs:
    emb, logits = [], []
    for s in range(0, len(images), batch_size):
        e, l = session.run(["embedding", "logits"], {input_name: images[s:s + batch_size]})
        emb.append(e)
        logits.append(l)
    return ModelOutputs(np.concatenate(emb), np.concatenate(logits))


def check_images(bundle: Bundle, labels: str | Path, images: str | Path | Sequence[str | Path], gate: Int8Gate,
                 seed: int = 0, exclude: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Held-out images (uint8) for the gate, with label codes when the CSV has the bundle's attributes."""
    from fashsdk.sources.catalog import read_catalog, read_rows

    header, _ = read_rows(labels)
    ids = sample_ids(labels, gate.images, split=gate.split, seed=seed + 1, exclude=exclude)
    codes = None
    if all(name in header for name in bundle.schema.names):
        catalog, _ = read_catalog(labels, bundle.schema.names, schema=bundle.schema)
        row = {i: n for n, i in enumerate(catalog.ids)}
        codes = catalog.codes[[row[i] for i in ids]]
    return load_pixels(images, ids, bundle.preprocess), codes, ids


def evaluate_int8(bundle: Bundle, fp32_path: str | Path, int8_path: str | Path, pixels: np.ndarray,
                  codes: np.ndarray | None, gate: Int8Gate = Int8Gate(), threads: int | None = None,
                  measure_speed: bool = True) -> Int8Report:
    """Compare the int8 model with fp32 on the same real images: drift, Top-30, speed."""
    from .gpu_gate import cosines, manipulation_top_k, neighbour_overlap

    x = normalize(pixels, bundle.preprocess)
    ref = _embed(cpu_session(fp32_path, threads), bundle.input_name, x)
    cand = _embed(cpu_session(int8_path, threads), bundle.input_name, x)
    cos = cosines(ref.embedding, cand.embedding)
    overlap, strict = neighbour_overlap(ref.embedding, cand.embedding, gate.neighbours)
    agree = float((bundle.schema.predicted_codes(ref.logits)[0] == bundle.schema.predicted_codes(cand.logits)[0]).mean())
    top_ref = top_cand = None
    nq = 0
    if codes is not None:
        family = load_family(bundle)
        top_ref, nq = manipulation_top_k(ref.embedding, codes, family, bundle.schema, 30)
        top_cand, _ = manipulation_top_k(cand.embedding, codes, family, bundle.schema, 30)
    speed = None
    if measure_speed:
        batch = x[:gate.timing_batch]
        if len(batch) < gate.timing_batch:
            batch = np.concatenate([batch] * (gate.timing_batch // max(1, len(batch)) + 1))[:gate.timing_batch]
        ms = compare_models({"fp32": fp32_path, "int8": int8_path}, batch, bundle.input_name, threads,
                            repeats=gate.timing_repeats)
        info = machine()
        speed = {"cpu": info["cpu"], "flags": [f for f, on in info["flags"].items() if on],
                 "threads": threads or info["cores"], "batch": gate.timing_batch, "repeats": gate.timing_repeats,
                 "fp32_ms_per_image": round(ms["fp32"]["median"], 4), "int8_ms_per_image": round(ms["int8"]["median"], 4),
                 "speedup": round(ms["fp32"]["median"] / ms["int8"]["median"], 3)}
    report = Int8Report(len(x), float(cos.mean()), float(cos.min()), overlap, strict, top_ref, top_cand, nq,
                        speed, gate, predicted_agreement=agree)
    report.failures = _failures(report)
    report.slower = bool(speed is not None and gate.min_speedup > 0 and speed["speedup"] < gate.min_speedup)
    return report


def _failures(report: Int8Report) -> list[str]:
    from .gpu_gate import threshold_failures

    g = report.gate
    return threshold_failures(report.mean_cosine, report.neighbour_overlap, report.top30_change_points,
                              min_mean_cosine=g.min_mean_cosine, min_overlap=g.min_neighbour_overlap,
                              max_change_points=g.max_top30_change_points, neighbours=g.neighbours)


def build_int8_engine(bundle_dir: str | Path, labels: str | Path, images: str | Path | Sequence[str | Path],
                      options: Int8Options = Int8Options(), gate: Int8Gate = Int8Gate(), *,
                      force: bool = False, threads: int | None = None) -> tuple[EngineEntry, Int8Report]:
    """Quantise a bundle's fp32 model, gate it, and register it as ``onnxruntime``/``int8``.

    Raises Int8Error (bundle untouched) when the gate fails, or when int8 is measured slower
    than ``gate.min_speedup`` x fp32 here and ``force`` is not set.
    """
    import onnxruntime

    bundle = Bundle.load(bundle_dir)
    fp32 = bundle.engine("onnxruntime", "fp32")
    if fp32 is None:
        raise Int8Error(f"bundle {str(bundle.directory)!r} has no onnxruntime fp32 engine to quantise")
    fp32_path = bundle.path_of(fp32.file)
    calib_ids = sample_ids(labels, options.calibration_images, split=options.calibration_split, seed=options.seed)
    calib = load_pixels(images, calib_ids, bundle.preprocess)
    check, codes, check_ids = check_images(bundle, labels, images, gate, options.seed, exclude=calib_ids)
    with tempfile.TemporaryDirectory(prefix="fashsdk-int8-") as tmp:
        out = Path(tmp) / INT8_FILE
        quantized = quantize_model(fp32_path, out, calib, bundle.preprocess, bundle.input_name, options)
        report = evaluate_int8(bundle, fp32_path, out, check, codes, gate, threads)
        if report.failures:
            raise Int8Error(report.summary() + ". Not registered: quantise fewer ops (--exclude-nodes), "
                                               "try --method percentile, or serve fp32.")
        if report.slower and not force:
            raise Int8Error(report.summary() + f". Not registered: int8 is not faster than fp32 on this CPU "
                                               f"({report.speed['cpu']}); pass --force to register it anyway "  # type: ignore[index]
                                               "(the runtime would then prefer it).")
        facts = {
            "calibration": {"images": len(calib_ids), "split": options.calibration_split, "seed": options.seed,
                            "ids_sha256_16": ids_digest(calib_ids), "method": options.method},
            "quantization": {"format": "QDQ", "activations": f"{options.activations} per-tensor asymmetric",
                             "weights": "int8 symmetric " + ("per-channel" if options.per_channel else "per-tensor"),
                             "per_channel": options.per_channel, "reduce_range": options.reduce_range,
                             "op_types": list(options.op_types), "exclude_nodes": list(options.exclude_nodes),
                             **quantized},
            "onnxruntime_version": onnxruntime.__version__,
            "source": {"file": fp32.file, "sha256": sha256_file(fp32_path)},
            "accuracy_vs_fp32": report.accuracy_json(),
            "speed_vs_fp32": report.speed,
            "forced_although_slower": bool(report.slower and force),
            "options": asdict(options),
        }
        registered = bundle.register_engine(EngineEntry("onnxruntime", "int8", INT8_FILE, facts), source=out)
    entry = registered if isinstance(registered, EngineEntry) else bundle.engine("onnxruntime", "int8")
    assert entry is not None
    return entry, report
