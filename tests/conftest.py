"""Shared, session-scoped fixtures: one tiny real bundle and one index over real photos.

Built once per test session (about 10 s): an untrained compact ADDE exported through
``export.onnx_export.build_bundle`` at 40x32 input, with a schema fitted on the first
~100 images of ``../shared/data/myntra-small/images-000.tar`` and their styles.csv labels,
and a saved ``CatalogIndex`` over those images. Tests that modify files copy them first
(``bundle_copy`` / ``index_copy``). Everything is skipped, with the reason, when the
shared catalog is absent.
"""
from __future__ import annotations

import csv
import shutil
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `export` (training side) is run from the repository root
    sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data" / "myntra-small"
REAL_ATTRIBUTES = ("gender", "masterCategory", "baseColour", "season")
REAL_COUNT = 100


@dataclass(frozen=True)
class RealSubset:
    """The first ``REAL_COUNT`` photos of shard 0: encoded bytes and their labels."""

    ids: list[str]
    images: dict[str, bytes]  # id -> JPEG bytes, exactly as stored in the shard
    labels: dict[str, dict[str, str | None]]  # id -> {attribute: value or None}, values in the schema
    schema: object  # fashsdk.schema.AttributeSchema fitted on these rows (min_count 2)


def require_shared_data() -> Path:
    if not (SHARED_DATA / "styles.csv").is_file() or not (SHARED_DATA / "images-000.tar").is_file():
        pytest.skip(f"shared catalog not found at {SHARED_DATA} (expected ../shared/data/myntra-small "
                    "beside the repository root)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_subset_data() -> RealSubset:
    from fashsdk.sources.catalog import encode_rows, fit_schema

    data = require_shared_data()
    images: dict[str, bytes] = {}
    with tarfile.open(data / "images-000.tar") as tar:
        for member in tar:
            if len(images) == REAL_COUNT:
                break
            if member.isfile() and member.name.endswith(".jpg"):
                images[Path(member.name).stem] = tar.extractfile(member).read()  # type: ignore[union-attr]
    with open(data / "styles.csv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f) if r["id"] in images}
    ids = [i for i in images if i in rows]
    schema, _ = fit_schema([rows[i] for i in ids], REAL_ATTRIBUTES, min_count=2)
    codes = encode_rows([rows[i] for i in ids], schema)
    labels = {i: schema.decode(c) for i, c in zip(ids, codes)}
    return RealSubset(ids, {i: images[i] for i in ids}, labels, schema)


@pytest.fixture(scope="session")
def real_bundle_dir(tmp_path_factory: pytest.TempPathFactory, real_subset_data: RealSubset) -> Path:
    """A real ONNX bundle (untrained compact ADDE, random block-structured prototypes). Do not modify."""
    import torch
    from tiny_bundle import spread_untrained

    from export.models import ADDE, ModelConfig
    from export.onnx_export import build_bundle
    from fashsdk.sources.preprocess import PreprocessSpec, decode_resized

    spec = PreprocessSpec(height=40, width=32)
    schema = real_subset_data.schema
    torch.manual_seed(0)
    model = ADDE(ModelConfig(backbone="compact", attribute_sizes=schema.sizes, dim=8, width=8,  # type: ignore[attr-defined]
                             height_px=spec.height, width_px=spec.width))
    pixels = np.stack([decode_resized(real_subset_data.images[i], spec) for i in real_subset_data.ids])
    spread_untrained(model, pixels, spec)
    directory = tmp_path_factory.mktemp("real_bundle") / "bundle"
    build_bundle(model.eval(), schema, spec, directory, pixels[:8])  # type: ignore[arg-type]
    return directory


@pytest.fixture(scope="session")
def real_index_dir(tmp_path_factory: pytest.TempPathFactory, real_bundle_dir: Path,
                   real_subset_data: RealSubset) -> Path:
    """A saved index of the ~100 real photos, built with ``real_bundle_dir``. Do not modify."""
    from fashsdk import Retriever

    retriever = Retriever(real_bundle_dir, threads=1)
    retriever.add(((i, real_subset_data.images[i]) for i in real_subset_data.ids), real_subset_data.labels)
    directory = tmp_path_factory.mktemp("real_index") / "index"
    retriever.save_index(directory)
    return directory


@pytest.fixture()
def bundle_copy(tmp_path: Path, real_bundle_dir: Path) -> Path:
    """A private copy of the real bundle that a test may tamper with."""
    return Path(shutil.copytree(real_bundle_dir, tmp_path / "bundle"))


@pytest.fixture()
def index_copy(tmp_path: Path, real_index_dir: Path) -> Path:
    """A private copy of the real index that a test may tamper with."""
    return Path(shutil.copytree(real_index_dir, tmp_path / "index"))


@pytest.fixture(scope="session")
def real_retriever(real_bundle_dir: Path, real_index_dir: Path):
    """A Retriever over the real bundle and index, shared read-only across tests."""
    from fashsdk import Retriever

    return Retriever(real_bundle_dir, real_index_dir, threads=1)
