"""A bundle: ONNX model(s), memory-block prototypes and a manifest with checksums.

Everything a torch-free runtime needs travels in the manifest: attribute schema,
embedding layout, preprocessing, which engines exist. Every file is verified against its
sha256 before native code (ONNX Runtime, numpy) reads it.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import BundleError
from .files import atomic_save_npy, atomic_write_json, contained_file, load_npy, read_json, sha256_file
from .preprocess import PreprocessSpec
from .schema import AttributeSchema

FORMAT = "fashsdk-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROTOTYPES = "prototypes.npy"
MODEL = "model.onnx"


@dataclass(frozen=True)
class EngineEntry:
    """One deployable engine of the model: which backend runs it, at which precision."""

    backend: str  # "onnxruntime" (CPU or CUDA provider) or "tensorrt"
    precision: str  # "fp32", "int8", "fp16"
    file: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "file": self.file, **dict(self.facts)}


@dataclass
class Bundle:
    directory: Path
    manifest: dict[str, Any]
    schema: AttributeSchema
    preprocess: PreprocessSpec
    layout: dict[str, tuple[int, int]]
    prototypes: np.ndarray  # (D, J): column j = prototype residual of global value j
    engines: list[EngineEntry]

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding"]["dim"])

    @property
    def input_name(self) -> str:
        return str(self.manifest["model"].get("input_name", "images"))

    def path_of(self, name: str) -> Path:
        return contained_file(self.directory, name, f"bundle manifest {str(self.directory / MANIFEST)!r}", BundleError)

    def engine(self, backend: str, precision: str) -> EngineEntry | None:
        for e in self.engines:
            if e.backend == backend and e.precision == precision:
                return e
        return None

    def sha256(self) -> str:
        """Identity of the bundle: the manifest's own checksum (it pins every file)."""
        return sha256_file(self.directory / MANIFEST)

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> "Bundle":
        directory = Path(directory)
        if not directory.is_dir():
            raise BundleError(f"bundle directory {str(directory)!r} does not exist; build one with "
                              "'python -m export onnx' or 'make demo'")
        manifest_path = directory / MANIFEST
        manifest = read_json(manifest_path, "bundle manifest", BundleError)
        _check_manifest(manifest, manifest_path)
        files = manifest["files"]
        if verify:
            for name, meta in files.items():
                path = contained_file(directory, name, f"bundle manifest {str(manifest_path)!r}", BundleError)
                if not path.is_file():
                    raise BundleError(f"bundle file {str(path)!r} listed in the manifest is missing")
                if path.stat().st_size != meta.get("bytes", path.stat().st_size):
                    raise BundleError(f"bundle file {str(path)!r} has {path.stat().st_size} bytes, manifest "
                                      f"says {meta['bytes']}: truncated or modified; rebuild or restore the bundle")
                if sha256_file(path) != meta.get("sha256"):
                    raise BundleError(f"bundle file {str(path)!r} fails its sha256 check: it was modified or "
                                      "corrupted after export; rebuild or restore the bundle")
        try:
            schema = AttributeSchema.from_json(manifest["schema"])
            preprocess = PreprocessSpec.from_json(manifest["preprocess"])
            layout = {k: (int(v[0]), int(v[1])) for k, v in manifest["embedding"]["layout"].items()}
            engines = [
                EngineEntry(e["backend"], e["precision"], e["file"],
                            {k: v for k, v in e.items() if k not in ("backend", "precision", "file")})
                for e in manifest["engines"]
            ]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleError(f"bundle manifest {str(manifest_path)!r} is malformed ({type(exc).__name__}: {exc})") from None
        dim = int(manifest["embedding"]["dim"])
        _check_layout(schema, layout, dim, manifest_path)
        for e in engines:
            if e.file not in files:
                raise BundleError(f"bundle manifest {str(manifest_path)!r} lists engine file {e.file!r} without a checksum")
        proto_name = manifest.get("prototypes", PROTOTYPES)
        if proto_name not in files:
            raise BundleError(f"bundle manifest {str(manifest_path)!r} has no checksum for {proto_name!r}")
        prototypes = load_npy(contained_file(directory, proto_name, "bundle manifest", BundleError),
                              "bundle prototypes", BundleError)
        if prototypes.shape != (dim, schema.total_values) or prototypes.dtype != np.float32:
            raise BundleError(
                f"bundle prototypes {str(directory / proto_name)!r} have shape {prototypes.shape} {prototypes.dtype}, "
                f"expected ({dim}, {schema.total_values}) float32"
            )
        if not np.isfinite(prototypes).all():
            raise BundleError(f"bundle prototypes {str(directory / proto_name)!r} contain NaN or infinity")
        return cls(directory, manifest, schema, preprocess, layout, prototypes, engines)

    def register_engine(self, entry: EngineEntry, source: str | Path | None = None) -> None:
        """Add (or replace) an engine file and rewrite the manifest atomically, last."""
        target = self.path_of(entry.file)
        if source is not None and Path(source).resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
        self.manifest["files"][entry.file] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        self.engines = [e for e in self.engines if not (e.backend == entry.backend and e.precision == entry.precision)]
        self.engines.append(entry)
        self.manifest["engines"] = [e.to_json() for e in self.engines]
        atomic_write_json(self.directory / MANIFEST, self.manifest)


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{str(path)!r} is not a fashsdk bundle manifest (missing format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise BundleError(f"bundle manifest {str(path)!r} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle manifest {str(path)!r} has format_version {version}, newer than this fashsdk "
            f"understands ({FORMAT_VERSION}); upgrade fashsdk"
        )
    for key in ("files", "schema", "preprocess", "embedding", "model", "engines"):
        if key not in manifest:
            raise BundleError(f"bundle manifest {str(path)!r} lacks the {key!r} section")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"bundle manifest {str(path)!r}: 'files' must map file names to checksums")


def _check_layout(schema: AttributeSchema, layout: Mapping[str, tuple[int, int]], dim: int, path: Path) -> None:
    if list(layout) != schema.names:
        raise BundleError(f"bundle manifest {str(path)!r}: embedding layout {list(layout)} does not follow "
                          f"the schema's attributes {schema.names}")
    position = 0
    for name, (start, stop) in layout.items():
        if start != position or stop <= start:
            raise BundleError(f"bundle manifest {str(path)!r}: layout of {name!r} is [{start}, {stop}), not contiguous")
        position = stop
    if position != dim:
        raise BundleError(f"bundle manifest {str(path)!r}: layout covers {position} dims, embedding dim is {dim}")


def write_bundle(
    directory: str | Path,
    model_file: str | Path,
    prototypes: np.ndarray,
    schema: AttributeSchema,
    preprocess: PreprocessSpec,
    layout: Mapping[str, tuple[int, int]],
    model_info: Mapping[str, Any],
) -> Bundle:
    """Write a bundle: files first, the manifest (with their checksums) last and atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / MODEL
    if Path(model_file).resolve() != target.resolve():
        tmp = directory / f".{MODEL}.tmp"
        shutil.copyfile(model_file, tmp)
        tmp.replace(target)
    atomic_save_npy(directory / PROTOTYPES, np.asarray(prototypes, dtype=np.float32))
    dim = int(prototypes.shape[0])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_unix": int(time.time()),
        "model": dict(model_info),
        "schema": schema.to_json(),
        "embedding": {"dim": dim, "normalized": True, "metric": "cosine",
                      "layout": {k: [int(v[0]), int(v[1])] for k, v in layout.items()}},
        "preprocess": preprocess.to_json(),
        "prototypes": PROTOTYPES,
        "engines": [EngineEntry("onnxruntime", "fp32", MODEL).to_json()],
        "files": {
            name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in (MODEL, PROTOTYPES)
        },
    }
    atomic_write_json(directory / MANIFEST, manifest)
    return Bundle.load(directory)
