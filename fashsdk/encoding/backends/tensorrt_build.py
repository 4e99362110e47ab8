"""Build a TensorRT plan from a bundle's ONNX model: FP16, explicit profile, timing cache.

It sits in the runtime package (not only in engines/) because a plan is tied to the GPU
model and TensorRT version, and ``TensorRTPlanBackend`` may rebuild one where it runs when
the caller allows it. Two precision routes:

- TensorRT >= 10.12: a strongly typed network from the mixed-precision ONNX model
  (engines/fp16.py); TensorRT 11 removed the FP16 builder flag and is always strongly typed.
- older TensorRT: the fp32 ONNX model with the FP16 builder flag, normalisation layers
  pinned to fp32 with precision constraints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ...errors import BundleError
from ...files import atomic_write_bytes, sha256_file

STRONG_TYPING_FROM = (10, 12)
DEFAULT_WORKSPACE_BYTES = 2 << 30


class PlanBuildError(BundleError):
    """TensorRT could not parse the ONNX model or build a plan from it."""


def parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for token in str(text).split("."):
        digits = "".join(ch for ch in token if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def uses_strong_typing(tensorrt_version: str) -> bool:
    """Strongly typed mixed precision from 10.12 on (the FP16 flag is deprecated there, gone in 11)."""
    return parse_version(tensorrt_version)[:2] >= STRONG_TYPING_FROM


def source_precision(tensorrt_version: str) -> str:
    """Which of the bundle's ONNX models a plan for this TensorRT version is built from."""
    return "fp16" if uses_strong_typing(tensorrt_version) else "fp32"


@dataclass(frozen=True)
class Profile:
    """Batch sizes of the optimisation profile: the plan accepts min..max, tuned for opt."""

    minimum: int = 1
    optimum: int = 64
    maximum: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise ValueError(f"optimisation profile needs 1 <= min <= opt <= max, got "
                             f"{self.minimum}/{self.optimum}/{self.maximum}")

    def shapes(self, item_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        item = tuple(int(s) for s in item_shape)
        return tuple((b, *item) for b in (self.minimum, self.optimum, self.maximum))

    @classmethod
    def from_facts(cls, profile: Mapping[str, Any]) -> "Profile":
        return cls(int(profile["min"][0]), int(profile["opt"][0]), int(profile["max"][0]))


@dataclass(frozen=True)
class BuildOptions:
    profile: Profile = field(default_factory=Profile)
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Path | None = None  # read if present, written back after the build
    device: int = 0


@dataclass
class BuiltPlan:
    plan: bytes
    facts: dict[str, Any]


# (onnx path, options) -> BuiltPlan: the seam the runtime's rebuild path calls.
PlanBuilder = Callable[[Path, BuildOptions], BuiltPlan]


def build_plan(onnx_path: str | Path, options: BuildOptions = BuildOptions()) -> BuiltPlan:
    """Parse ``onnx_path``, build a serialised plan for this GPU, and describe it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise PlanBuildError(f"TensorRT is not installed ({exc}); it comes from NVIDIA's package index "
                             "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)") from None
    from .cuda_memory import CudaDevice

    onnx_path = Path(onnx_path)
    version = str(trt.__version__)
    strong = uses_strong_typing(version)
    device = CudaDevice(options.device)
    try:
        info = device.info()
        with device.active():
            plan, profile_json, cache_state = _build(trt, onnx_path, options, strong)
    finally:
        device.close()
    facts = {
        "tensorrt_version": version,
        "gpu_name": info.name,
        "compute_capability": info.compute_capability,
        "cuda_driver_version": info.cuda_driver_version,
        "typing": "strong" if strong else "weak-fp16-flag",  # precision: the engine entry's own field
        "profile": profile_json,
        "source_onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "workspace_bytes": int(options.workspace_bytes),
        "timing_cache": cache_state,
        "plan_bytes": len(plan),
        "built_unix": int(time.time()),
    }
    return BuiltPlan(plan, facts)


def _build(trt: Any, onnx_path: Path, options: BuildOptions, strong: bool) -> tuple[bytes, dict, dict]:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strong and parse_version(trt.__version__)[0] < 11:  # always on (and the flag deprecated) in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PlanBuildError(f"TensorRT could not parse {str(onnx_path)!r}: {'; '.join(errors) or 'no details'}")
    if network.num_inputs != 1:
        raise PlanBuildError(f"{str(onnx_path)!r} has {network.num_inputs} inputs; fashsdk models have one (images)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    if not strong:
        config.set_flag(trt.BuilderFlag.FP16)
        _pin_sensitive_layers(trt, network, config)
    tensor = network.get_input(0)
    item = tuple(tensor.shape)[1:]
    low, opt, high = options.profile.shapes(item)
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_state = _attach_timing_cache(config, options.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PlanBuildError(f"TensorRT failed to build a plan from {str(onnx_path)!r} (see its log above); "
                             "a larger workspace or a smaller profile maximum may help")
    if options.timing_cache is not None:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        atomic_write_bytes(options.timing_cache, data)
        cache_state["sha256_after"] = _sha256_bytes(data)
    profile_json = {"input": tensor.name, "min": list(low), "opt": list(opt), "max": list(high)}
    return bytes(memoryview(serialized)), profile_json, cache_state


def _attach_timing_cache(config: Any, path: Path | None) -> dict[str, Any]:
    """Start from the cache file when it is usable, otherwise from an empty cache."""
    state: dict[str, Any] = {"file": str(path) if path else None, "loaded": False}
    blob = b""
    if path is not None and Path(path).is_file():
        blob = Path(path).read_bytes()
    cache = config.create_timing_cache(blob)
    if blob and cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        state["loaded"] = True
        state["sha256_before"] = _sha256_bytes(blob)
        return state
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return state


def _pin_sensitive_layers(trt: Any, network: Any, config: Any) -> int:
    """Weakly typed builds only: keep reductions/softmax/normalisation and their tail in fp32."""
    def types(*names: str) -> set[Any]:  # NORMALIZATION only exists from TensorRT 8.6 on
        return {getattr(trt.LayerType, n) for n in names if hasattr(trt.LayerType, n)}

    sensitive = types("REDUCE", "SOFTMAX", "NORMALIZATION")
    tail = types("ELEMENTWISE", "UNARY", "ACTIVATION", "SHUFFLE", "SLICE", "IDENTITY")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    consumers: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None:
                consumers.setdefault(t.name, []).append(index)
    keep = [i for i, layer in enumerate(layers) if layer.type in sensitive]
    seen = set(keep)
    while keep:
        layer = layers[keep.pop()]
        for j in range(layer.num_outputs):
            for c in consumers.get(layer.get_output(j).name, []):
                if c not in seen and layers[c].type in tail:
                    seen.add(c)
                    keep.append(c)
    for i in seen:
        layer = layers[i]
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return len(seen)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
