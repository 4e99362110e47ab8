"""A bundle: ONNX model(s), the model family's files and a manifest with checksums.

Everything a torch-free runtime needs travels in the manifest: attribute schema,
embedding layout, preprocessing, the model family and its files, which engines exist.
Every file is verified against its sha256 before native code (ONNX Runtime, numpy) reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import BundleError
from .families import Family, load_family
from .files import (atomic_copy, atomic_save_npy, atomic_write_json, check_seal, contained_file, fsync_dir, load_npy,
                    read_json, seal, sha256_file, stat_key, verify_entry)
from .schema import AttributeSchema
from .sources.preprocess import PreprocessSpec
from .trust import trusted_keys as trusted
from .trust import verified_bytes

FORMAT = "fashsdk-bundle"
FORMAT_VERSION = 2  # 2: the model family and its files; 1 (ADDE only) was never released
MANIFEST = "manifest.json"
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
    family_name: str  # fashsdk.families: how a query changes for {attribute: value}
    family_files: dict[str, str]  # role -> file name, e.g. {"prototypes": "prototypes.npy"}
    engines: list[EngineEntry]
    # (size, mtime_ns, inode) of each file when its sha256 was checked: path_of re-checks a changed file
    verified: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    family: Family = field(init=False)  # the query arithmetic, built from the family's files at load

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding"]["dim"])

    @property
    def attribute_subspaces(self) -> bool:
        """Whether each attribute's layout slice is its own subspace (False for FLAM's single feature)."""
        return bool(self.manifest["model"].get("attribute_subspaces", True))

    @property
    def input_name(self) -> str:
        return str(self.manifest["model"].get("input_name", "images"))

    def path_of(self, name: str) -> Path:
        """The path of a bundle file, for handing to native code (ONNX Runtime, TensorRT).

        If the file changed on disk since its checksum was verified, it is verified again
        first, so a file modified after Bundle.load is still refused before native code reads it.
        """
        path = contained_file(self.directory, name, f"bundle manifest {str(self.directory / MANIFEST)!r}", BundleError)
        meta = self.manifest["files"].get(name)
        if isinstance(meta, dict) and (name not in self.verified or self.verified[name] != stat_key(path)):
            self.verified[name] = verify_entry(path, meta, "bundle file", BundleError)
        return path

    def family_array(self, role: str) -> np.ndarray:
        """A family file as a numeric array: checksum verified, loaded without pickle, finite."""
        name = self.family_files.get(role)
        if name is None:
            raise BundleError(f"bundle {str(self.directory)!r} ({self.family_name}) lacks its {role!r} file; "
                              "re-export the bundle")
        return self.array(name, role)

    @property
    def outfit(self) -> dict[str, Any] | None:
        """The outfit head's description (``python -m export outfit-head``), or None."""
        return self.manifest.get("outfit")

    def array(self, name: str, role: str) -> np.ndarray:
        """A .npy file the manifest pins, as a numeric array: checksum verified, no pickle, finite."""
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {str(self.directory)!r} has no checksum for its {role!r} file {name!r}")
        path = self.path_of(name)
        array = load_npy(path, f"bundle {role}", BundleError)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BundleError(f"bundle {role} {str(path)!r} contains NaN or infinity")
        return array

    def engine(self, backend: str, precision: str) -> EngineEntry | None:
        for e in self.engines:
            if e.backend == backend and e.precision == precision:
                return e
        return None

    def sha256(self) -> str:
        """Identity of the bundle: the manifest's own checksum (it pins every file)."""
        return sha256_file(self.directory / MANIFEST)

    def embedding_sha256(self) -> str:
        """Identity of the embedding space: the reference model, schema, layout, preprocessing.

        Unlike ``sha256()`` it does not change when an engine (int8, fp16, a TensorRT plan:
        the same network at another precision) is registered, nor with the family's files
        (they change queries, not catalog vectors): bundles of two families exported from one
        checkpoint share an index.
        """
        files = self.manifest["files"]
        space = {"model": files.get(MODEL, {}).get("sha256"),
                 **{key: self.manifest[key] for key in ("schema", "embedding", "preprocess")}}
        return hashlib.sha256(json.dumps(space, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True,
             trusted_keys: Iterable[str | Path] | None = None) -> "Bundle":
        """Load and verify a bundle. With trusted keys (``trusted_keys``, else FASHSDK_TRUSTED_KEYS), its
        manifest must carry a valid signature from one of them (fashsdk.trust), checked first."""
        directory = Path(directory)
        try:
            os.fspath(directory).encode("utf-8")
        except UnicodeEncodeError:
            raise BundleError(f"bundle directory {str(directory)!r} is not a valid UTF-8 path, which ONNX Runtime "
                              "needs to open the model; rename or move the bundle") from None
        if not directory.is_dir():
            raise BundleError(f"bundle directory {str(directory)!r} does not exist; build one with "
                              "'python -m export onnx' or 'make demo'")
        manifest_path = directory / MANIFEST
        signed = verified_bytes(manifest_path, trusted(trusted_keys), "bundle") if manifest_path.is_file() else None
        manifest = read_json(manifest_path, "bundle manifest", BundleError, signed)
        check_seal(manifest, manifest_path, "bundle manifest", BundleError)
        _check_manifest(manifest, manifest_path)
        files = manifest["files"]
        where = f"bundle manifest {str(manifest_path)!r}"
        verified: dict[str, tuple[int, int, int]] = {}
        for name, meta in files.items():
            path = contained_file(directory, name, where, BundleError)
            if not isinstance(meta, dict):
                raise BundleError(f"{where}: the entry for {name!r} must be {{'sha256': ..., 'bytes': ...}}")
            if verify:
                verified[name] = verify_entry(path, meta, "bundle file", BundleError)
        try:
            schema = AttributeSchema.from_json(manifest["schema"])
            preprocess = PreprocessSpec.from_json(manifest["preprocess"])
            dim = _int(manifest["embedding"]["dim"])
            layout = {str(k): (_int(v[0]), _int(v[1])) for k, v in manifest["embedding"]["layout"].items()}
            engines = [
                EngineEntry(str(e["backend"]), str(e["precision"]), _file_name(e["file"]),
                            {k: v for k, v in e.items() if k not in ("backend", "precision", "file")})
                for e in manifest["engines"]
            ]
            family_name = str(manifest["family"]["name"])
            family_files = {str(role): _file_name(name) for role, name in manifest["family"]["files"].items()}
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise BundleError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
        _check_layout(schema, layout, dim, manifest_path)
        for e in engines:
            if e.file not in files:
                raise BundleError(f"{where} lists engine file {e.file!r} without a checksum")
        for role, name in family_files.items():
            if name not in files:
                raise BundleError(f"{where} has no checksum for the family's {role!r} file {name!r}")
        bundle = cls(directory, manifest, schema, preprocess, layout, family_name, family_files, engines, verified)
        bundle.family = load_family(bundle)  # its files parsed and checked now, not at the first query
        return bundle

    def register_engine(self, entry: EngineEntry, source: str | Path | None = None) -> EngineEntry:
        """Add (or replace) an engine and rewrite the manifest atomically, last.

        With ``source``, the file is copied in crash-safely: a file the current manifest
        already pins is never overwritten in place (the new copy gets a fresh name, returned
        in the entry), so a crash at any moment leaves the previous bundle loadable.
        Without ``source``, ``entry.file`` must already be complete in the bundle directory.
        """
        target = contained_file(self.directory, entry.file, f"engine entry {entry!r}", BundleError)
        if source is not None and Path(source).resolve() != target.resolve():
            if entry.file in self.manifest["files"]:
                stem, dot, suffix = entry.file.rpartition(".")
                name = f"{stem}-{secrets.token_hex(4)}.{suffix}" if dot else f"{entry.file}-{secrets.token_hex(4)}"
                entry = replace(entry, file=name)
                target = contained_file(self.directory, name, f"engine entry {entry!r}", BundleError)
            atomic_copy(source, target)
        if not target.is_file():
            raise BundleError(f"engine file {str(target)!r} does not exist; pass source= to copy it into the bundle")
        previous = {e.file for e in self.engines}
        self.manifest["files"][entry.file] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
        self.engines = [e for e in self.engines if not (e.backend == entry.backend and e.precision == entry.precision)]
        self.engines.append(entry)
        self.manifest["engines"] = [e.to_json() for e in self.engines]
        kept = ({e.file for e in self.engines} | set(self.family_files.values()) | {MODEL}  # model.onnx: the reference
                | set((self.outfit or {}).get("files", {}).values()))
        dropped = previous - kept
        for name in dropped:
            self.manifest["files"].pop(name, None)
        self.manifest = seal(self.manifest)
        atomic_write_json(self.directory / MANIFEST, self.manifest)
        self.verified[entry.file] = stat_key(target)
        for name in dropped:  # only after the new manifest is durable
            try:
                (self.directory / name).unlink()
            except FileNotFoundError:
                pass
        fsync_dir(self.directory)
        return entry


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _file_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"file name {name!r} is not a string")
    return name


def _check_manifest(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{str(path)!r} is not a fashsdk bundle manifest (missing format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"bundle manifest {str(path)!r} has an invalid format_version {version!r}")
    if version < FORMAT_VERSION:
        raise BundleError(f"bundle manifest {str(path)!r} has format_version {version}, from before model families; "
                          "re-export it from its checkpoint with 'python -m export onnx'")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle manifest {str(path)!r} has format_version {version}, newer than this fashsdk "
            f"understands ({FORMAT_VERSION}); upgrade fashsdk"
        )
    for key in ("files", "schema", "preprocess", "embedding", "model", "engines", "family"):
        if key not in manifest:
            raise BundleError(f"bundle manifest {str(path)!r} lacks the {key!r} section")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"bundle manifest {str(path)!r}: 'files' must map file names to checksums")
    for key, kind in (("model", dict), ("embedding", dict), ("preprocess", dict), ("schema", list), ("engines", list),
                      ("family", dict)):
        if not isinstance(manifest[key], kind):
            raise BundleError(f"bundle manifest {str(path)!r}: {key!r} must be a JSON {kind.__name__}")


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
    schema: AttributeSchema,
    preprocess: PreprocessSpec,
    layout: Mapping[str, tuple[int, int]],
    model_info: Mapping[str, Any],
    family: str,
    family_arrays: Mapping[str, np.ndarray],
    family_models: Mapping[str, str | Path] | None = None,
) -> Bundle:
    """Write a bundle: files first, the manifest (with their checksums) last and atomically.

    ``family_arrays`` maps each of the family's file roles to its array, saved as ROLE.npy;
    ``family_models`` each of its ONNX graphs (e.g. FLAM's manipulator), copied as ROLE.onnx.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / MODEL
    if Path(model_file).resolve() != target.resolve():
        atomic_copy(model_file, target)
    family_files = {role: f"{role}.npy" for role in family_arrays}
    for role, array in family_arrays.items():
        atomic_save_npy(directory / family_files[role], np.asarray(array, dtype=np.float32))
    for role, source in (family_models or {}).items():
        family_files[role] = f"{role}.onnx"
        if Path(source).resolve() != (directory / family_files[role]).resolve():
            atomic_copy(source, directory / family_files[role])
    dim = sum(int(stop) - int(start) for start, stop in layout.values())
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_unix": int(time.time()),
        "model": dict(model_info),
        "family": {"name": family, "files": family_files},
        "schema": schema.to_json(),
        "embedding": {"dim": dim, "normalized": True, "metric": "cosine",
                      "layout": {k: [int(v[0]), int(v[1])] for k, v in layout.items()}},
        "preprocess": preprocess.to_json(),
        "engines": [EngineEntry("onnxruntime", "fp32", MODEL).to_json()],
        "files": {
            name: {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
            for name in (MODEL, *family_files.values())
        },
    }
    atomic_write_json(directory / MANIFEST, seal(manifest))
    return Bundle.load(directory)
