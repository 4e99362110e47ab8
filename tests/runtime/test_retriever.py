"""Retriever on a real (untrained) ONNX bundle: indexing, persistence, add/remove, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bundles import SCHEMA, random_images

from fashsdk import Bundle, BundleError, ImageError, IndexFileError, QueryError, Retriever
from fashsdk.bundle import MANIFEST


@pytest.fixture()
def bundle_dir(tiny_bundle_dir: Path) -> Path:
    return tiny_bundle_dir


@pytest.fixture()
def retriever(bundle_dir: Path) -> Retriever:
    r = Retriever(bundle_dir)
    images = random_images(40)
    labels = {f"item{i}": {"colour": SCHEMA.attributes[0].values[i % 4], "kind": None if i % 5 == 0 else "Shirt"}
              for i in range(40)}
    r.add(((f"item{i}", img) for i, img in enumerate(images)), labels)
    return r


def test_results_carry_ids_scores_and_stored_attributes(retriever: Retriever) -> None:
    results = retriever.search("item3", k=5)
    assert len(results) == 5 and "item3" not in [r.id for r in results]
    assert all(-1.0 <= r.score <= 1.0 + 1e-6 for r in results)
    assert [r.score for r in results] == sorted([r.score for r in results], reverse=True)
    item = next(r for r in results if r.id == "item7") if any(r.id == "item7" for r in results) else results[0]
    n = int(item.id[4:])
    assert item.attributes["colour"] == SCHEMA.attributes[0].values[n % 4]
    assert item.attributes["kind"] == (None if n % 5 == 0 else "Shirt")


def test_search_by_image_equals_search_by_id(retriever: Retriever) -> None:
    image = random_images(40)[12]
    by_image = retriever.search(image, k=3)
    assert by_image[0].id == "item12" and by_image[0].score == pytest.approx(1.0, abs=1e-5)
    by_id = retriever.search("item12", k=2)
    assert [r.id for r in by_id] == [r.id for r in by_image[1:3]]


def test_manipulation_moves_the_query_towards_the_new_value(retriever: Retriever, bundle_dir: Path) -> None:
    plain = retriever.query_vector("item1")[0]
    changed = retriever.query_vector("item1", {"colour": "Red"})[0]
    bundle = Bundle.load(bundle_dir)
    delta = changed * np.linalg.norm(plain + bundle.family.prototypes[:, 2] - bundle.family.prototypes[:, 1]) - plain
    start, stop = bundle.layout["colour"]
    outside = np.concatenate([delta[:start], delta[stop:]])
    assert np.abs(delta[start:stop]).max() > 1e-3 and np.abs(outside).max() < 1e-5  # item1 is Blue -> Red


def test_index_round_trip_and_incremental_add_remove(retriever: Retriever, bundle_dir: Path, tmp_path: Path) -> None:
    before = [(r.id, round(r.score, 5)) for r in retriever.search("item5", {"colour": "White"}, k=8)]
    retriever.save_index(tmp_path / "index")
    loaded = Retriever(bundle_dir, tmp_path / "index")
    assert [(r.id, round(r.score, 5)) for r in loaded.search("item5", {"colour": "White"}, k=8)] == before
    extra = random_images(45, seed=9)[40:]
    loaded.add([(f"new{i}", img) for i, img in enumerate(extra)])
    assert loaded.search(extra[2], k=1)[0].id == "new2"
    loaded.remove(["new2", "item5"])
    assert "new2" not in [r.id for r in loaded.search(extra[2], k=44)]
    with pytest.raises(QueryError, match="neither an indexed id"):
        loaded.search("item5")
    with pytest.raises(QueryError, match="not in the index"):
        loaded.remove(["item5"])
    loaded.save_index(tmp_path / "index")
    again = Retriever(bundle_dir, tmp_path / "index")
    assert len(again.index) == 40 + 5 - 2 and "new2" not in again.index and "new3" in again.index
    assert sorted(p.name for p in (tmp_path / "index").iterdir() if p.name.startswith("ids-")) and len(
        [p for p in (tmp_path / "index").iterdir() if p.name.startswith("vectors-")]) == 1  # old generation cleaned


def test_k_larger_than_the_catalog_returns_everything(retriever: Retriever) -> None:
    assert len(retriever.search("item0", k=1000)) == 39
    with pytest.raises(QueryError, match="positive integer"):
        retriever.search("item0", k=0)


def test_bad_names_and_images_get_clear_errors(retriever: Retriever, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match="did you mean 'colour'"):
        retriever.search("item1", {"color": "Red"})
    with pytest.raises(QueryError, match="did you mean 'Red'"):
        retriever.search("item1", {"colour": "red"})
    with pytest.raises(QueryError, match="neither an indexed id nor an existing image file"):
        retriever.search("nope")
    with pytest.raises(ImageError, match="not a readable image"):
        retriever.search(b"definitely not a jpeg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    with pytest.raises(ImageError):
        retriever.predict(str(bad))
    with pytest.raises(QueryError, match="already indexed"):
        retriever.add([("item1", random_images(1)[0])])


def test_predict_gives_a_value_and_probability_per_attribute(retriever: Retriever) -> None:
    pred = retriever.predict(random_images(1)[0])
    assert set(pred) == set(SCHEMA.names)
    for name, p in pred.items():
        assert p.value in SCHEMA.attributes[SCHEMA.names.index(name)].values and 0 < p.probability <= 1


def test_modified_bundle_file_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / "prototypes.npy").read_bytes())
    data[-1] ^= 0x01
    (copy / "prototypes.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="prototypes.npy.*sha256"):
        Bundle.load(copy)


def test_index_from_another_bundle_is_refused(retriever: Retriever, tmp_path: Path, other_tiny_bundle_dir: Path) -> None:
    retriever.save_index(tmp_path / "index")
    with pytest.raises(IndexFileError, match="different bundle"):
        Retriever(other_tiny_bundle_dir, tmp_path / "index")
    assert (other_tiny_bundle_dir / MANIFEST).is_file()
