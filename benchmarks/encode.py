"""python -m benchmarks.encode --json OUT: feature extraction speed on this CPU, with accuracy.

For the paper configuration (ADDE, AlexNet to fc7, 224x224, 12 attributes x 340; random
weights, exported to a bundle) and the demo bundle's configuration, on the same real
catalog images, each path is measured:
- model only: seconds per 1000 images of the model on preprocessed batches;
- end to end: JPEG files on disk -> decode/resize/normalise (fashsdk.Encoder, the pipeline
  Retriever.add runs) -> model -> normalised vectors added to a fashsdk CatalogIndex;
  once on the catalog's images as they are (about 60x80) and once on the same images
  re-encoded as 480x640 JPEGs (standing in for full-size catalog photos);
- batch-1 latency: one JPEG (bytes in memory) to its vector, p50 and p99;
- accuracy next to speed: mean/min cosine to ONNX Runtime fp32 embeddings of the same
  images, top-10 neighbour overlap, and (demo bundle) Top-30 manipulation accuracy on the
  whole test split for fp32 and int8 (fashsdk.eval.protocol, one Retriever per backend).
Paths: torch_eager_fp32 (baseline), torch_bf16_cl (autocast bf16, channels_last), ort_fp32,
ort_int8 (engines.int8: static QDQ calibrated on catalog images). Figures are medians over
repeats, interleaved path by path so a noisy neighbour hits all alike; ratios are to
PyTorch eager from the same run. Writes OUT (JSON) and OUT with .md (table).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fashsdk.bundle import Bundle
from fashsdk.encoding.backends.base import ModelOutputs
from fashsdk.encoding.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from fashsdk.encoding.encoder import Encoder
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.index import CatalogIndex
from fashsdk.system import usable_cores
from fashsdk.sources.preprocess import PreprocessSpec, decode_resized, normalize

DEFAULT_DATA = Path("../shared/data/myntra-small")
CACHE = Path("runs/bench")
PAPER_SIZES = [13] * 7 + [12] * 5  # 12 attributes, 151 values as in Shopping100k (speed does not depend on them)
LARGE_SIZE = (480, 640)  # width x height: the catalog's 3:4 portrait photos at full size
TARGETS = {"model_s_per_1000": 0.6, "e2e_large_s_per_1000": 1.9, "e2e_speedup_vs_eager": 5.0}


OTHER_CONFIGS = ("compact", "datrnet", "fsn", "baseline")  # trained bundles measured beside the demo's, each from --NAME-bundle


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- machine ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    from fashsdk.system import machine as cpu_info

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("onnxruntime", "torch", "PIL", "hnswlib"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            versions[module] = None
    info = cpu_info()
    return {**info, "platform": platform.platform(), "versions": versions, "loadavg_start": os.getloadavg()}


class CpuShare:
    """How much CPU other processes used while this benchmark ran (the machine is shared)."""

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
            busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
            busy = float("nan")
        own = os.times()
        return time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system

    def report(self) -> dict[str, float]:
        t1, busy1, own1 = self._snapshot()
        t0, busy0, own0 = self.start
        wall = max(t1 - t0, 1e-9)
        return {"wall_s": round(wall, 1), "this_process_cores_avg": round((own1 - own0) / wall, 2),
                "other_processes_cores_avg": round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 2)}


# ---- torch paths ---------------------------------------------------------------------------
class TorchBackend:
    """A PyTorch module behind fashsdk's EmbeddingBackend contract (benchmark only)."""

    def __init__(self, model: Any, name: str, bf16: bool = False, channels_last: bool = False) -> None:
        import torch

        self.torch = torch
        self.name, self.bf16, self.channels_last = name, bf16, channels_last
        self.model = model.eval().to(memory_format=torch.channels_last) if channels_last else model.eval()

    def run(self, batch: np.ndarray) -> ModelOutputs:
        torch = self.torch
        x = torch.from_numpy(batch)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            emb, logits = self.model(x)[:2]  # FashionSearchNet adds its boxes
        return ModelOutputs(emb.float().numpy(), logits.float().numpy())

    def close(self) -> None:
        pass


# ---- images --------------------------------------------------------------------------------
@dataclass
class ImageSet:
    ids: list[str]
    encoded: dict[str, bytes]
    small_dir: Path
    large_dir: Path

    def files(self, large: bool) -> list[tuple[str, Path]]:
        folder = self.large_dir if large else self.small_dir
        return [(i, folder / f"{i}.jpg") for i in self.ids]


def prepare_images(labels: Path, images: Sequence[str], n: int, seed: int, workdir: Path) -> ImageSet:
    """``n`` test-split JPEGs written as files, plus 480x640 re-encodes of the same images."""
    from PIL import Image

    from engines.calibration import sample_ids
    from fashsdk.sources.images import load_images

    ids = sample_ids(labels, n, split="test", seed=seed)
    encoded = load_images(images, ids)
    small, large = workdir / "catalog", workdir / "catalog-480x640"
    small.mkdir(parents=True, exist_ok=True)
    large.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (small / f"{i}.jpg").write_bytes(encoded[i])
        img = Image.open(io.BytesIO(encoded[i])).convert("RGB").resize(LARGE_SIZE, Image.BICUBIC)
        img.save(large / f"{i}.jpg", "JPEG", quality=90)
    return ImageSet(ids, encoded, small, large)


# ---- configurations ------------------------------------------------------------------------
@dataclass
class Config:
    name: str
    bundle: Bundle
    torch_model: Any
    torch_note: str
    int8_note: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


def _paper_model(seed: int = 0) -> Any:
    import torch

    from export.models import ADDE, ModelConfig

    torch.manual_seed(seed)
    model = ADDE(ModelConfig(backbone="alexnet", attribute_sizes=PAPER_SIZES, dim=340, height_px=224, width_px=224))
    with torch.no_grad():
        model.memory.normal_(0.0, 0.01)
    return model.eval()


def paper_config(labels: Path, images: Sequence[str], cache: Path, calib_images: int, force_rebuild: bool) -> Config:
    """The paper's model with random weights, exported once to a cached bundle (+ int8 engine)."""
    import torch

    from engines.calibration import load_pixels, sample_ids
    from export.onnx_export import build_bundle
    from fashsdk.schema import AttributeSchema

    model = _paper_model()
    directory = cache / f"paper-bundle-torch{torch.__version__.split('+')[0]}"
    spec = PreprocessSpec(224, 224)
    if force_rebuild and directory.exists():
        shutil.rmtree(directory)
    if not (directory / "manifest.json").is_file():
        log(f"exporting the paper configuration to {directory} ...")
        schema = AttributeSchema.from_dict({f"attr{a:02d}": [f"v{v}" for v in range(n)]
                                            for a, n in enumerate(PAPER_SIZES)})
        pixels = load_pixels(images, sample_ids(labels, 16, split="train", seed=7), spec)
        build_bundle(model, schema, spec, directory, pixels, {"note": "random weights, for speed measurements"})
    bundle = Bundle.load(directory)
    _check_same_weights(model, bundle, load_pixels(images, sample_ids(labels, 8, split="train", seed=8), spec))
    note = ensure_int8(bundle, labels, images, calib_images)
    return Config("paper", Bundle.load(directory), model, "random weights (seed 0), the exported bundle's own", note)


def _check_same_weights(model: Any, bundle: Bundle, pixels: np.ndarray) -> None:
    import torch

    x = normalize(pixels, bundle.preprocess)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))[0].numpy()
    got = OnnxRuntimeCpuBackend(bundle.path_of("model.onnx")).run(x).embedding
    if not np.allclose(ref, got, atol=1e-4):
        raise SystemExit(f"the cached bundle {bundle.directory} does not match the torch model; "
                         "rerun with --rebuild")


def demo_config(bundle_dir: Path, labels: Path, images: Sequence[str], cache: Path, calib_images: int,
                name: str = "demo") -> Config:
    """A trained bundle's configuration ("demo": the default backbone, "compact": the from-scratch
    one); its checkpoint for torch when it sits beside the bundle."""

    from export.models import ModelConfig, build_model

    source = Bundle.load(bundle_dir)
    bundle = source
    if source.engine("onnxruntime", "int8") is None:  # never modify the caller's bundle: work on a copy
        copy = cache / f"demo-bundle-{source.sha256()[:12]}"
        if not (copy / "manifest.json").is_file():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(bundle_dir, copy)
        bundle = Bundle.load(copy)
    note = ensure_int8(bundle, labels, images, calib_images)
    bundle = Bundle.load(bundle.directory)
    checkpoint = Path(bundle_dir).parent / "checkpoint"
    config = ModelConfig(**{"chunk_norm": False, **bundle.manifest["model"]["config"], "pretrained": False})
    if (checkpoint / "model.pt").is_file():
        from export.train import load_checkpoint

        model, _, _, _ = load_checkpoint(checkpoint)
        torch_note = f"trained weights from {checkpoint}"
        if model.config.to_json() != config.to_json():
            model, torch_note = build_model(config).eval(), "random weights (checkpoint did not match the bundle)"
    else:
        model, torch_note = build_model(config).eval(), "random weights of the bundle's architecture (no checkpoint)"
    return Config(name, bundle, model, torch_note, note, {"source_bundle": str(bundle_dir)})


def ensure_int8(bundle: Bundle, labels: Path, images: Sequence[str], calib_images: int) -> str:
    """Build the int8 engine with engines.int8 when the bundle lacks one; say what happened."""
    from engines.int8 import Int8Error, Int8Gate, Int8Options, build_int8_engine

    entry = bundle.engine("onnxruntime", "int8")
    if entry is not None:
        return f"int8 engine already in the bundle ({entry.facts.get('speed_vs_fp32')})"
    log(f"building the int8 engine for {bundle.directory} (calibration: {calib_images} train images) ...")
    try:
        _, report = build_int8_engine(bundle.directory, labels, images, Int8Options(calibration_images=calib_images),
                                      Int8Gate(min_speedup=0.0), force=True)
    except Int8Error as exc:
        return f"int8 engine not built: {exc}"
    return "built by engines.int8 for this run: " + report.summary()


# ---- measurements ----------------------------------------------------------------------------
def open_paths(config: Config, names: Sequence[str], threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    bundle = config.bundle
    paths: dict[str, Any] = {}
    for name in names:
        if name == "torch_eager_fp32":
            paths[name] = TorchBackend(config.torch_model, name)
        elif name == "torch_bf16_cl":
            paths[name] = TorchBackend(_copy_model(config.torch_model), name, bf16=True, channels_last=True)
        elif name == "ort_fp32":
            paths[name] = OnnxRuntimeCpuBackend(bundle.path_of(bundle.engine("onnxruntime", "fp32").file), threads=threads)
        elif name == "ort_int8":
            entry = bundle.engine("onnxruntime", "int8")
            if entry is not None:
                paths[name] = OnnxRuntimeCpuBackend(bundle.path_of(entry.file), "int8", threads=threads)
        else:
            raise SystemExit(f"unknown path {name!r}")
    return paths


def _copy_model(model: Any) -> Any:
    import copy

    return copy.deepcopy(model)


def settle(seconds: float = 0.2) -> None:
    """Let the previous path's thread pools stop spinning before timing the next one.

    Each ONNX Runtime session and PyTorch keep their own worker threads, which busy-wait
    for a while after a call; on 2 cores that would tax whichever path is timed next.
    """
    time.sleep(seconds)


def model_only(backends: dict[str, Any], x: np.ndarray, batch: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per 1000 images of backend.run over ``x`` in batches, per repeat, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    for backend in backends.values():
        backend.run(x[:batch])  # warm-up
    for _ in range(repeats):
        for name, backend in backends.items():
            settle()
            start = time.perf_counter()
            for s in range(0, len(x), batch):
                backend.run(x[s:s + batch])
            times[name].append(1000.0 * (time.perf_counter() - start) / len(x))
    return times


@dataclass
class EndToEnd:
    seconds: float
    index_add_s: float
    embeddings: np.ndarray
    decode_mode: str  # how the Encoder decoded, e.g. "1 thread" or "2 processes"


DECODE_MODES = {"auto": None, "threads": False, "processes": True}


def end_to_end(backend: Any, bundle: Bundle, items: Sequence[tuple[str, Path]], batch: int, workers: int | None,
               decode: str = "auto") -> EndToEnd:
    """JPEG files -> Encoder (workers decode/resize/normalise) -> model -> CatalogIndex.add.

    A fresh Encoder per run, so starting decode processes (auto mode) is part of the time.
    """
    encoder = Encoder(backend, bundle.preprocess, batch_size=batch, workers=workers, processes=DECODE_MODES[decode])
    index = CatalogIndex(bundle.dim, len(bundle.schema.attributes))
    unknown = np.full((batch, len(bundle.schema.attributes)), -1, np.int16)
    add_s = 0.0
    start = time.perf_counter()
    for keys, out, _ in encoder.encode_stream(iter(items)):
        t = time.perf_counter()
        predicted, _ = bundle.schema.predicted_codes(out.logits)
        index.add(keys, out.embedding, unknown[:len(keys)], predicted)
        add_s += time.perf_counter() - t
    seconds = time.perf_counter() - start
    encoder.close()
    ids, vectors, _ = index.vectors_and_codes()
    order = {i: n for n, i in enumerate(ids)}
    return EndToEnd(seconds, add_s, vectors[[order[i] for i, _ in items]], encoder.decode_mode)


def batch1_latency(backend: Any, spec: PreprocessSpec, encoded: Sequence[bytes], samples: int) -> dict[str, float]:
    """One JPEG (bytes) -> decode, resize, normalise -> model: p50/p99 ms, and the model share."""
    total, model = [], []
    settle()
    for n in range(samples + 2):
        data = encoded[n % len(encoded)]
        t0 = time.perf_counter()
        x = normalize(decode_resized(data, spec)[None], spec)
        t1 = time.perf_counter()
        backend.run(x)
        t2 = time.perf_counter()
        if n >= 2:  # the first two warm up
            total.append(1000.0 * (t2 - t0))
            model.append(1000.0 * (t2 - t1))
    return {"p50": float(np.percentile(total, 50)), "p99": float(np.percentile(total, 99)),
            "model_p50": float(np.percentile(model, 50))}


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    from engines.gpu_gate import cosines, neighbour_overlap

    cos = cosines(reference, candidate)
    tie_aware, strict = neighbour_overlap(reference, candidate, 10)
    return {"mean_cosine_vs_ort_fp32": round(float(cos.mean()), 6), "min_cosine_vs_ort_fp32": round(float(cos.min()), 6),
            "top10_overlap_vs_ort_fp32": round(strict, 4), "top10_overlap_tie_aware_vs_ort_fp32": round(tie_aware, 4)}


def decode_cost(spec: PreprocessSpec, items: Sequence[tuple[str, Path]]) -> float:
    """ms per image of file read + decode + resize + normalise on one thread (no model)."""
    out = np.empty((3, spec.height, spec.width), np.float32)
    from fashsdk.sources.preprocess import normalize_into

    start = time.perf_counter()
    for _, path in items:
        normalize_into(decode_resized(path, spec), out, spec)
    return 1000.0 * (time.perf_counter() - start) / len(items)


def decode_scaling(spec: PreprocessSpec, items: Sequence[tuple[str, Path]], workers: int) -> dict[str, float]:
    """Decode-only ms per image with 1 thread, ``workers`` threads and ``workers`` processes:
    whether threads are GIL-bound (they are when more threads are not faster)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from fashsdk.sources.decode_procs import start_method

    paths = [str(p) for _, p in items]
    parts = [paths[i::4 * workers] for i in range(4 * workers)]
    out: dict[str, float] = {}
    for label, pool in (("1_thread", ThreadPoolExecutor(1)), (f"{workers}_threads", ThreadPoolExecutor(workers)),
                        (f"{workers}_processes", ProcessPoolExecutor(
                            workers, mp_context=multiprocessing.get_context(start_method())))):
        with pool:
            list(pool.map(_decode_files, [(parts[0][:8], spec.to_json())] * workers))  # start the workers
            settle()
            start = time.perf_counter()
            list(pool.map(_decode_files, [(part, spec.to_json()) for part in parts]))
            out[label] = round(1000.0 * (time.perf_counter() - start) / len(paths), 4)
    return out


def _decode_files(job: tuple[list[str], dict[str, Any]]) -> int:
    from fashsdk.sources.preprocess import normalize_into

    paths, spec_json = job
    spec = PreprocessSpec.from_json(spec_json)
    out = np.empty((3, spec.height, spec.width), np.float32)
    for path in paths:
        normalize_into(decode_resized(path, spec), out, spec)
    return len(paths)


def measure_config(config: Config, images: ImageSet, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows for one configuration, plus its profile and notes."""
    bundle, spec = config.bundle, config.bundle.preprocess
    threads = args.threads
    backends = open_paths(config, args.paths, threads)
    small, large = images.files(False), images.files(True)
    x = normalize(np.stack([decode_resized(images.encoded[i], spec) for i in images.ids[:args.model_images]]), spec)
    log(f"[{config.name}] model only: {len(x)} images x {args.repeats} repeats, paths {list(backends)}")
    skipped: dict[str, str] = {}
    probe: dict[str, list[float]] = {}
    if "torch_bf16_cl" in backends:  # cheap probe first: emulated bf16 can be very slow without AMX/AVX512-BF16
        probe = model_only({k: backends[k] for k in ("torch_eager_fp32", "torch_bf16_cl") if k in backends},
                           x[:args.batch], args.batch, 1)
        if "torch_eager_fp32" in probe and probe["torch_bf16_cl"][0] > 3 * probe["torch_eager_fp32"][0]:
            skipped["torch_bf16_cl"] = (f"bf16 measured {probe['torch_bf16_cl'][0]:.1f} s/1000 vs eager fp32 "
                                        f"{probe['torch_eager_fp32'][0]:.1f} in a one-batch probe (no bf16 hardware "
                                        "here): model-only on single batches and batch-1 only, end to end "
                                        "not run")
    model_times = model_only({k: b for k, b in backends.items() if k not in skipped}, x, args.batch, args.repeats)
    for name in skipped:  # slow path: a few single batches instead of the full set
        model_times[name] = probe[name] + model_only({name: backends[name]}, x[:args.batch], args.batch,
                                                      max(1, args.repeats - 1))[name]
    e2e: dict[str, list[float]] = {n: [] for n in backends}
    e2e_large: dict[str, list[float]] = {n: [] for n in backends}
    add_ms: dict[str, list[float]] = {n: [] for n in backends}
    decode_modes: dict[str, set[str]] = {n: set() for n in backends}
    vectors: dict[str, np.ndarray] = {}
    runnable = [n for n in backends if n not in skipped]
    for rep in range(args.e2e_repeats):
        for name in runnable:
            for large_set, bucket in ((False, e2e), (True, e2e_large)):
                log(f"[{config.name}] end to end {'480x640' if large_set else 'catalog'} {name} "
                    f"(repeat {rep + 1}/{args.e2e_repeats}) ...")
                settle()
                result = end_to_end(backends[name], bundle, large if large_set else small, args.batch, args.workers,
                                    args.decode)
                bucket[name].append(1000.0 * result.seconds / len(small))
                decode_modes[name].add(f"{'480x640' if large_set else 'catalog'}: {result.decode_mode}")
                if not large_set:
                    add_ms[name].append(1000.0 * result.index_add_s / len(small))
                    vectors.setdefault(name, result.embeddings)
    latencies = {name: batch1_latency(b, spec, [images.encoded[i] for i in images.ids], args.batch1_samples)
                 for name, b in backends.items()}
    reference = vectors.get("ort_fp32")
    med = statistics.median
    rows = []
    for name in backends:
        row: dict[str, Any] = {
            "config": config.name, "path": name,
            "model_s_per_1000": round(med(model_times[name]), 4),
            "e2e_s_per_1000": round(med(e2e[name]), 4) if e2e[name] else None,
            "e2e_large_s_per_1000": round(med(e2e_large[name]), 4) if e2e_large[name] else None,
            "decode_modes": sorted(decode_modes[name]),
            "batch1_p50_ms": round(latencies[name]["p50"], 3), "batch1_p99_ms": round(latencies[name]["p99"], 3),
            "batch1_model_p50_ms": round(latencies[name]["model_p50"], 3),
            "index_add_s_per_1000": round(med(add_ms[name]), 4) if add_ms[name] else None,
            "repeats": {"model": model_times[name], "e2e": e2e[name], "e2e_large": e2e_large[name]},
        }
        if reference is not None and name in vectors:
            row.update(agreement(reference, vectors[name]))
        if name in skipped:
            row["note"] = skipped[name]
        rows.append(row)
    _ratios(rows)
    for b in backends.values():
        b.close()
    int8 = bundle.engine("onnxruntime", "int8")
    extra = {"config": config.name, "bundle": str(bundle.directory), "bundle_sha256": bundle.sha256(),
             "preprocess": spec.to_json(), "dim": bundle.dim, "torch_weights": config.torch_note,
             "int8": config.int8_note, "int8_facts": dict(int8.facts) if int8 is not None else None,
             "decode_ms_per_image_1_thread": {"catalog": round(decode_cost(spec, small[:200]), 4),
                                              "480x640": round(decode_cost(spec, large[:200]), 4)},
             "decode_only_ms_per_image": {"catalog": decode_scaling(spec, small[:600], args.workers or usable_cores()),
                                          "480x640": decode_scaling(spec, large[:600], args.workers or usable_cores())},
             **config.facts}
    if args.profile:
        log(f"[{config.name}] ONNX Runtime per-op profiles ...")
        from engines.profile import op_profile

        extra["ort_profile"] = {}
        for precision in ("fp32", "int8"):
            entry = bundle.engine("onnxruntime", precision)
            if entry is not None:
                extra["ort_profile"][precision] = op_profile(bundle.path_of(entry.file), x[:32], bundle.input_name,
                                                             runs=3, threads=threads)
    return rows, extra


def _ratios(rows: list[dict[str, Any]]) -> None:
    base = next((r for r in rows if r["path"] == "torch_eager_fp32"), None)
    if base is None:
        return
    for row in rows:
        for key in ("model_s_per_1000", "e2e_s_per_1000", "e2e_large_s_per_1000", "batch1_p50_ms"):
            if row.get(key) and base.get(key):
                row[f"speedup_{key.replace('_s_per_1000', '').replace('_ms', '')}_vs_eager"] = round(base[key] / row[key], 2)


# ---- quality gate (demo bundle) -------------------------------------------------------------
def quality_gate(bundle: Bundle, labels: Path, images: Sequence[str], backends: Sequence[str],
                 max_queries: int = 20000, seed: int = 0) -> dict[str, Any]:
    """Top-k manipulation accuracy on the whole test split (the papers' protocol, fashsdk.eval.protocol),
    one Retriever per backend: exact search and through the Retriever's hnswlib index."""
    from fashsdk import Retriever
    from fashsdk.eval.protocol import exact_topk, hit_rates, manipulation_queries
    from fashsdk.progress import progress_bar
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.images import iter_images

    catalog, _ = read_catalog(labels, bundle.schema.names, schema=bundle.schema)
    test = catalog.split("test")
    labelled = {i: bundle.schema.decode(c) for i, c in zip(test.ids, test.codes)}
    schema = bundle.schema
    out: dict[str, Any] = {"gallery": len(test), "protocol": f"single-attribute manipulation queries over the whole "
                                                              f"test split, {max_queries} sampled (seed {seed})"}
    for name in backends:
        retriever = Retriever(bundle, backend=name)
        bar, update = progress_bar(len(test), f"quality {name}")
        retriever.add(iter_images(images, test.ids), labelled, progress=update)
        bar.close()
        index = retriever.index
        assert index is not None
        ids, vectors, codes = index.vectors_and_codes()
        queries = manipulation_queries(codes, schema.sizes, max_queries=max_queries, seed=seed)
        q = retriever.family.change_batch(vectors[queries.rows], codes[queries.rows], queries.attrs, queries.values)
        exact = hit_rates(exact_topk(q, vectors, 50), codes, queries.targets, (10, 30, 50))
        slot = {i: n for n, i in enumerate(ids)}
        found, _ = index.search(q, 50)
        approx = hit_rates(np.array([[slot[i] for i in row] for row in found]), codes, queries.targets, (10, 30, 50))
        out[name] = {"top10_exact": exact[10], "top30_exact": exact[30], "top50_exact": exact[50],
                     "top30_hnsw": approx[30], "queries": len(queries), "valid_queries": queries.candidates}
    if len(backends) == 2:
        a, b = backends
        out["top30_change_points"] = round(100 * (out[b]["top30_exact"] - out[a]["top30_exact"]), 3)
        out["within_1_point"] = abs(out["top30_change_points"]) <= 1.0
    return out


# ---- report --------------------------------------------------------------------------------------
def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    paper = [r for r in rows if r["config"] == "paper" and r["path"] != "torch_eager_fp32"]
    if not paper:
        return {}
    fastest_model = min(paper, key=lambda r: r["model_s_per_1000"])
    e2e_rows = [r for r in paper if r.get("e2e_large_s_per_1000")]
    fastest_e2e = min(e2e_rows, key=lambda r: r["e2e_large_s_per_1000"]) if e2e_rows else None
    out = {"model_s_per_1000": {"target": TARGETS["model_s_per_1000"], "best": fastest_model["model_s_per_1000"],
                                "path": fastest_model["path"],
                                "met": fastest_model["model_s_per_1000"] <= TARGETS["model_s_per_1000"]}}
    if fastest_e2e is not None:
        out["e2e_large_s_per_1000"] = {"target": TARGETS["e2e_large_s_per_1000"],
                                       "best": fastest_e2e["e2e_large_s_per_1000"], "path": fastest_e2e["path"],
                                       "met": fastest_e2e["e2e_large_s_per_1000"] <= TARGETS["e2e_large_s_per_1000"]}
        speedup = fastest_e2e.get("speedup_e2e_large_vs_eager")
        out["e2e_speedup_vs_eager"] = {"target": TARGETS["e2e_speedup_vs_eager"], "best": speedup,
                                       "path": fastest_e2e["path"],
                                       "met": bool(speedup and speedup >= TARGETS["e2e_speedup_vs_eager"])}
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    flags = ", ".join(f for f, on in m["flags"].items() if on) or "none"
    lines = [
        "# Feature extraction on CPU (benchmarks/encode.py)", "",
        f"Machine: {m['cpu']}, {m['cores']} usable cores, flags: {flags}; int8 dot-product instructions: "
        f"{'yes' if m['int8_dot_product'] else 'no'}; bf16 hardware: {'yes' if m['bf16_hardware'] else 'no'}. "
        f"The machine is shared: during the run other processes used {m['cpu_share']['other_processes_cores_avg']} "
        f"cores on average (this benchmark {m['cpu_share']['this_process_cores_avg']}); load average at start "
        f"{[round(v, 2) for v in m['loadavg_start']]}, at end {[round(v, 2) for v in m['loadavg_end']]}.", "",
        f"Images: {result['images']['count']} test-split catalog JPEGs read from files; 'catalog' = as they are "
        f"(about 60x80), '480x640' = the same images re-encoded as 480x640 JPEGs (quality 90) to stand for "
        f"full-size catalog photos. End to end = JPEG file -> decode/resize/normalise (fashsdk.Encoder, "
        f"{result['settings']['workers'] or 'auto'} decode workers, mode {result['settings']['decode']}) -> model -> "
        "normalised vectors added to a CatalogIndex. "
        f"Model only = the model on preprocessed batches of {result['settings']['batch']}. Batch 1 = one JPEG "
        f"(bytes) to its vector. Medians over {result['settings']['repeats']} (model) / "
        f"{result['settings']['e2e_repeats']} (end to end) interleaved repeats; x = speed-up vs PyTorch eager "
        "fp32 in the same run; cosine/overlap are against ONNX Runtime fp32 on the same images.", "",
        "| config | path | model s/1000 | e2e s/1000 catalog | e2e s/1000 480x640 | batch-1 p50 / p99 ms "
        "| x model | x e2e | x e2e 480x640 | mean cos | top-10 overlap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['path']} | {_fmt(r['model_s_per_1000'])} | {_fmt(r['e2e_s_per_1000'])} | "
            f"{_fmt(r['e2e_large_s_per_1000'])} | {_fmt(r['batch1_p50_ms'], 1)} / {_fmt(r['batch1_p99_ms'], 1)} | "
            f"{_fmt(r.get('speedup_model_vs_eager'))} | {_fmt(r.get('speedup_e2e_vs_eager'))} | "
            f"{_fmt(r.get('speedup_e2e_large_vs_eager'))} | {_fmt(r.get('mean_cosine_vs_ort_fp32'), 5)} | "
            f"{_fmt(r.get('top10_overlap_vs_ort_fp32'), 3)} |")
    notes = [f"- {r['config']}/{r['path']}: {r['note']}" for r in result["rows"] if r.get("note")]
    if notes:
        lines += ["", *notes]
    if result.get("targets"):
        lines += ["", "## Targets (paper configuration)", ""]
        for key, t in result["targets"].items():
            lines.append(f"- {key}: target {t['target']}, best {t['best']} ({t['path']}): "
                         f"{'met' if t['met'] else 'NOT met'}")
    for cfg in result["configs"]:
        lines += ["", f"## {cfg['config']}: where the time goes", "",
                  f"- decode + resize + normalise, one thread: {cfg['decode_ms_per_image_1_thread']['catalog']} ms/image "
                  f"(catalog), {cfg['decode_ms_per_image_1_thread']['480x640']} ms/image (480x640)",
                  f"- decode only, ms/image (are threads GIL-bound?): catalog {cfg['decode_only_ms_per_image']['catalog']}, "
                  f"480x640 {cfg['decode_only_ms_per_image']['480x640']}"]
        for r in result["rows"]:
            if r["config"] == cfg["config"] and r.get("index_add_s_per_1000") is not None:
                lines.append(f"- {r['path']}: index add {r['index_add_s_per_1000']} s/1000 of the end-to-end time")
        for precision, prof in cfg.get("ort_profile", {}).items():
            ops = ", ".join(f"{o['op']} {o['ms_per_image']:.3f} ms ({100 * o['share']:.0f}%)"
                            for o in prof["by_op_type"][:6])
            lines.append(f"- ONNX Runtime {precision} per image (batch {prof['batch']}): {ops}")
        lines.append(f"- torch weights: {cfg['torch_weights']}; int8: {cfg['int8']}")
    for key in [k for k in result if k == "quality" or k.startswith("quality_")]:
        q, config = result[key], key.partition("_")[2] or "demo"
        lines += ["", f"## Accuracy gate: Top-30 manipulation accuracy on the whole test split ({config} bundle)", ""]
        for name, v in q.items():
            if isinstance(v, dict):
                lines.append(f"- {name}: Top-30 {100 * v['top30_exact']:.2f}% exact search, "
                             f"{100 * v['top30_hnsw']:.2f}% through hnswlib ({v['queries']} queries)")
        if "top30_change_points" in q:
            lines.append(f"- int8 - fp32: {q['top30_change_points']:+.2f} points "
                         f"({'within' if q['within_1_point'] else 'NOT within'} 1 point)")
    for key in ("gpu_paper", "gpu_demo"):
        if result.get(key):
            lines += ["", f"GPU ({key[4:]}): {json.dumps(result[key])[:400]}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True, help="output JSON (a .md table is written beside it)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--labels", type=Path, help="labels CSV (default DATA/styles.csv)")
    p.add_argument("--images-from", nargs="+", help="image folder or tar shards (default DATA)")
    p.add_argument("--bundle", type=Path, help="demo configuration bundle (default runs/demo/bundle, else runs/smoke/bundle)")
    p.add_argument("--configs", nargs="+", default=["paper", "demo"], choices=["paper", "demo", *OTHER_CONFIGS])
    p.add_argument("--compact-bundle", type=Path, help="a bundle of the from-scratch compact backbone, measured as "
                                                       "the 'compact' configuration")
    p.add_argument("--datrnet-bundle", type=Path, help="a DAtRNet bundle (python -m export demo --family datrnet), "
                                                       "measured as the 'datrnet' configuration")
    p.add_argument("--fsn-bundle", type=Path, help="a FashionSearchNet bundle (python -m export demo --family fsn), "
                                                   "measured as the 'fsn' configuration")
    p.add_argument("--baseline-bundle", type=Path, help="any other trained bundle (say, the demo at another input "
                                                        "size), measured as the 'baseline' configuration")
    p.add_argument("--paths", nargs="+", default=["torch_eager_fp32", "torch_bf16_cl", "ort_fp32", "ort_int8"])
    p.add_argument("--images", type=int, default=1000, help="catalog images for end to end (default 1000)")
    p.add_argument("--model-images", type=int, default=256, help="images for model-only timing (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="model-only repeats (default 3)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="end-to-end repeats (default 3)")
    p.add_argument("--batch1-samples", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="model threads (default: usable cores)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode workers (default: fashsdk's choice from each stream's first batch)")
    p.add_argument("--decode", choices=sorted(DECODE_MODES), default="auto",
                   help="end-to-end decode workers: auto (fashsdk's default: threads for short streams, for "
                        "long ones one thread or processes as the first batch's timing says), threads or processes")
    p.add_argument("--calibration-images", type=int, default=300)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--no-quality", dest="quality", action="store_false",
                   help="skip the Top-30 gate on the whole test split (demo bundle)")
    p.add_argument("--rebuild", action="store_true", help="re-export the cached paper bundle")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.threads = args.threads or usable_cores()
    args.model_images = min(args.model_images, args.images)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    labels = args.labels or args.data / "styles.csv"
    images = args.images_from or [str(args.data)]
    demo_bundle = args.bundle or next((p for p in (Path("runs/demo/bundle"), Path("runs/smoke/bundle"))
                                       if (p / "manifest.json").is_file()), None)
    started = time.perf_counter()
    share = CpuShare()
    result: dict[str, Any] = {"rows": [], "machine": machine(), "configs": [],
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fashsdk-encode-bench-") as tmp:
        log(f"writing {args.images} catalog JPEGs and their 480x640 re-encodes to {tmp} ...")
        image_set = prepare_images(labels, images, args.images, args.seed, Path(tmp))
        result["images"] = {"count": len(image_set.ids), "split": "test", "seed": args.seed,
                            "large": "the same images upscaled (bicubic) to 480x640 and saved as JPEG quality 90, "
                                     "in a temporary folder, to stand for full-size catalog photos"}
        for name in args.configs:
            if name == "paper":
                config = paper_config(labels, images, CACHE, args.calibration_images, args.rebuild)
            elif name in OTHER_CONFIGS:
                other = getattr(args, f"{name}_bundle")
                if other is None:
                    log(f"no --{name}-bundle: {name} config skipped")
                    continue
                config = demo_config(other, labels, images, CACHE, args.calibration_images, name)
            else:
                if demo_bundle is None:
                    log("no demo bundle (runs/demo/bundle, runs/smoke/bundle or --bundle): demo config skipped")
                    continue
                config = demo_config(demo_bundle, labels, images, CACHE, args.calibration_images)
            rows, extra = measure_config(config, image_set, args)
            result["rows"] += rows
            result["configs"].append(extra)
            result["gpu_" + name] = _gpu_rows(config.bundle, image_set)
            atomic_write_json(args.json, result)  # partial results survive a later failure
            if name in ("demo", *OTHER_CONFIGS) and args.quality:
                log("[demo] Top-30 on the whole test split, fp32 and int8 ...")
                backends = [b for b in ("onnxruntime-cpu-fp32", "onnxruntime-cpu-int8")
                            if b.split("-")[-1] in {e.precision for e in config.bundle.engines}]
                result["quality" if name == "demo" else f"quality_{name}"] = quality_gate(config.bundle, labels, images,
                                                                                          backends)
    result["targets"] = targets(result["rows"])
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["machine"]["cpu_share"] = share.report()
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(args.json, result)
    atomic_write_bytes(args.json.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


def _gpu_rows(bundle: Bundle, image_set: ImageSet) -> dict[str, Any] | None:
    """GPU rows from benchmarks.gpu_encode when the bundle has GPU engines this machine can run."""
    try:
        from benchmarks.gpu_encode import gpu_backends, gpu_rows, why_no_gpu
    except ImportError:
        return None
    if not gpu_backends(bundle):
        return {"skipped": why_no_gpu(bundle)}
    encoded = [image_set.encoded[i] for i in image_set.ids]
    pixels = normalize(np.stack([decode_resized(b, bundle.preprocess) for b in encoded[:256]]), bundle.preprocess)
    return gpu_rows(bundle, pixels, encoded)


if __name__ == "__main__":
    sys.exit(main())
