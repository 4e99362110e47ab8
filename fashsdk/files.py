"""Safe file handling: atomic writes, checksums, pickle-free array loading.

A save never leaves a half-written file under the final name: data goes to a temporary
file in the same directory, is fsynced, then renamed over the old one. JSON metadata can
carry a seal (the sha256 of its own canonical form), so a flipped bit in a manifest or
sidecar is refused instead of silently changing a value.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAX_JSON_BYTES = 256 * 1024 * 1024
SEAL_KEY = "sealed_sha256"


def _file_mode() -> int:
    """0o666 minus the process umask: what open() would give, unlike mkstemp's 0o600."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):  # pragma: no cover - non-Linux
        pass
    return 0o644


_FILE_MODE = _file_mode()


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
        os.fchmod(fd, _FILE_MODE)
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


def atomic_copy(source: str | Path, path: str | Path) -> None:
    """Copy ``source`` onto ``path`` atomically (temp file, fsync, rename)."""
    def write(f: io.BufferedWriter) -> None:
        with open(source, "rb") as src:
            while block := src.read(1 << 20):
                f.write(block)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _canonical_digest(body: Any) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` plus its own checksum under SEAL_KEY (over its canonical JSON form)."""
    body = json.loads(json.dumps({k: v for k, v in obj.items() if k != SEAL_KEY}))  # as a reader will see it
    return {**body, SEAL_KEY: _canonical_digest(body)}


def check_seal(obj: Any, path: str | Path, what: str, error: type[Exception]) -> None:
    """Refuse JSON metadata whose seal does not match; files written before seals existed pass."""
    if not isinstance(obj, dict):
        return
    if SEAL_KEY not in obj:
        damaged = [k for k in obj if len(k) == len(SEAL_KEY) and sum(a != b for a, b in zip(k, SEAL_KEY)) == 1]
        if damaged:  # a flipped bit in the seal's own name must not turn the check off
            raise error(f"{what} {str(path)!r} has a damaged seal key {damaged[0]!r}: the file is corrupted; "
                        "restore it from a backup or rebuild it")
        return
    body = {k: v for k, v in obj.items() if k != SEAL_KEY}
    if obj[SEAL_KEY] != _canonical_digest(body):
        raise error(f"{what} {str(path)!r} fails its own checksum ({SEAL_KEY}): it was modified or corrupted "
                    "after it was written; restore it from a backup or rebuild it")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def read_json(path: str | Path, what: str, error: type[Exception], data: bytes | None = None) -> Any:
    """Parse a JSON file with a size cap; any problem becomes ``error`` naming the file. ``data``:
    the file's bytes already read (and checked, e.g. against a signature), parsed instead of re-read."""
    path = Path(path)
    if data is not None:
        return _parse_json(data, path, what, error)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise error(f"{what} {str(path)!r} is missing ({exc.strerror})") from None
    if size > MAX_JSON_BYTES:
        raise error(f"{what} {str(path)!r} is {size} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read ({exc.strerror})") from None
    return _parse_json(data, path, what, error)


def _parse_json(data: bytes, path: Path, what: str, error: type[Exception]) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{what} {str(path)!r} is {len(data)} bytes, over the {MAX_JSON_BYTES}-byte limit")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, 4300+ digit ints
        raise error(f"{what} {str(path)!r} is not valid JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                    "the file is corrupt") from None


def _check_npy_header(f: io.BufferedReader, size: int) -> None:
    """The header's dtype must be numeric and its shape must fit in the file (no huge allocations)."""
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
        raise ValueError(f"unsupported .npy version {version}")
    shape, _, dtype = read_header[version](f)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"dtype {dtype} is not a plain numeric type")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > size - f.tell():
        raise ValueError(f"header claims shape {shape} ({needed} bytes) but the file holds {size - f.tell()}")


def load_npy(path: str | Path, what: str, error: type[Exception]) -> np.ndarray:
    """np.load without pickle; a corrupt file becomes ``error`` naming it."""
    try:
        with open(path, "rb") as f:
            _check_npy_header(f, os.fstat(f.fileno()).st_size)
        array = np.load(path, allow_pickle=False)
        if not isinstance(array, np.ndarray):  # pragma: no cover - guarded by the magic check
            raise ValueError("not a single .npy array")
        return array
    except Exception as exc:
        raise error(f"{what} {str(path)!r} cannot be read as a numeric array ({exc})") from None


def stat_key(path: Path) -> tuple[int, int, int]:
    """(size, mtime_ns, inode): a file whose key changed since its checksum was verified is verified again."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1, -1)
    return st.st_size, st.st_mtime_ns, st.st_ino


def verify_entry(path: Path, meta: object, what: str, error: type[Exception]) -> tuple[int, int, int]:
    """Check a file against its manifest entry ({"sha256", "bytes"}) before anything parses it;
    returns the stat key the check applies to."""
    if not isinstance(meta, dict):
        raise error(f"the manifest entry for {what} {str(path)!r} is malformed")
    if not path.is_file():
        raise error(f"{what} {str(path)!r} named by its manifest is missing")
    key = stat_key(path)
    if key[0] != meta.get("bytes") or sha256_file(path) != meta.get("sha256"):
        raise error(f"{what} {str(path)!r} fails its checksum (sha256): it was truncated, modified or corrupted "
                    "after it was written; restore it or rebuild it")
    return key


def contained_file(directory: Path, name: object, what: str, error: type[Exception]) -> Path:
    """Resolve a file name from a manifest, refusing anything outside ``directory``."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise error(f"{what} names file {name!r}, which is not a plain file name inside {str(directory)!r}")
    path = directory / name
    if path.is_symlink() or path.resolve().parent != directory.resolve():
        raise error(f"{what} names file {name!r}, which points outside {str(directory)!r}")
    return path


TEMP_NAME = re.compile(r"^\.[^/]+\.tmp$")  # what atomic_write and a graph save leave when killed
SWEEP_AGE_S = 600.0  # only files this old: a save in progress in another process keeps its own


def sweep(directory: Path, committed: set[str], own: re.Pattern[str], age_s: float | None = None) -> list[str]:
    """Delete what killed saves left in ``directory``: temporary files, and files named like this
    library's own (``own``) that the committed manifest does not use, when older than ``age_s``.
    Returns the names removed; a folder that cannot be written is left alone."""
    age = SWEEP_AGE_S if age_s is None else age_s
    now = time.time()
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if name in committed or not (TEMP_NAME.match(name) or own.match(name)):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < age:
                continue
            os.unlink(entry.path)
            removed.append(name)
        except OSError:
            continue
    return removed
