"""GPU engines: fp16 conversion, accuracy gate, plan compatibility, backend selection, results file.

Everything that needs no GPU runs here on real parts (real ONNX models exported from ADDE,
real catalog photos, real ONNX Runtime sessions, real bundles and manifests). The only
stand-in is the plan builder passed at the rebuild seam, since TensorRT cannot be installed
on CPU machines. Tests marked ``gpu`` skip with the reason when the GPU stack is missing.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from realdata import real_subset

from engines.fp16 import FP16_MODEL, Fp16ConversionError, convert_file, convert_to_fp16
from engines.gpu_gate import (
    GateError,
    GateReport,
    GateThresholds,
    decide,
    embed,
    gate_sample,
    neighbour_overlap,
    require_pass,
    run_gate,
)
from fashsdk.bundle import Bundle, EngineEntry
from fashsdk.encoding.backends import available_backends, open_backend
from fashsdk.encoding.backends.gpu_probe import nvidia_gpu_present, onnxruntime_cuda_usable, tensorrt_usable
from fashsdk.encoding.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from fashsdk.encoding.backends.plan_manifest import PlanCache, PlanIncompatibleError, RuntimeFacts, resolve_plan
from fashsdk.encoding.backends.select import REGISTRY
from fashsdk.encoding.backends.tensorrt_build import BuildOptions, BuiltPlan, Profile
from fashsdk.errors import BundleError
from fashsdk.files import sha256_file

H100 = RuntimeFacts("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
PLAN = "model.fp16.plan"


# ---------------------------------------------------------------- fixtures ---------------------
@pytest.fixture(scope="module")
def gate_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """500 real photos (shard 1) as a folder, with their labels CSV."""
    return real_subset(tmp_path_factory.mktemp("gate_data"), 500, shard=1)


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory: pytest.TempPathFactory, real_bundle_dir: Path) -> Path:
    """A copy of the shared real bundle with the converted fp16 model registered (not gated)."""
    directory = Path(shutil.copytree(real_bundle_dir, tmp_path_factory.mktemp("fp16") / "bundle"))
    bundle = Bundle.load(directory)
    converted = directory.parent / "converted.onnx"
    report = convert_file(bundle.path_of("model.onnx"), converted)
    bundle.register_engine(EngineEntry("onnxruntime", "fp16", FP16_MODEL, {"conversion": report.to_json()}),
                           source=converted)
    return directory


@pytest.fixture(scope="module")
def gate_images(fp16_bundle: Path, gate_data: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    folder, labels = gate_data
    pixels, codes, ids = gate_sample(Bundle.load(fp16_bundle), labels, folder, n=500, split=None)
    assert len(ids) == 500
    return pixels, codes


def _fp16_path(directory: Path) -> Path:
    bundle = Bundle.load(directory)
    entry = bundle.engine("onnxruntime", "fp16")
    assert entry is not None
    return bundle.path_of(entry.file)


# ---------------------------------------------------------------- fp16 conversion -------------
def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def test_fp16_model_is_valid_with_fp32_io_and_fp32_normalisation(fp16_bundle: Path) -> None:
    model = onnx.load(str(_fp16_path(fp16_bundle)))
    onnx.checker.check_model(model, full_check=True)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.name for o in model.graph.output] == ["embedding", "logits"]
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)
    types = _elem_types(model)
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 for n in convs)  # weights halved
    norm = [n for n in model.graph.node if n.op_type == "ReduceL2"]
    producer = {o: n for n in model.graph.node for o in n.output}
    chunks = len(Bundle.load(fp16_bundle).schema.attributes)  # one normalisation per attribute chunk
    assert len(norm) == chunks and all(types[n.input[0]] == TensorProto.FLOAT for n in norm)  # squares in fp32
    last = producer["embedding"]
    assert last.op_type == "Div" and types[last.input[0]] == TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fashsdk.precision"] == "fp16-mixed"
    assert meta["fashsdk.fp16_source_sha256"] == sha256_file(Path(fp16_bundle) / "model.onnx")


def test_fp16_model_matches_fp32_on_real_images(fp16_bundle: Path, gate_images: tuple[np.ndarray, np.ndarray]) -> None:
    pixels = gate_images[0][:128]
    ref = embed(OnnxRuntimeCpuBackend(Path(fp16_bundle) / "model.onnx", threads=1), pixels)
    out = embed(OnnxRuntimeCpuBackend(_fp16_path(fp16_bundle), "fp16", threads=1), pixels)
    assert out.embedding.dtype == np.float32 and out.embedding.shape == ref.embedding.shape
    cos = (ref.embedding * out.embedding).sum(1)
    assert cos.mean() > 0.9999 and cos.min() > 0.999  # an untrained model: some chunks are tiny before normalising
    assert np.allclose(np.linalg.norm(out.embedding, axis=1), 1.0, atol=1e-5)  # normalised in fp32
    assert np.abs(out.logits - ref.logits).max() < 2e-2 * max(1.0, np.abs(ref.logits).max())


def _toy_model(weight_scale: float) -> onnx.ModelProto:
    """x (N,4) -> MatMul W1 -> Relu -> MatMul W2 (scaled) -> Softmax -> probs; float32 IO."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.normal(size=(8, 3)) * weight_scale).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="mm2"),
             helper.make_node("Softmax", ["z"], ["probs"], name="softmax", axis=-1)]
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 3])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_fp16_keeps_softmax_and_out_of_range_weights_in_fp32() -> None:
    import onnxruntime as ort

    model = _toy_model(weight_scale=1e5)  # w2 cannot be represented in fp16
    converted, report = convert_to_fp16(model)
    assert report.reasons == {"mm2": "weight exceeds the fp16 range",
                              "softmax": "numerically sensitive (normalisation)"}
    types = _elem_types(converted)
    assert types["w1"] == TensorProto.FLOAT16 and types["w2"] == TensorProto.FLOAT
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    assert np.isfinite(run(converted)).all()
    assert np.allclose(run(converted), run(model), atol=2e-2)

    small, small_report = convert_to_fp16(_toy_model(weight_scale=1.0))
    assert small_report.fp32_nodes == ["softmax"] and _elem_types(small)["w2"] == TensorProto.FLOAT16


def test_fp16_refuses_control_flow_with_a_clear_error() -> None:
    then_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y_then"])], "then", [],
                                   [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [],
                                   [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(Fp16ConversionError, match="subgraph"):
        convert_to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


# ---------------------------------------------------------------- accuracy gate ---------------
def test_gate_passes_fp16_model_on_cpu_over_500_real_images(fp16_bundle: Path,
                                                            gate_images: tuple[np.ndarray, np.ndarray]) -> None:
    bundle = Bundle.load(fp16_bundle)
    pixels, codes = gate_images
    report = run_gate(OnnxRuntimeCpuBackend(bundle.path_of("model.onnx"), threads=1),
                      OnnxRuntimeCpuBackend(_fp16_path(fp16_bundle), "fp16", threads=1),
                      pixels, codes, bundle.family, bundle.schema)
    assert report.images == 500 and report.queries > 100
    assert report.passed, report.summary()
    assert report.mean_cosine >= 0.999 and report.neighbour_overlap >= 0.98
    assert abs(report.top_k_change_points) <= 0.5
    assert report.candidate == "onnxruntime-cpu-fp16" and report.reference == "onnxruntime-cpu-fp32"
    assert require_pass(report) is report


def test_gate_fails_a_model_whose_weights_drifted(fp16_bundle: Path, gate_images: tuple[np.ndarray, np.ndarray],
                                                  tmp_path: Path) -> None:
    bundle = Bundle.load(fp16_bundle)
    model = onnx.load(str(bundle.path_of("model.onnx")))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT and "weight" in init.name:
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((w * (1 + 0.3 * rng.normal(size=w.shape))).astype(np.float32),
                                                  init.name))
    onnx.save(model, str(tmp_path / "drifted.onnx"))
    pixels, codes = gate_images
    report = run_gate(OnnxRuntimeCpuBackend(bundle.path_of("model.onnx"), threads=1),
                      OnnxRuntimeCpuBackend(tmp_path / "drifted.onnx", threads=1),
                      pixels[:300], codes[:300], bundle.family, bundle.schema)
    assert not report.passed
    assert any("mean cosine" in f for f in report.failures)
    with pytest.raises(GateError, match="not registered"):
        require_pass(report)


def _report(**changes: float) -> GateReport:
    base = dict(reference="r", candidate="c", images=500, mean_cosine=0.9995, min_cosine=0.99,
                neighbour_overlap=0.99, neighbour_overlap_strict=0.95, queries=1000, top_k_reference=0.60,
                top_k_candidate=0.60, top_k_change_points=0.0, max_logit_diff=0.01, thresholds=GateThresholds())
    base.update(changes)
    return GateReport(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("changes, failing", [
    ({}, None),
    ({"mean_cosine": 0.999}, None),
    ({"mean_cosine": 0.99899}, "mean cosine"),
    ({"mean_cosine": float("nan")}, "mean cosine"),
    ({"neighbour_overlap": 0.98}, None),
    ({"neighbour_overlap": 0.9799}, "neighbour overlap"),
    ({"top_k_change_points": -0.5}, None),
    ({"top_k_change_points": 0.51}, "Top-30"),
    ({"top_k_change_points": -0.51}, "Top-30"),
    ({"queries": 0}, "no valid manipulation queries"),
])
def test_gate_thresholds(changes: dict, failing: str | None) -> None:
    failures = decide(_report(**changes))
    if failing is None:
        assert failures == []
    else:
        assert len(failures) == 1 and failing in failures[0]


def test_neighbour_overlap_counts_ties_but_not_real_reordering() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    ref = np.repeat(base, 3, axis=0).astype(np.float32)  # every photo has two exact duplicates
    cand = ref + rng.normal(scale=1e-6, size=ref.shape).astype(np.float32)  # breaks ties at random
    tie_aware, strict = neighbour_overlap(ref, cand, k=4)
    assert tie_aware == 1.0 and strict < 1.0
    shuffled = ref[rng.permutation(len(ref))]  # a different model altogether
    assert neighbour_overlap(ref, shuffled, k=4)[0] < 0.5


def test_fp16_cli_gates_and_registers_the_engine(bundle_copy: Path, gate_data: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from engines.gpu_cli import main

    folder, labels = gate_data
    assert main(["fp16", "--bundle", str(bundle_copy), "--labels", str(labels), "--images", str(folder),
                 "--gate-images", "200", "--gate-split", "all"]) == 0
    out = capsys.readouterr()
    assert "PASS" in out.out
    bundle = Bundle.load(bundle_copy)
    entry = bundle.engine("onnxruntime", "fp16")
    assert entry is not None and entry.facts["gate"]["passed"] and entry.facts["gate"]["images"] == 200
    assert entry.facts["source_sha256"] == bundle.manifest["files"]["model.onnx"]["sha256"]
    expected = "onnxruntime-cuda-fp16" if onnxruntime_cuda_usable() else "onnxruntime-cpu-fp16"
    assert entry.facts["gate"]["candidate"] == expected


def test_engines_cli_reports_missing_tensorrt_clearly(bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engines.gpu_cli import main

    if tensorrt_usable():
        pytest.skip("TensorRT is installed here; this checks the message on machines without it")
    code = main(["tensorrt", "--bundle", str(bundle_copy), "--profile", "1", "8", "4"])
    assert code == 2 and "min <= opt <= max" in capsys.readouterr().err
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        assert main(["tensorrt", "--bundle", str(bundle_copy)]) == 2
        assert "TensorRT is not installed" in capsys.readouterr().err


# ---------------------------------------------------------------- plan compatibility ----------
def _plan_facts(bundle: Bundle, runtime: RuntimeFacts = H100, **changes: object) -> dict:
    fp16 = bundle.engine("onnxruntime", "fp16")
    assert fp16 is not None
    item = [3, bundle.preprocess.height, bundle.preprocess.width]
    facts = {"tensorrt_version": runtime.tensorrt_version, "gpu_name": runtime.gpu_name,
             "compute_capability": runtime.compute_capability, "typing": "strong",
             "profile": {"input": "images", "min": [1, *item], "opt": [32, *item], "max": [128, *item]},
             "source_onnx": fp16.file, "onnx_sha256": bundle.manifest["files"][fp16.file]["sha256"],
             "workspace_bytes": 1 << 30}
    facts.update(changes)
    return facts


@pytest.fixture()
def plan_bundle(tmp_path: Path, fp16_bundle: Path) -> Path:
    """fp16 bundle plus a plan entry for an H100 / TensorRT 10.13. Its bytes are never deserialised
    here: every test stops at (or passes) the compatibility check that guards deserialisation."""
    directory = Path(shutil.copytree(fp16_bundle, tmp_path / "bundle"))
    bundle = Bundle.load(directory)
    source = tmp_path / "h100.plan"
    source.write_bytes(b"serialised plan from an H100 build")
    bundle.register_engine(EngineEntry("tensorrt", "fp16", PLAN, _plan_facts(bundle)), source=source)
    return directory


def _plan_entry(directory: Path) -> tuple[Bundle, EngineEntry]:
    bundle = Bundle.load(directory)
    entry = bundle.engine("tensorrt", "fp16")
    assert entry is not None
    return bundle, entry


def test_matching_plan_is_taken_from_the_bundle(plan_bundle: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    resolved = resolve_plan(bundle, entry, H100)
    assert resolved.origin == "bundle" and resolved.warnings == []
    assert resolved.plan == b"serialised plan from an H100 build"


def test_plan_built_for_another_gpu_is_refused(plan_bundle: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    a100 = RuntimeFacts("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(PlanIncompatibleError) as info:
        resolve_plan(bundle, entry, a100)
    message = str(info.value)
    assert "NVIDIA H100 80GB HBM3 (compute capability 9.0)" in message
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in message
    assert "python -m engines tensorrt" in message and "allow_rebuild=True" in message


def test_plan_built_with_another_tensorrt_is_refused(plan_bundle: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    with pytest.raises(PlanIncompatibleError, match=r"TensorRT 10\.13\.0\.35 and this machine has TensorRT 11\.1\.0"):
        resolve_plan(bundle, entry, RuntimeFacts("11.1.0", H100.gpu_name, "9.0"))


def test_same_architecture_other_model_runs_with_a_warning(plan_bundle: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    resolved = resolve_plan(bundle, entry, RuntimeFacts(H100.tensorrt_version, "NVIDIA H100 PCIe", "9.0"))
    assert resolved.origin == "bundle"
    assert len(resolved.warnings) == 1 and "NVIDIA H100 PCIe" in resolved.warnings[0]


def test_stale_or_undocumented_plans_are_refused(plan_bundle: Path, tmp_path: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    stale = EngineEntry("tensorrt", "fp16", entry.file, {**entry.facts, "onnx_sha256": "0" * 64})
    with pytest.raises(PlanIncompatibleError, match="has changed since: the plan is stale"):
        resolve_plan(bundle, stale, H100)
    bare = EngineEntry("tensorrt", "fp16", entry.file, {"typing": "strong"})
    with pytest.raises(PlanIncompatibleError, match="not built by fashsdk"):
        resolve_plan(bundle, bare, H100)


class RecordingBuilder:
    """Stands in for TensorRT at the rebuild seam: records calls, returns a plan 'built here'."""

    def __init__(self, runtime: RuntimeFacts, compute_capability: str | None = None) -> None:
        self.runtime = runtime
        self.cc = compute_capability or runtime.compute_capability
        self.calls: list[tuple[Path, BuildOptions]] = []

    def __call__(self, onnx_path: Path, options: BuildOptions) -> BuiltPlan:
        self.calls.append((Path(onnx_path), options))
        facts = {"tensorrt_version": self.runtime.tensorrt_version, "gpu_name": self.runtime.gpu_name,
                 "compute_capability": self.cc, "profile": {"min": [options.profile.minimum],
                                                            "opt": [options.profile.optimum],
                                                            "max": [options.profile.maximum]},
                 "source_onnx": Path(onnx_path).name, "onnx_sha256": sha256_file(onnx_path)}
        return BuiltPlan(f"plan for {self.runtime.gpu_name} #{len(self.calls)}".encode(), facts)


def test_rebuild_allowed_calls_the_builder_once_and_caches(plan_bundle: Path, tmp_path: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    a100 = RuntimeFacts("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0")
    builder = RecordingBuilder(a100)
    cache = tmp_path / "plan-cache"
    first = resolve_plan(bundle, entry, a100, allow_rebuild=True, cache_dir=cache, builder=builder)
    assert first.origin == "rebuilt" and first.plan == b"plan for NVIDIA A100-SXM4-80GB #1"
    (path, options), = builder.calls
    assert path == bundle.path_of(bundle.engine("onnxruntime", "fp16").file)  # strong typing: fp16 source
    assert options.profile == Profile(1, 32, 128) and options.workspace_bytes == 1 << 30
    assert options.timing_cache == cache / "timing-sm80-trt10.13.0.35.cache"
    assert Bundle.load(plan_bundle).path_of(entry.file).read_bytes() == b"serialised plan from an H100 build"

    again = resolve_plan(bundle, entry, a100, allow_rebuild=True, cache_dir=cache, builder=builder)
    assert again.origin == "cache" and again.plan == first.plan and len(builder.calls) == 1

    key = PlanCache.key(sha256_file(path), a100, Profile(1, 32, 128))
    (cache / f"{key}.plan").write_bytes(b"tampered")
    third = resolve_plan(bundle, entry, a100, allow_rebuild=True, cache_dir=cache, builder=builder)
    assert third.origin == "rebuilt" and len(builder.calls) == 2


def test_rebuild_for_older_tensorrt_uses_the_fp32_model(plan_bundle: Path, tmp_path: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    old = RuntimeFacts("10.8.0.43", H100.gpu_name, "9.0")
    builder = RecordingBuilder(old)
    resolve_plan(bundle, entry, old, allow_rebuild=True, cache_dir=tmp_path, builder=builder)
    assert builder.calls[0][0].name == "model.onnx"


def test_rebuild_that_does_not_match_this_machine_is_refused(plan_bundle: Path, tmp_path: Path) -> None:
    bundle, entry = _plan_entry(plan_bundle)
    a100 = RuntimeFacts("10.13.0.35", "NVIDIA A100-SXM4-80GB", "8.0")
    with pytest.raises(PlanIncompatibleError, match="rebuilt plan does not match"):
        resolve_plan(bundle, entry, a100, allow_rebuild=True, cache_dir=tmp_path / "cache",
                     builder=RecordingBuilder(a100, compute_capability="9.0"))
    assert not list((tmp_path / "cache").glob("*.plan"))


# ---------------------------------------------------------------- backend selection -----------
def test_registry_order_is_tensorrt_then_ort_cuda_then_int8_then_fp32() -> None:
    names = [s.name for s in REGISTRY]
    order = ["tensorrt-cuda-fp16", "onnxruntime-cuda-fp16", "onnxruntime-cpu-int8", "onnxruntime-cpu-fp32"]
    assert [n for n in names if n in order] == order


def test_availability_checks_are_cheap_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    for spec in REGISTRY:
        assert isinstance(spec.available(), bool)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not nvidia_gpu_present() and not tensorrt_usable() and not onnxruntime_cuda_usable()


def test_auto_prefers_gpu_engines_and_one_argument_overrides(plan_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                                             gate_images: tuple[np.ndarray, np.ndarray]) -> None:
    import fashsdk.encoding.backends.select as select

    bundle = Bundle.load(plan_bundle)
    monkeypatch.setattr(select, "REGISTRY", [s._replace(available=lambda: True) for s in REGISTRY])
    assert available_backends(bundle) == ["tensorrt-cuda-fp16", "onnxruntime-cuda-fp16", "onnxruntime-cpu-fp32"]
    backend = open_backend(bundle, "onnxruntime-cpu-fp32", threads=1)  # the one-argument override
    assert backend.name == "onnxruntime-cpu-fp32"
    assert backend.run(gate_images[0][:4]).embedding.shape == (4, bundle.dim)


def test_auto_on_this_machine_and_clear_errors_for_missing_gpu_stack(plan_bundle: Path) -> None:
    bundle = Bundle.load(plan_bundle)
    names = available_backends(bundle)
    if not nvidia_gpu_present():
        assert names == ["onnxruntime-cpu-fp32"]
        assert open_backend(bundle, "auto", threads=1).name == "onnxruntime-cpu-fp32"
        with pytest.raises(BundleError, match="'tensorrt-cuda-fp16' is not available.*available here"):
            open_backend(bundle, "tensorrt-cuda-fp16")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        from fashsdk.encoding.backends.onnxruntime_cuda import OnnxRuntimeCudaBackend

        with pytest.raises(BundleError, match="no CUDA provider"):
            OnnxRuntimeCudaBackend(_fp16_path(plan_bundle))
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        from fashsdk.encoding.backends.tensorrt_plan import TensorRTPlanBackend

        with pytest.raises(BundleError, match="TensorRT is not installed"):
            TensorRTPlanBackend(b"plan", device=0)


# ---------------------------------------------------------------- results file ----------------
def test_gpu_results_writer(tmp_path: Path, fp16_bundle: Path, gate_images: tuple[np.ndarray, np.ndarray]) -> None:
    from benchmarks.gpu_encode import gpu_rows, results_path, write_gpu_results

    assert results_path("NVIDIA H100 80GB HBM3", tmp_path).name == "gpu-nvidia-h100-80gb-hbm3.json"
    results = {"device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}, "driver": "570.86.15",
               "libraries": {"tensorrt": "10.13.0.35"}, "machine": {"cpu": "x"}, "bundle": {"path": "b"},
               "figures": {"backends": {"tensorrt-cuda-fp16": {"model_only": [{"batch": 256, "images_per_s": 1.0}]}}}}
    path = write_gpu_results(results, tmp_path)
    assert json.loads(path.read_text())["device"]["name"] == "NVIDIA H100 80GB HBM3"
    with pytest.raises(ValueError, match="lack"):
        write_gpu_results({k: v for k, v in results.items() if k != "driver"}, tmp_path)
    if not nvidia_gpu_present():
        figures = gpu_rows(Bundle.load(fp16_bundle), gate_images[0][:8], [])
        assert figures["backends"] == {} and "no NVIDIA GPU" in figures["skipped"]
        with pytest.raises(ValueError, match="skipped"):
            write_gpu_results({**results, "figures": figures}, tmp_path)


# ---------------------------------------------------------------- on a GPU --------------------
def _need(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


@pytest.mark.gpu
def test_ort_cuda_fp16_engine_passes_the_gate_on_gpu(bundle_copy: Path, gate_data: tuple[Path, Path]) -> None:
    _need(nvidia_gpu_present(), "no NVIDIA GPU on this machine")
    _need(onnxruntime_cuda_usable(), "onnxruntime has no CUDA provider (pip install 'fashsdk[gpu]')")
    from engines.fp16 import build_fp16_engine

    folder, labels = gate_data
    entry, gate = build_fp16_engine(bundle_copy, labels, folder, split=None)
    assert gate.passed and gate.candidate == "onnxruntime-cuda-fp16" and gate.images == 500
    assert "onnxruntime-cuda-fp16" in available_backends(Bundle.load(bundle_copy))


@pytest.mark.gpu
def test_tensorrt_plan_builds_gates_and_runs_from_several_threads(bundle_copy: Path, gate_data: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    _need(nvidia_gpu_present(), "no NVIDIA GPU on this machine")
    _need(tensorrt_usable(), "TensorRT or pycuda is not installed")
    from engines.tensorrt import build_tensorrt_engine
    from fashsdk.encoding.backends.cuda_memory import device_info

    folder, labels = gate_data
    entry, gate = build_tensorrt_engine(bundle_copy, labels, folder, profile=Profile(1, 16, 64), split=None,
                                        timing_cache=tmp_path / "timing.cache")
    assert gate.passed and (tmp_path / "timing.cache").is_file()
    assert entry.facts["compute_capability"] == device_info().compute_capability
    bundle = Bundle.load(bundle_copy)
    assert available_backends(bundle)[0] == "tensorrt-cuda-fp16"
    pixels, _, _ = gate_sample(bundle, labels, folder, n=100, split=None)
    reference = embed(OnnxRuntimeCpuBackend(bundle.path_of("model.onnx")), pixels).embedding
    backend = open_backend(bundle)
    results: dict[int, np.ndarray] = {}

    def work(batch: int) -> None:
        results[batch] = np.concatenate([backend.run(pixels[s:s + batch]).embedding
                                         for s in range(0, len(pixels), batch)])

    threads = [threading.Thread(target=work, args=(b,)) for b in (1, 7, 100)]  # 100 > profile max: split
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    backend.close()
    for out in results.values():
        assert (out * reference).sum(1).min() > 0.999


@pytest.mark.gpu
def test_incompatible_plan_is_rebuilt_on_gpu_when_allowed(bundle_copy: Path, gate_data: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    _need(nvidia_gpu_present(), "no NVIDIA GPU on this machine")
    _need(tensorrt_usable(), "TensorRT or pycuda is not installed")
    from engines.tensorrt import build_tensorrt_engine

    folder, labels = gate_data
    build_tensorrt_engine(bundle_copy, labels, folder, profile=Profile(1, 8, 32), split=None, gate_images=200,
                          timing_cache=tmp_path / "timing.cache")
    bundle = Bundle.load(bundle_copy)
    entry = bundle.engine("tensorrt", "fp16")
    assert entry is not None
    foreign = EngineEntry("tensorrt", "fp16", entry.file, {**entry.facts, "compute_capability": "1.0"})
    source = tmp_path / "plan"
    source.write_bytes(bundle.path_of(entry.file).read_bytes())
    bundle.register_engine(foreign, source=source)
    with pytest.raises(PlanIncompatibleError):
        open_backend(Bundle.load(bundle_copy), "tensorrt-cuda-fp16")
    backend = open_backend(Bundle.load(bundle_copy), "tensorrt-cuda-fp16", allow_rebuild=True,
                           plan_cache=tmp_path / "cache")
    assert backend.facts["compute_capability"] != "1.0"
    backend.close()
