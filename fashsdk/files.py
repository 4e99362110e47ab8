"""Safe file handling: atomic writes, checksums, pickle-free array loading.

A save never leaves a half-written file under the final name: data goes to a temporary
file in the same directory, is fsynced, then renamed over the old one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAX_JSON_BYTES = 256 * 1024 * 1024


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through ``write(file)`` to a temp file, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def read_json(path: str | Path, what: str, error: type[Exception]) -> Any:
    """Parse a JSON file with a size cap; any problem becomes ``error`` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise error(f"{what} {str(path)!r} is missing ({exc.strerror})") from None
    if size > MAX_JSON_BYTES:
        raise error(f"{what} {str(path)!r} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {str(path)!r} is not valid JSON ({exc}); the file is corrupt") from None


def load_npy(path: str | Path, what: str, error: type[Exception]) -> np.ndarray:
    """np.load without pickle; a corrupt file becomes ``error`` naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise error(f"{what} {str(path)!r} cannot be read as a numeric array ({exc})") from None


def contained_file(directory: Path, name: object, what: str, error: type[Exception]) -> Path:
    """Resolve a file name from a manifest, refusing anything outside ``directory``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise error(f"{what} names file {name!r}, which is not a plain file name inside {str(directory)!r}")
    path = directory / name
    if path.is_symlink() or path.resolve().parent != directory.resolve():
        raise error(f"{what} names file {name!r}, which points outside {str(directory)!r}")
    return path
