"""Which TensorRT plan may run here: manifest facts, compatibility rules, a rebuild cache.

A serialised plan only loads in the TensorRT version that built it, and its kernels were
chosen for one GPU architecture. So before any bytes reach ``deserialize_cuda_engine``
the facts recorded at build time are compared with this machine:

- TensorRT version differs            -> refused (or rebuilt when allowed);
- compute capability differs          -> refused (or rebuilt when allowed);
- the ONNX file it was built from has changed in the bundle -> refused as stale;
- same compute capability, other GPU model -> allowed, with a warning (tactics were timed
  elsewhere: it runs, maybe slower).

Rebuilt plans go to a cache keyed by (ONNX sha256, compute capability, TensorRT version,
profile); the bundle itself is never rewritten at load time. Pure Python: no CUDA here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ...errors import BundleError
from ...files import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from .tensorrt_build import BuildOptions, PlanBuilder, Profile, source_precision

if TYPE_CHECKING:
    from ...bundle import Bundle, EngineEntry

REQUIRED_FACTS = ("tensorrt_version", "gpu_name", "compute_capability", "profile", "source_onnx", "onnx_sha256")


class PlanIncompatibleError(BundleError):
    """The plan was built for another GPU architecture, TensorRT version, or model file."""


@dataclass(frozen=True)
class RuntimeFacts:
    """What this machine offers a plan."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    @property
    def key(self) -> str:
        return f"sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt_version}"


@dataclass
class ResolvedPlan:
    plan: bytes
    facts: dict[str, Any]
    origin: str  # "bundle", "cache" or "rebuilt"
    warnings: list[str] = field(default_factory=list)


def check_plan(facts: Mapping[str, Any], runtime: RuntimeFacts,
               source_sha256: str | None) -> tuple[list[str], list[str]]:
    """(problems that forbid loading, warnings) for a plan's facts on this machine."""
    missing = [k for k in REQUIRED_FACTS if k not in facts]
    if missing:
        return [f"the plan's manifest entry lacks {missing}; it was not built by fashsdk's engines"], []
    problems, warnings = [], []
    if str(facts["tensorrt_version"]) != runtime.tensorrt_version:
        problems.append(f"it was built with TensorRT {facts['tensorrt_version']} and this machine has TensorRT "
                        f"{runtime.tensorrt_version} (a plan only loads in the version that built it)")
    if str(facts["compute_capability"]) != runtime.compute_capability:
        problems.append(f"it was built for {facts['gpu_name']} (compute capability {facts['compute_capability']}) "
                        f"and this GPU is {runtime.gpu_name} (compute capability {runtime.compute_capability})")
    elif str(facts["gpu_name"]) != runtime.gpu_name:
        warnings.append(f"plan was built on {facts['gpu_name']} and runs on {runtime.gpu_name} (same compute "
                        f"capability {runtime.compute_capability}): it works, but rebuild for the best speed")
    if source_sha256 is None:
        problems.append(f"the ONNX model it was built from ({facts['source_onnx']!r}) is not in the bundle any more")
    elif str(facts["onnx_sha256"]) != source_sha256:
        problems.append(f"the ONNX model it was built from ({facts['source_onnx']!r}) has changed since: the plan "
                        "is stale")
    return problems, warnings


def incompatible_message(plan_file: str, problems: list[str]) -> str:
    return (f"TensorRT plan {plan_file!r} cannot run here: " + "; ".join(problems) + ". Fix: rebuild it on this "
            "machine with 'python -m engines tensorrt --bundle DIR', or open the backend with allow_rebuild=True "
            "(builds into the plan cache), or choose backend='onnxruntime-cuda-fp16'.")


def default_cache_dir() -> Path:
    base = os.environ.get("FASHSDK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fashsdk")
    return Path(base) / "tensorrt"


class PlanCache:
    """Rebuilt plans on disk: ``<key>.plan`` plus ``<key>.json`` (its facts and sha256), json last."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(onnx_sha256: str, runtime: RuntimeFacts, profile: Profile) -> str:
        return f"{onnx_sha256[:16]}-{runtime.key}-b{profile.minimum}_{profile.optimum}_{profile.maximum}"

    def timing_cache_path(self, runtime: RuntimeFacts) -> Path:
        return self.directory / f"timing-{runtime.key}.cache"

    def load(self, key: str, runtime: RuntimeFacts, source_sha256: str) -> ResolvedPlan | None:
        meta_path, plan_path = self.directory / f"{key}.json", self.directory / f"{key}.plan"
        if not meta_path.is_file() or not plan_path.is_file():
            return None
        try:
            meta = read_json(meta_path, "plan cache entry", BundleError)
            facts = dict(meta["facts"])
            if sha256_file(plan_path) != meta["plan_sha256"]:
                return None  # torn or tampered: rebuild
        except (BundleError, KeyError, TypeError, ValueError):
            return None
        problems, warnings = check_plan(facts, runtime, source_sha256)
        if problems:
            return None
        return ResolvedPlan(plan_path.read_bytes(), facts, "cache", warnings)

    def store(self, key: str, plan: bytes, facts: Mapping[str, Any]) -> None:
        import hashlib

        atomic_write_bytes(self.directory / f"{key}.plan", plan)
        atomic_write_json(self.directory / f"{key}.json",
                          {"facts": dict(facts), "plan_sha256": hashlib.sha256(plan).hexdigest()})


def _file_sha(bundle: "Bundle", name: Any) -> str | None:
    meta = bundle.manifest.get("files", {}).get(name) if isinstance(name, str) else None
    return str(meta["sha256"]) if isinstance(meta, dict) and "sha256" in meta else None


def resolve_plan(bundle: "Bundle", entry: "EngineEntry", runtime: RuntimeFacts, *, allow_rebuild: bool = False,
                 cache_dir: str | Path | None = None, builder: PlanBuilder | None = None,
                 workspace_bytes: int | None = None) -> ResolvedPlan:
    """The plan bytes to deserialise here: the bundle's own, a cached rebuild, or a new build."""
    facts = dict(entry.facts)
    problems, warnings = check_plan(facts, runtime, _file_sha(bundle, facts.get("source_onnx")))
    if not problems:
        return ResolvedPlan(bundle.path_of(entry.file).read_bytes(), facts, "bundle", warnings)
    if not allow_rebuild:
        raise PlanIncompatibleError(incompatible_message(str(bundle.path_of(entry.file)), problems))

    precision = source_precision(runtime.tensorrt_version)
    source = bundle.engine("onnxruntime", precision)
    if source is None:
        raise PlanIncompatibleError(
            incompatible_message(str(bundle.path_of(entry.file)), problems) + f" Rebuilding needs the bundle's "
            f"{precision} ONNX model, which it lacks: run 'python -m engines fp16 --bundle DIR' first.")
    source_sha = _file_sha(bundle, source.file)
    assert source_sha is not None  # Bundle.load refuses engines without a checksum
    try:
        profile = Profile.from_facts(facts["profile"])
    except (KeyError, TypeError, ValueError, IndexError):
        profile = Profile()
    cache = PlanCache(cache_dir if cache_dir is not None else default_cache_dir())
    key = PlanCache.key(source_sha, runtime, profile)
    cached = cache.load(key, runtime, source_sha)
    if cached is not None:
        return cached
    if builder is None:
        from .tensorrt_build import build_plan as builder  # type: ignore[assignment]
    assert builder is not None
    options = BuildOptions(profile=profile, timing_cache=cache.timing_cache_path(runtime),
                           workspace_bytes=int(workspace_bytes or facts.get("workspace_bytes") or
                                               BuildOptions().workspace_bytes))
    built = builder(bundle.path_of(source.file), options)
    new_problems, new_warnings = check_plan(built.facts, runtime, source_sha)
    if new_problems:
        raise PlanIncompatibleError(f"the rebuilt plan does not match this machine either: {'; '.join(new_problems)}")
    cache.store(key, built.plan, built.facts)
    return ResolvedPlan(built.plan, dict(built.facts), "rebuilt", new_warnings)
