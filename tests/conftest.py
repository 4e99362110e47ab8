"""Session-scoped fixtures shared by every test layer: real (untrained) bundles of both
families and an index over real photos, built once per session (about 10 s).

The bundle is an untrained compact ADDE exported through ``export.onnx_export.build_bundle``
at 40x32 input, with a schema fitted on the first ~100 photos of the shared catalog; tests
that modify files copy them first (``bundle_copy`` / ``index_copy``). Session fixtures may use
torch: they are built before the runtime layer makes torch unimportable for each test.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for path in (ROOT, TESTS):  # `export` runs from the repository root; helpers live in tests/
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from realdata import RealSubset, load_subset  # noqa: E402

REAL_ATTRIBUTES = ("gender", "masterCategory", "baseColour", "season")
REAL_COUNT = 100


@pytest.fixture(scope="session")
def real_subset_data() -> RealSubset:
    return load_subset(REAL_COUNT, REAL_ATTRIBUTES)


@pytest.fixture(scope="session")
def real_bundle_dir(tmp_path_factory: pytest.TempPathFactory, real_subset_data: RealSubset) -> Path:
    """A real ONNX bundle (untrained compact ADDE, random block-structured prototypes). Do not modify."""
    import torch
    from bundles import spread_untrained

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


@pytest.fixture(scope="session")
def real_chunk_bundle_dir(tmp_path_factory: pytest.TempPathFactory, real_bundle_dir: Path,
                          real_retriever) -> Path:
    """A chunk_replace bundle over the same model as ``real_bundle_dir`` (value means of the indexed
    photos), so the two families share one index. Do not modify."""
    from export.onnx_export import derive_bundle
    from fashsdk.families.chunk_replace import value_means

    _, vectors, codes = real_retriever.index.vectors_and_codes()
    table, _ = value_means(vectors, codes, real_retriever.schema, list(real_retriever.bundle.layout.values()))
    directory = tmp_path_factory.mktemp("real_chunk_bundle") / "bundle"
    derive_bundle(real_bundle_dir, directory, "chunk_replace", {"value_table": table})
    return directory


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real bundle (synthetic schema, 40x32 input) for tests that need no real labels. Do not modify."""
    from bundles import make_tiny_bundle

    directory = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    make_tiny_bundle(directory)
    return directory


@pytest.fixture(scope="session")
def other_tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_bundle_dir`` with other weights: another embedding space. Do not modify."""
    from bundles import make_tiny_bundle

    directory = tmp_path_factory.mktemp("other_tiny_bundle") / "bundle"
    make_tiny_bundle(directory, seed=1)
    return directory


@pytest.fixture(scope="session")
def readme_bundle_dir(tmp_path_factory: pytest.TempPathFactory, real_subset_data: RealSubset) -> Path:
    """An untrained bundle with the demo's attributes (articleType, baseColour, gender, usage), values
    fitted on the shared catalog's labels, for running the README's examples. Do not modify."""
    import csv

    import torch
    from bundles import spread_untrained
    from realdata import DATA

    from export.models import ADDE, ModelConfig
    from export.onnx_export import build_bundle
    from fashsdk.sources.catalog import fit_schema
    from fashsdk.sources.preprocess import PreprocessSpec, decode_resized

    with open(DATA / "styles.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f)][:5000]
    schema, _ = fit_schema(rows, ("articleType", "baseColour", "gender", "usage"), min_count=20)
    spec = PreprocessSpec(height=40, width=32)
    torch.manual_seed(0)
    model = ADDE(ModelConfig(backbone="compact", attribute_sizes=schema.sizes, dim=8, width=8,
                             height_px=spec.height, width_px=spec.width))
    pixels = np.stack([decode_resized(real_subset_data.images[i], spec) for i in real_subset_data.ids])
    spread_untrained(model, pixels, spec)
    directory = tmp_path_factory.mktemp("readme_bundle") / "bundle"
    build_bundle(model.eval(), schema, spec, directory, pixels[:8])
    return directory
