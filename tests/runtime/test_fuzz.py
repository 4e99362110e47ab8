"""Property-based fuzzing (hypothesis): image decoding, manifest and sidecar parsing, query
arguments. The property everywhere: a valid result or one of fashsdk's typed errors
(FashsdkError subclasses), never another exception and never a crash of the process.

Bounded for CI: a few hundred examples per target, no deadline (the machine is shared).
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fashsdk import Bundle, BundleError, CatalogIndex, FashsdkError, IndexFileError, Retriever
from fashsdk.bundle import MANIFEST
from fashsdk.files import SEAL_KEY, seal
from fashsdk.index.persistence import SIDECAR
from fashsdk.sources.preprocess import PreprocessSpec, decode_resized

SPEC = PreprocessSpec(height=40, width=32)
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
FAST = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM",
         b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x1cftypavif"]


def _decode_or_typed_error(data: object) -> None:
    try:
        out = decode_resized(data, SPEC)  # type: ignore[arg-type]
    except FashsdkError:
        return
    assert out.shape == (SPEC.height, SPEC.width, 3) and out.dtype == np.uint8


@pytest.fixture(scope="module")
def encoded_photos(real_subset_data) -> list[bytes]:
    """One real catalog photo in every supported container."""
    photo = Image.open(io.BytesIO(real_subset_data.images[real_subset_data.ids[2]]))
    out = [real_subset_data.images[real_subset_data.ids[2]]]
    for fmt in ("PNG", "GIF", "WEBP", "BMP", "TIFF"):
        buf = io.BytesIO()
        photo.save(buf, fmt)
        out.append(buf.getvalue())
    return out


# ---- images ---------------------------------------------------------------------------
@FAST
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=2048))
def test_random_bytes_decode_or_raise_image_error(prefix: bytes, body: bytes) -> None:
    _decode_or_typed_error(prefix + body)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 5), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                              min_size=1, max_size=8),
       cut=st.one_of(st.none(), st.floats(0, 1)), insert=st.binary(max_size=16))
def test_mutated_valid_images_decode_or_raise_image_error(encoded_photos, which: int, flips, cut, insert) -> None:
    data = bytearray(encoded_photos[which])
    for where, value in flips:
        data[int(where * len(data))] = value
    if insert:
        at = int(flips[0][0] * len(data))
        data[at:at] = insert
    if cut is not None:
        del data[int(cut * len(data)):]
    _decode_or_typed_error(bytes(data))


@FAST
@given(array=hnp.arrays(dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.uint16, np.float32, np.bool_]),
                        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9)))
def test_random_arrays_decode_or_raise_image_error(array: np.ndarray) -> None:
    _decode_or_typed_error(array)


# ---- manifest and sidecar ------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, prefix + (i,))
    return out


def _mutate(doc: dict, path: tuple, action: str, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    if not path:
        return value if action == "replace" and isinstance(value, dict) else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory: pytest.TempPathFactory, real_bundle_dir: Path) -> tuple[Path, dict]:
    directory = Path(shutil.copytree(real_bundle_dir, tmp_path_factory.mktemp("fuzz") / "bundle"))
    return directory, json.loads((directory / MANIFEST).read_text())


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_load_or_raise_bundle_error(fuzz_bundle, data: st.DataObject) -> None:
    directory, original = fuzz_bundle
    path = data.draw(st.sampled_from(_paths(original)))
    action = data.draw(st.sampled_from(["replace", "delete"]) if path else st.just("replace"))
    doc = _mutate(original, path, action, data.draw(JSON_VALUES))
    resealed = data.draw(st.booleans())  # a forger re-seals; random damage does not
    text = json.dumps(seal(doc) if resealed and isinstance(doc, dict) else doc)
    (directory / MANIFEST).write_text(text)
    try:
        bundle = Bundle.load(directory)
    except BundleError:
        return
    finally:
        (directory / MANIFEST).write_text(json.dumps(original))
    assert resealed or json.loads(text) == original or SEAL_KEY not in doc  # unsealed: a pre-seal manifest
    (directory / MANIFEST).write_text(text)
    try:  # it loaded: it must also run, or refuse with a typed error
        out = Retriever(bundle, threads=1).encode([np.zeros((8, 8, 3), np.uint8)])
        assert out.embedding.shape == (1, bundle.dim)
    except FashsdkError:
        pass
    finally:
        (directory / MANIFEST).write_text(json.dumps(original))


@pytest.fixture(scope="module")
def fuzz_index(tmp_path_factory: pytest.TempPathFactory, real_index_dir: Path) -> tuple[Path, dict]:
    directory = Path(shutil.copytree(real_index_dir, tmp_path_factory.mktemp("fuzz") / "index"))
    return directory, json.loads((directory / SIDECAR).read_text())


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_sidecars_load_or_raise_index_file_error(fuzz_index, data: st.DataObject) -> None:
    directory, original = fuzz_index
    path = data.draw(st.sampled_from(_paths(original)))
    action = data.draw(st.sampled_from(["replace", "delete"]) if path else st.just("replace"))
    doc = _mutate(original, path, action, data.draw(JSON_VALUES))
    (directory / SIDECAR).write_text(json.dumps(seal(doc) if isinstance(doc, dict) else doc))
    try:
        index = CatalogIndex.load(directory)
    except IndexFileError:
        return
    finally:
        (directory / SIDECAR).write_text(json.dumps(original))
    try:  # it loaded: searching it gives results or a typed error
        ids, scores = index.search(np.ones((1, index.dim), np.float32) / np.sqrt(index.dim), 5)
        assert len(ids[0]) == len(scores[0]) <= 5
    except FashsdkError:
        pass


# ---- query arguments ----------------------------------------------------------------------
@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_query_arguments_give_results_or_typed_errors(real_retriever: Retriever, data: st.DataObject) -> None:
    schema = real_retriever.schema
    ids = real_retriever.index.ids
    query = data.draw(st.one_of(st.sampled_from(ids), st.integers(-10, 10**6), st.text(max_size=20),
                                st.binary(max_size=40), st.none(), st.floats(), st.booleans(),
                                st.lists(st.sampled_from(ids), max_size=2)))
    names = st.one_of(st.sampled_from(schema.names), st.text(max_size=12))
    values = st.one_of(st.sampled_from([v for a in schema.attributes for v in a.values]), st.text(max_size=12),
                       st.none(), st.integers())
    change = data.draw(st.one_of(st.none(), st.dictionaries(names, values, max_size=3), st.text(max_size=10),
                                 st.lists(st.tuples(names, values), max_size=2)))
    k = data.draw(st.one_of(st.integers(-3, 300), st.floats(), st.text(max_size=3), st.none(), st.booleans()))
    exact = data.draw(st.booleans())
    try:
        hits = real_retriever.search(query, change, k=k, exact=exact)  # type: ignore[arg-type]
    except FashsdkError:
        return
    assert isinstance(k, int) and 0 < len(hits) <= k
    assert all(h.id in real_retriever.index for h in hits)
