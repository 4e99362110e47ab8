"""Build, gate and register a TensorRT FP16 plan for a bundle (``python -m engines tensorrt``).

Steps: pick the ONNX source for this TensorRT version (the mixed-precision fp16 model for
strong typing on >= 10.12, converting it first if the bundle lacks it; the fp32 model
with the FP16 flag on older versions), build with an explicit optimisation profile, a
workspace limit and a timing cache, run the accuracy gate on real catalog images against
ONNX Runtime CPU fp32, and only then register the plan with its facts in the manifest.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fashsdk.bundle import Bundle, EngineEntry
from fashsdk.encoding.backends.tensorrt_build import BuildOptions, Profile, build_plan, source_precision
from fashsdk.errors import BundleError

PLAN_FILE = "model.fp16.plan"


def default_timing_cache() -> Path:
    """Timing cache for this GPU and TensorRT version, under the plan cache directory."""
    import tensorrt as trt

    from fashsdk.encoding.backends.cuda_memory import device_info
    from fashsdk.encoding.backends.plan_manifest import PlanCache, RuntimeFacts, default_cache_dir

    info = device_info()
    runtime = RuntimeFacts(str(trt.__version__), info.name, info.compute_capability)
    return PlanCache(default_cache_dir()).timing_cache_path(runtime)


def build_tensorrt_engine(bundle_dir: str | Path, labels: str | Path, images: Any, *,
                          profile: Profile = Profile(), workspace_bytes: int = BuildOptions().workspace_bytes,
                          timing_cache: str | Path | None = None, gate_images: int = 500,
                          split: str | None = "test", seed: int = 0) -> tuple[EngineEntry, Any]:
    """Returns (registered engine entry, gate report); raises GateError without registering."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BundleError(f"TensorRT is not installed ({exc}); it comes from NVIDIA's index "
                          "(pip install tensorrt --extra-index-url https://pypi.nvidia.com)") from None
    from fashsdk.encoding.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
    from fashsdk.encoding.backends.tensorrt_plan import TensorRTPlanBackend
    from fashsdk.families import load_family

    from .fp16 import build_fp16_engine
    from .gpu_gate import gate_sample, require_pass, run_gate

    precision = source_precision(str(trt.__version__))
    bundle = Bundle.load(bundle_dir)
    if precision == "fp16" and bundle.engine("onnxruntime", "fp16") is None:
        build_fp16_engine(bundle_dir, labels, images, gate_images=gate_images, split=split, seed=seed)
        bundle = Bundle.load(bundle_dir)
    source = bundle.engine("onnxruntime", precision)
    reference_entry = bundle.engine("onnxruntime", "fp32")
    if source is None or reference_entry is None:
        raise BundleError(f"bundle {str(bundle_dir)!r} lacks the {precision} and fp32 ONNX models a plan needs")
    options = BuildOptions(profile=profile, workspace_bytes=workspace_bytes,
                           timing_cache=Path(timing_cache) if timing_cache else default_timing_cache())
    built = build_plan(bundle.path_of(source.file), options)
    pixels, codes, _ = gate_sample(bundle, labels, images, n=gate_images, split=split, seed=seed)
    candidate = TensorRTPlanBackend(built.plan, built.facts)
    reference = OnnxRuntimeCpuBackend(bundle.path_of(reference_entry.file), "fp32")
    try:
        gate = require_pass(run_gate(reference, candidate, pixels, codes, load_family(bundle), bundle.schema,
                                     batch_size=min(64, profile.maximum)))
    finally:
        candidate.close()
        reference.close()
    with tempfile.TemporaryDirectory() as tmp:
        plan_path = Path(tmp) / PLAN_FILE
        plan_path.write_bytes(built.plan)
        entry = EngineEntry("tensorrt", "fp16", PLAN_FILE, {**built.facts, "gate": gate.to_json()})
        entry = bundle.register_engine(entry, source=plan_path) or entry
    return entry, gate
