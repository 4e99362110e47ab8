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
    assert item.attributes["colour"] == SCHEMA.attributes[0].values[n % 4] and "colour" not in item.predicted
    if n % 5:
        assert item.attributes["kind"] == "Shirt" and "kind" not in item.predicted
    else:  # no stored label: the model's value, marked as predicted with its probability
        assert item.attributes["kind"] in SCHEMA.attributes[1].values and 0 < item.predicted["kind"] <= 1
    assert set(item.predicted) <= {"kind", "sex"} and "sex" in item.predicted  # sex was never labelled


def test_results_mark_predicted_values_until_labels_are_set(retriever: Retriever) -> None:
    unlabelled = [r for r in retriever.search("item3", k=39) if int(r.id[4:]) % 5 == 0]
    assert unlabelled and all("kind" in r.predicted for r in unlabelled)
    target = unlabelled[0].id
    retriever.set_labels({target: {"colour": "Red", "kind": "Watch", "sex": "Women"}})
    hit = next(r for r in retriever.search("item3", k=39) if r.id == target)
    assert hit.attributes == {"colour": "Red", "kind": "Watch", "sex": "Women"} and hit.predicted == {}
    retriever.set_labels({target: {"colour": "Red"}})  # left out: unknown again, the prediction shows
    hit = next(r for r in retriever.search("item3", k=39) if r.id == target)
    assert hit.attributes["colour"] == "Red" and set(hit.predicted) == {"kind", "sex"}


def test_upsert_replaces_an_items_image_and_labels(retriever: Retriever) -> None:
    image = random_images(41)[40]
    failures = retriever.upsert([("item5", image), ("new", random_images(43)[42])], {"item5": {"colour": "Blue"}})
    assert failures == [] and len(retriever.index) == 41
    top = retriever.search(image, k=1, include_query=True)[0]
    assert top.id == "item5" and top.score == pytest.approx(1.0, abs=1e-5) and top.attributes["colour"] == "Blue"


def test_remove_then_save_writes_the_removal(retriever: Retriever, tmp_path: Path) -> None:
    retriever.remove(["item9"])
    retriever.save_index(tmp_path / "index")
    assert "item9" not in Retriever(retriever.bundle, tmp_path / "index").index


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
        retriever.search("item1", {"colour": "Redd"})
    assert retriever.search("item1", {"colour": "red"}) == retriever.search("item1", {"colour": "Red"})
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


def test_predict_gives_the_top_values_with_probabilities(retriever: Retriever) -> None:
    pred = retriever.predict(random_images(1)[0])
    assert set(pred) == set(SCHEMA.names)
    for name, values in pred.items():
        assert len(values) == min(3, len(SCHEMA.attributes[SCHEMA.names.index(name)].values))
        assert all(p.value in SCHEMA.attributes[SCHEMA.names.index(name)].values and p.source == "model" for p in values)
        assert [p.probability for p in values] == sorted([p.probability for p in values], reverse=True)
        assert sum(p.probability for p in values) <= 1.0 + 1e-3
    many = retriever.predict_many([random_images(1)[0], "item4"], top=1)
    assert len(many) == 2 and all(len(v) == 1 for v in many[0].values())
    assert many[1]["colour"][0].value == "Black" and many[1]["colour"][0].source == "label"  # item4: colour label
    assert many[1]["sex"][0].source == "indexed" and 0 < many[1]["sex"][0].probability <= 1
    with pytest.raises(QueryError, match="list"):
        retriever.predict_many("item4")


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
