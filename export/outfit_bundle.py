"""A bundle that carries an outfit head: a copy of the base bundle's files plus the head's arrays,
every file checksummed in the manifest, which is written last (numpy only: no torch needed)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fashsdk.bundle import MANIFEST, Bundle
from fashsdk.files import atomic_copy, atomic_save_npy, atomic_write_json, seal, sha256_file


def write_head_bundle(source: Path, out: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Bundle:
    """``source``'s pinned files copied to ``out`` (a new or empty folder), the head's arrays saved as
    outfit_ROLE.npy, and the manifest's "outfit" section (``meta`` plus the files) sealed last."""
    base = Bundle.load(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder for the bundle with the outfit head")
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(json.dumps(base.manifest))
    manifest.pop("sealed_sha256", None)
    for name in manifest["files"]:
        atomic_copy(base.path_of(name), out / name)
    files = {}
    for role, array in arrays.items():
        files[role] = f"outfit_{role}.npy"
        atomic_save_npy(out / files[role], np.ascontiguousarray(array, np.float32))
        manifest["files"][files[role]] = {"sha256": sha256_file(out / files[role]),
                                          "bytes": (out / files[role]).stat().st_size}
    manifest["outfit"] = {**meta, "files": files}
    atomic_write_json(out / MANIFEST, seal(manifest))
    return Bundle.load(out)
