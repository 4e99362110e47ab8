"""Signed bundles and indexes: ed25519 over the manifest, which pins every file by sha256.

A bundle's ``manifest.json`` and an index's ``index.json`` already hold the checksum of every
file they use, so one signature over their exact bytes covers the whole folder. ``sign`` writes
``manifest.json.sig`` / ``index.json.sig``; loading with trusted keys (``Retriever(...,
trusted_keys=[...])`` or the environment variable FASHSDK_TRUSTED_KEYS, paths separated by
``os.pathsep``) refuses an unsigned or wrongly signed folder before any of its files reaches
numpy, ONNX Runtime or hnswlib. Without trusted keys, unsigned folders load (local work), and
fashsdk says so once per process. Keys: ``fashsdk keygen`` (the ``trust`` extra: cryptography).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import FashsdkError
from .files import atomic_write_bytes, atomic_write_json

ENV = "FASHSDK_TRUSTED_KEYS"
SIGNATURE_FORMAT = "fashsdk-signature"
PUBLIC_PREFIX = "fashsdk-ed25519:"
log = logging.getLogger("fashsdk")
_warned_unsigned = False


class SignatureError(FashsdkError):
    """A bundle or index is unsigned, signed by an untrusted key, or its signature does not verify."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError("signatures need the 'cryptography' package: pip install 'fashsdk[trust]'") from None
    return ed25519


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def keygen(directory: str | Path) -> tuple[Path, Path]:
    """A new key pair: ``signing.key`` (private, mode 0600: keep it secret) and ``signing.pub``."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    private_path, public_path = directory / "signing.key", directory / "signing.pub"
    atomic_write_bytes(private_path, (base64.b64encode(raw).decode() + "\n").encode())
    os.chmod(private_path, stat.S_IRUSR | stat.S_IWUSR)
    atomic_write_bytes(public_path, (PUBLIC_PREFIX + base64.b64encode(public).decode() + "\n").encode())
    return private_path, public_path


def _read_b64(path: Path, what: str, prefix: str = "") -> bytes:
    try:
        text = path.read_text().strip()
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
        value = base64.b64decode(text, validate=True)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{what} {str(path)!r} cannot be read ({exc})") from None
    if len(value) != 32:
        raise SignatureError(f"{what} {str(path)!r} is not an ed25519 key (expected 32 bytes, got {len(value)})")
    return value


def manifest_of(folder: str | Path) -> Path:
    """The file a signature covers: a bundle's manifest.json or an index's index.json."""
    folder = Path(folder)
    for name in ("manifest.json", "index.json"):
        if (folder / name).is_file():
            return folder / name
    raise SignatureError(f"{str(folder)!r} is neither a bundle (manifest.json) nor an index (index.json)")


def sign(folder: str | Path, private_key: str | Path) -> Path:
    """Sign a bundle or index folder; returns the signature file."""
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.from_private_bytes(_read_b64(Path(private_key), "private key"))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    manifest = manifest_of(folder)
    signature = key.sign(manifest.read_bytes())
    target = manifest.with_name(manifest.name + ".sig")
    atomic_write_json(target, {"format": SIGNATURE_FORMAT, "signed": manifest.name, "key_id": key_id(public),
                               "signature": base64.b64encode(signature).decode()})
    return target


def trusted_keys(keys: Iterable[str | Path] | None = None) -> dict[str, bytes]:
    """key id -> public key, from the given key files, else from FASHSDK_TRUSTED_KEYS (may be empty)."""
    paths: Sequence[str | Path] = list(keys) if keys is not None else [
        p for p in os.environ.get(ENV, "").split(os.pathsep) if p]
    out = {}
    for p in paths:
        public = _read_b64(Path(p), "trusted public key", PUBLIC_PREFIX)
        out[key_id(public)] = public
    return out


def verified_bytes(manifest: Path, keys: dict[str, bytes], what: str) -> bytes | None:
    """The manifest's bytes after checking its signature against ``keys`` (None: no keys, unsigned
    loading allowed). Callers parse these very bytes, so the file cannot change in between."""
    global _warned_unsigned
    if not keys:
        if not _warned_unsigned:
            _warned_unsigned = True
            log.warning("loading bundles and indexes without signature checks; set %s (or pass trusted_keys) "
                        "to require signatures from your keys", ENV)
        return None
    ed25519 = _crypto()
    where = f"{what} {str(manifest.parent)!r}"
    signature_path = manifest.with_name(manifest.name + ".sig")
    if not signature_path.is_file():
        raise SignatureError(f"{where} is not signed, and signatures are required (trusted keys are set); sign it "
                             f"with 'fashsdk sign --key KEY {manifest.parent}' or load it from a trusted source")
    try:
        record = json.loads(signature_path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
        signer = str(record["key_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{where}: signature file {str(signature_path)!r} is malformed ({exc})") from None
    if signer not in keys:
        raise SignatureError(f"{where} is signed by key {signer}, which is not among the trusted keys "
                             f"({', '.join(sorted(keys))})")
    data = manifest.read_bytes()
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(keys[signer]).verify(signature, data)
    except Exception:
        raise SignatureError(f"{where}: the signature does not match {manifest.name}: the folder was changed after it "
                             "was signed, or the signature was forged; do not load it") from None
    return data
