"""Corrupted or tampered bundle and index files are refused, naming the file, before native
code (ONNX Runtime, hnswlib, numpy's parser) reads them.

Two kinds of damage: accidental (truncation, a flipped bit: caught by sizes, sha256 and the
manifest/sidecar's own seal) and crafted (a manifest re-sealed by hand that points outside
its folder, a newer format, a pickled or oversized array: caught by validation).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from fashsdk import Bundle, BundleError, CatalogIndex, IndexFileError, Retriever
from fashsdk.bundle import MANIFEST
from fashsdk.files import SEAL_KEY, seal, sha256_file
from fashsdk.index.persistence import SIDECAR


# ---- helpers -----------------------------------------------------------------------------
def flip_bit(path: Path, position: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def rewrite_manifest(directory: Path, edit) -> None:
    """Edit the manifest as a forger would: change it, then re-seal it so the seal passes."""
    manifest = json.loads((directory / MANIFEST).read_text())
    edit(manifest)
    (directory / MANIFEST).write_text(json.dumps(seal(manifest), indent=2))


def pin(directory: Path, manifest: dict, name: str) -> None:
    """Record a (forged) file's true checksum in the manifest."""
    manifest["files"][name] = {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}


def graph_index_dir(tmp_path: Path, vectors: np.ndarray) -> Path:
    """A saved index that has an hnswlib graph file (small catalogs are otherwise scanned exactly)."""
    kwargs = {"exact_max_items": 8} if "exact_max_items" in inspect.signature(CatalogIndex).parameters else {}
    index = CatalogIndex(vectors.shape[1], 2, **kwargs)
    index.add([f"v{n}" for n in range(len(vectors))], vectors)
    index.save(tmp_path / "graph-index")
    return tmp_path / "graph-index"


def index_files(directory: Path) -> dict[str, str]:
    """role -> file name, as the sidecar pins them."""
    return {role: meta["name"] for role, meta in json.loads((directory / SIDECAR).read_text())["files"].items()}


def single_bit_flips(path: Path, seed: int, count: int = 250) -> Iterator[tuple[int, bytes]]:
    """Rewrite ``path`` with one random bit flipped at each of ``count`` random positions in turn,
    yielding (position, flipped bytes) while that version is on disk."""
    original = path.read_bytes()
    rng = np.random.default_rng(seed)
    for position in rng.choice(len(original), size=min(count, len(original)), replace=False):
        data = bytearray(original)
        data[position] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        yield int(position), bytes(data)


def same_json(a: bytes, b: bytes) -> bool:
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    v = rng.normal(size=(60, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ---- bundle: accidental damage ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.onnx", "prototypes.npy"])
def test_truncated_bundle_file_is_refused_by_name(bundle_copy: Path, name: str) -> None:
    truncate(bundle_copy / name)
    with pytest.raises(BundleError, match=re.escape(name) + ".*truncated"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("name", ["model.onnx", "prototypes.npy"])
def test_bit_flipped_bundle_file_is_refused_by_name(bundle_copy: Path, name: str) -> None:
    flip_bit(bundle_copy / name, (bundle_copy / name).stat().st_size // 2, 3)
    with pytest.raises(BundleError, match=re.escape(name) + ".*sha256"):
        Bundle.load(bundle_copy)


def test_model_changed_after_load_is_refused_before_onnxruntime_opens_it(bundle_copy: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    bundle = Bundle.load(bundle_copy)
    flip_bit(bundle_copy / "model.onnx", 1000, 1)  # after the load-time check, before the first encode
    opened: list[object] = []
    real_session = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: opened.append(a) or real_session(*a, **k))
    with pytest.raises(BundleError, match="model.onnx.*sha256"):
        Retriever(bundle, threads=1).encode([np.zeros((8, 8, 3), np.uint8)])
    assert opened == []


def test_truncated_or_missing_manifest_is_refused_by_name(bundle_copy: Path) -> None:
    truncate(bundle_copy / MANIFEST, 0.6)
    with pytest.raises(BundleError, match=re.escape(MANIFEST) + ".*not valid JSON"):
        Bundle.load(bundle_copy)
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=re.escape(MANIFEST) + ".*missing"):
        Bundle.load(bundle_copy)


def test_any_bit_flip_in_the_manifest_is_refused_or_changes_nothing(bundle_copy: Path) -> None:
    path = bundle_copy / MANIFEST
    original = path.read_bytes()
    reference = Bundle.load(bundle_copy)
    refused = tried = 0
    for position, data in single_bit_flips(path, seed=1):
        tried += 1
        try:
            bundle = Bundle.load(bundle_copy)
        except BundleError as exc:
            assert MANIFEST in str(exc) or "bundle file" in str(exc)
            refused += 1
            continue
        # accepted: only if the flip left the JSON value itself unchanged (e.g. 'e' -> 'E' in 1e-05)
        assert same_json(bytes(data), original), f"flip at byte {position} was accepted"
        assert bundle.manifest == reference.manifest
    assert tried >= 200 and refused >= tried * 0.9


# ---- bundle: crafted manifests ---------------------------------------------------------------
def test_newer_format_version_is_refused(bundle_copy: Path) -> None:
    rewrite_manifest(bundle_copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match=re.escape(MANIFEST) + ".*format_version 99, newer.*upgrade fashsdk"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("version", ["1", True, 0, None, 1.0])
def test_invalid_format_version_is_refused(bundle_copy: Path, version: object) -> None:
    rewrite_manifest(bundle_copy, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format_version"):
        Bundle.load(bundle_copy)


def _point_files_elsewhere(kind: str, directory: Path, outside: Path):
    def edit(m: dict) -> None:
        meta = m["files"].pop("model.onnx")
        name = {"parent": "../model.onnx", "absolute": str(outside / "model.onnx"),
                "subfolder": "sub/model.onnx", "backslash": "..\\model.onnx"}[kind]
        m["files"][name] = meta
        m["engines"][0]["file"] = name
    return edit


@pytest.mark.parametrize("kind", ["parent", "absolute", "subfolder", "backslash"])
def test_manifest_naming_a_file_outside_its_folder_is_refused(bundle_copy: Path, kind: str) -> None:
    outside = bundle_copy.parent
    shutil.copy(bundle_copy / "model.onnx", outside / "model.onnx")  # a real, matching file out there
    (bundle_copy / "sub").mkdir()
    shutil.copy(bundle_copy / "model.onnx", bundle_copy / "sub" / "model.onnx")
    rewrite_manifest(bundle_copy, _point_files_elsewhere(kind, bundle_copy, outside))
    with pytest.raises(BundleError, match=re.escape(MANIFEST) + ".*not a plain file name"):
        Bundle.load(bundle_copy)


def test_prototypes_outside_the_folder_are_refused(bundle_copy: Path) -> None:
    shutil.copy(bundle_copy / "prototypes.npy", bundle_copy.parent / "prototypes.npy")

    def edit(m: dict) -> None:
        m["family"]["files"]["prototypes"] = "../prototypes.npy"
        pin(bundle_copy, m, "../prototypes.npy")  # with its true checksum
    rewrite_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match="not a plain file name"):
        Bundle.load(bundle_copy)


def test_symlinked_bundle_file_is_refused(bundle_copy: Path) -> None:
    elsewhere = bundle_copy.parent / "elsewhere.onnx"
    shutil.move(bundle_copy / "model.onnx", elsewhere)
    os.symlink(elsewhere, bundle_copy / "model.onnx")  # same bytes, same checksum: still refused
    with pytest.raises(BundleError, match="model.onnx.*points outside"):
        Bundle.load(bundle_copy)


def test_pickled_prototypes_are_refused_without_unpickling(bundle_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    np.save(bundle_copy / "prototypes.npy", np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    rewrite_manifest(bundle_copy, lambda m: pin(bundle_copy, m, "prototypes.npy"))
    with pytest.raises(BundleError, match="prototypes.npy.*numeric"):
        Bundle.load(bundle_copy)
    assert not marker.exists()


class _Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_array_header_claiming_a_huge_shape_is_refused_without_allocating(bundle_copy: Path) -> None:
    path = bundle_copy / "prototypes.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
    header["shape"] = (1 << 40, 1 << 20)  # 4 exabytes of float32
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\x00" * 64)
    rewrite_manifest(bundle_copy, lambda m: pin(bundle_copy, m, "prototypes.npy"))
    with pytest.raises(BundleError, match="prototypes.npy.*header claims"):
        Bundle.load(bundle_copy)


def test_prototypes_with_nan_or_the_wrong_shape_are_refused(bundle_copy: Path) -> None:
    good = np.load(bundle_copy / "prototypes.npy")
    for bad, message in ((np.where(np.arange(good.size).reshape(good.shape) == 3, np.nan, good).astype(np.float32), "NaN"),
                         (good[:, :-1], "shape"), (good.astype(np.float64), "float32")):
        np.save(bundle_copy / "prototypes.npy", bad)
        rewrite_manifest(bundle_copy, lambda m: pin(bundle_copy, m, "prototypes.npy"))
        with pytest.raises(BundleError, match=message):
            Bundle.load(bundle_copy)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": "fashsdk-bundle", "format_version": '
                                  + "9" * 5000 + "}", "\ufeff{}", "null", '"just a string"', "{" + "}" * 3],
                         ids=["deeply-nested", "5000-digit-int", "bom", "null", "string", "unbalanced"])
def test_pathological_manifest_json_is_refused(bundle_copy: Path, text: str) -> None:
    (bundle_copy / MANIFEST).write_text(text)
    with pytest.raises(BundleError, match=re.escape(MANIFEST)):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("edit", [
    lambda m: m.update(files=[]), lambda m: m["files"].update({"model.onnx": "not-a-dict"}),
    lambda m: m.update(engines={"file": "model.onnx"}), lambda m: m["engines"][0].update(file=["model.onnx"]),
    lambda m: m["family"].update(files=["x"]), lambda m: m["embedding"].update(dim="32"),
    lambda m: m["embedding"].update(dim=1e300), lambda m: m["preprocess"].update(std=[0, 1, 1]),
    lambda m: m["preprocess"].update(mean=[float("nan"), 0, 0]), lambda m: m["preprocess"].update(height=10**6),
    lambda m: m.update(schema=[{"name": "gender", "values": []}]), lambda m: m.update(model=[]),
    lambda m: m["embedding"]["layout"].popitem(), lambda m: m.pop("engines"),
], ids=["files-list", "file-entry-str", "engines-dict", "engine-file-list", "prototypes-list", "dim-str",
        "dim-huge-float", "std-zero", "mean-nan", "height-huge", "attribute-without-values", "model-list",
        "layout-short", "no-engines"])
def test_malformed_but_sealed_manifest_is_a_bundle_error(bundle_copy: Path, edit) -> None:
    rewrite_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=re.escape(MANIFEST)):
        Bundle.load(bundle_copy)


def test_non_utf8_bundle_path_is_refused_with_advice(bundle_copy: Path) -> None:
    moved = Path(os.fsdecode(os.fsencode(bundle_copy) + b"-\xff"))
    bundle_copy.rename(moved)
    with pytest.raises(BundleError, match="not a valid UTF-8 path.*rename"):
        Bundle.load(moved)


def test_manifest_written_before_seals_still_loads(bundle_copy: Path) -> None:
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest.pop(SEAL_KEY)
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    assert Bundle.load(bundle_copy).schema.names


# ---- index files --------------------------------------------------------------------------
def test_every_index_file_truncated_or_flipped_is_refused_by_name(tmp_path: Path, vectors: np.ndarray,
                                                                  index_copy: Path) -> None:
    checked = set()
    for source in (graph_index_dir(tmp_path, vectors), index_copy):
        for role, name in index_files(source).items():
            for damage in ("truncate", "flip"):
                copy = tmp_path / f"{source.name}-{role}-{damage}"
                shutil.copytree(source, copy)
                if damage == "truncate":
                    truncate(copy / name)
                else:
                    flip_bit(copy / name, (copy / name).stat().st_size // 2, 5)
                with pytest.raises(IndexFileError, match=re.escape(name) + ".*checksum"):
                    CatalogIndex.load(copy)
                checked.add(role)
    assert {"graph", "vectors", "codes", "predicted", "ids"} <= checked


def test_sidecar_truncated_missing_or_newer_is_refused(index_copy: Path) -> None:
    sidecar = index_copy / SIDECAR
    original = sidecar.read_bytes()
    truncate(sidecar, 0.7)
    with pytest.raises(IndexFileError, match=re.escape(SIDECAR) + ".*not valid JSON"):
        CatalogIndex.load(index_copy)
    meta = json.loads(original)
    meta["format_version"] = 99
    sidecar.write_text(json.dumps(seal(meta)))
    with pytest.raises(IndexFileError, match=re.escape(SIDECAR) + ".*format_version 99.*upgrade fashsdk"):
        CatalogIndex.load(index_copy)
    sidecar.unlink()
    with pytest.raises(IndexFileError, match=re.escape(SIDECAR) + ".*missing"):
        CatalogIndex.load(index_copy)


def test_any_bit_flip_in_the_sidecar_is_refused_or_changes_nothing(tmp_path: Path, vectors: np.ndarray) -> None:
    directory = graph_index_dir(tmp_path, vectors)
    path = directory / SIDECAR
    original = path.read_bytes()
    reference = CatalogIndex.load(directory)
    queries = vectors[:5]
    expected = reference.search(queries, 5)
    refused = tried = 0
    for position, data in single_bit_flips(path, seed=2):
        tried += 1
        try:
            index = CatalogIndex.load(directory)
        except IndexFileError:
            refused += 1
            continue
        assert same_json(bytes(data), original), f"flip at byte {position} was accepted: {data[position - 20:position + 20]!r}"
        ids, scores = index.search(queries, 5)
        assert ids == expected[0] and all(np.array_equal(a, b) for a, b in zip(scores, expected[1]))
    assert tried >= 200 and refused >= tried * 0.9


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/vectors.npy", "", None, 7])
def test_sidecar_naming_a_file_outside_its_folder_is_refused(index_copy: Path, name: object) -> None:
    meta = json.loads((index_copy / SIDECAR).read_text())
    meta["files"]["vectors"]["name"] = name
    (index_copy / SIDECAR).write_text(json.dumps(seal(meta)))
    with pytest.raises(IndexFileError, match=re.escape(SIDECAR) + ".*not a plain file name"):
        CatalogIndex.load(index_copy)


def test_symlinked_index_file_is_refused(index_copy: Path) -> None:
    name = index_files(index_copy)["vectors"]
    elsewhere = index_copy.parent / "vectors-elsewhere.npy"
    shutil.move(index_copy / name, elsewhere)
    os.symlink(elsewhere, index_copy / name)
    with pytest.raises(IndexFileError, match="points outside"):
        CatalogIndex.load(index_copy)


def test_index_codes_outside_the_schema_are_a_typed_error(real_bundle_dir: Path, tmp_path: Path,
                                                          real_retriever: Retriever) -> None:
    ids, vecs, _ = real_retriever.index.vectors_and_codes()
    schema = real_retriever.schema
    codes = np.zeros((len(ids), len(schema.names)), np.int16)
    codes[5, 0] = len(schema.attributes[0].values) + 3  # an index built for another schema, checksums intact
    crafted = CatalogIndex(vecs.shape[1], len(schema.names))
    crafted.add(ids, vecs, codes)
    crafted.save(tmp_path / "crafted")
    retriever = Retriever(real_bundle_dir, tmp_path / "crafted", threads=1)
    with pytest.raises(IndexFileError, match="outside the bundle's schema"):
        retriever.search(ids[5], {schema.names[0]: schema.attributes[0].values[0]})
    with pytest.raises(IndexFileError, match="outside the bundle's schema") as caught:
        retriever.search(ids[5], k=len(ids), include_query=True)
    assert repr(ids[5]) in str(caught.value)  # the results' check names the offending item


def test_non_utf8_index_folder_saves_and_loads(tmp_path: Path, vectors: np.ndarray) -> None:
    directory = graph_index_dir(tmp_path, vectors)
    target = Path(os.fsdecode(os.fsencode(tmp_path) + b"/index-\xe9\xff"))
    index = CatalogIndex.load(directory)
    index.save(target)
    again = CatalogIndex.load(target)
    assert again.search(vectors[:3], 4) [0] == index.search(vectors[:3], 4)[0]


# ---- a manifest that does not belong to its model ------------------------------------------
def test_preprocess_that_the_model_cannot_take_is_a_bundle_error(bundle_copy: Path) -> None:
    rewrite_manifest(bundle_copy, lambda m: m["preprocess"].update(height=48))
    bundle = Bundle.load(bundle_copy)  # consistent on its own; the model disagrees
    with pytest.raises(BundleError, match=r"input .images. should be float32 \(N, 3, 48, 32\)"):  # before ORT parses it
        Retriever(bundle, threads=1).encode([np.zeros((8, 8, 3), np.uint8)])


def test_schema_wider_than_the_model_outputs_is_a_bundle_error(bundle_copy: Path) -> None:
    prototypes = np.load(bundle_copy / "prototypes.npy")
    np.save(bundle_copy / "prototypes.npy", np.concatenate([prototypes, prototypes[:, -1:]], axis=1))

    def edit(m: dict) -> None:
        m["schema"][-1]["values"].append("Monsoon")  # one more value than the model has logits for
        pin(bundle_copy, m, "prototypes.npy")
    rewrite_manifest(bundle_copy, edit)
    bundle = Bundle.load(bundle_copy)
    with pytest.raises(BundleError, match="do not belong together"):
        Retriever(bundle, threads=1).predict(np.zeros((8, 8, 3), np.uint8))
