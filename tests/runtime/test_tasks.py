"""The tasks through ``Retriever`` on real photos: search with ``where``, ``similar`` on one
attribute, ``search_batch`` against single searches, and two model families served side by
side over one index."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fashsdk import BundleError, QueryError, Retriever
from fashsdk.index.subspaces import chunks

ROOT = Path(__file__).resolve().parents[2]


def test_search_where_keeps_only_matching_items_and_still_returns_k(real_retriever: Retriever, real_subset_data) -> None:
    schema = real_retriever.schema
    name = schema.names[0]
    counts = {v: sum(1 for lab in real_subset_data.labels.values() if lab[name] == v) for v in schema.attributes[0].values}
    value = max(counts, key=counts.get)
    query = real_subset_data.ids[0]
    results = real_retriever.search(query, k=5, where={name: value})
    assert len(results) == min(5, counts[value] - (real_subset_data.labels[query][name] == value))
    assert all(r.attributes[name] == value for r in results) and query not in [r.id for r in results]
    both = real_retriever.search(query, k=100, where={name: list(schema.attributes[0].values[:2])})
    allowed = set(schema.attributes[0].values[:2])
    assert all(r.attributes[name] in allowed for r in both)
    assert len(both) == sum(counts[v] for v in allowed) - (real_subset_data.labels[query][name] in allowed)
    with pytest.raises(QueryError, match="did you mean"):
        real_retriever.search(query, where={name: value.lower() + "x"})


def test_similar_ranks_by_the_attribute_subspace(real_retriever: Retriever, real_subset_data) -> None:
    schema = real_retriever.schema
    query = real_subset_data.ids[3]
    name = schema.names[2]
    results = real_retriever.similar(query, name, k=8)
    assert len(results) == 8 and query not in [r.id for r in results]
    span = real_retriever.bundle.layout[name]
    vectors, _, _ = real_retriever.index.get_many([query] + [r.id for r in results])
    space = chunks(vectors, span)
    expected = space[1:] @ space[0]
    assert np.allclose([r.score for r in results], expected, atol=1e-5)
    ids, all_vectors, _ = real_retriever.index.vectors_and_codes()
    all_space = chunks(all_vectors, span)
    brute = [ids[i] for i in np.argsort(-(all_space @ space[0])) if ids[i] != query][:8]
    assert [r.id for r in results] == brute
    with pytest.raises(QueryError, match="did you mean"):
        real_retriever.similar(query, name.upper() + "x")


def test_search_batch_equals_single_searches(real_retriever: Retriever, real_subset_data) -> None:
    schema = real_retriever.schema
    ids = real_subset_data.ids[:12]
    values = schema.attributes[1].values
    changes = [{schema.names[1]: values[i % len(values)]} if i % 3 else None for i in range(12)]
    image = real_subset_data.images[ids[5]]
    queries: list[object] = list(ids)
    queries[5] = image  # an image among the ids
    batch = real_retriever.search_batch(queries, changes, k=6)
    for q, change, got in zip(queries, changes, batch):
        single = real_retriever.search(q, change, k=6)
        assert [r.id for r in got] == [r.id for r in single]
        assert np.allclose([r.score for r in got], [r.score for r in single], atol=1e-5)
        assert [(r.attributes, r.predicted) for r in got] == [(r.attributes, r.predicted) for r in single]
        assert all(r.id != q for r in got)  # the query itself is left out, as in single searches
    same = real_retriever.search_batch(ids[:3], {schema.names[0]: schema.attributes[0].values[0]}, k=4)
    assert len(same) == 3 and all(len(r) == 4 for r in same)
    with pytest.raises(QueryError, match="one per query"):
        real_retriever.search_batch(ids[:3], [None, None], k=4)
    with pytest.raises(QueryError, match="neither an indexed id nor an existing image file"):
        real_retriever.search_batch(["no-such-id"], k=4)


def test_two_families_share_one_index_and_answer_differently(real_bundle_dir: Path, real_chunk_bundle_dir: Path,
                                                             real_index_dir: Path, real_subset_data) -> None:
    adde = Retriever(real_bundle_dir, real_index_dir, threads=1)
    chunk = Retriever(real_chunk_bundle_dir, real_index_dir, threads=1)
    assert (adde.family.name, chunk.family.name) == ("adde", "chunk_replace")
    assert chunk.describe()["family"] == "chunk_replace"
    schema = adde.schema
    query = real_subset_data.ids[1]
    plain_a, plain_c = adde.search(query, k=5), chunk.search(query, k=5)
    assert [r.id for r in plain_a] == [r.id for r in plain_c]  # no change: same embedding, same answer
    change = {schema.names[0]: schema.attributes[0].values[-1]}
    va, _ = adde.query_vector(query, change)
    vc, _ = chunk.query_vector(query, change)
    assert not np.allclose(va, vc)
    vector, labels, predicted = adde.index.get(query)
    current = np.where(labels >= 0, labels, predicted)
    parsed = schema.parse_change(change)
    assert np.allclose(vc, chunk.family.change_one(vector, current, parsed), atol=1e-6)
    span = adde.bundle.layout[schema.names[0]]
    table = np.load(real_chunk_bundle_dir / "value_table.npy")
    row = table[schema.offsets[0] + parsed[0]]
    assert np.allclose(vc[span[0]:span[1]] / np.linalg.norm(vc[span[0]:span[1]]),
                       row[span[0]:span[1]] / np.linalg.norm(row[span[0]:span[1]]), atol=1e-5)


def test_a_tampered_value_table_is_refused(tmp_path: Path, real_chunk_bundle_dir: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(real_chunk_bundle_dir, tmp_path / "bundle"))
    data = bytearray((copy / "value_table.npy").read_bytes())
    data[-3] ^= 4
    (copy / "value_table.npy").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="value_table.npy.*checksum"):
        Retriever(copy)


def test_cli_similar_and_where(real_bundle_dir: Path, real_index_dir: Path, real_retriever: Retriever,
                               real_subset_data) -> None:
    schema = real_retriever.schema
    query = real_subset_data.ids[2]
    base = [sys.executable, "-m", "fashsdk"]
    common = ["--bundle", str(real_bundle_dir), "--index", str(real_index_dir), "--query", query, "-k", "4"]
    done = subprocess.run(base + ["similar", *common, "--attribute", schema.names[2]], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in json.loads(done.stdout)["results"]] == [r.id for r in real_retriever.similar(query, schema.names[2], k=4)]
    value = real_subset_data.labels[query][schema.names[0]]
    done = subprocess.run(base + ["search", *common, "--where", f"{schema.names[0]}={value}"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(r["attributes"][schema.names[0]] == value for r in json.loads(done.stdout)["results"])
    done = subprocess.run(base + ["search", *common, "--where", "colour"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 2 and "attribute=value" in done.stderr


def test_boxes_are_refused_for_a_bundle_whose_model_does_not_localise() -> None:
    from pathlib import Path
    from types import SimpleNamespace

    import pytest

    from fashsdk.errors import QueryError
    from fashsdk.tasks.boxes import attribute_boxes, has_boxes

    bundle = SimpleNamespace(manifest={"model": {"architecture": "adde", "outputs": ["embedding", "logits"]}},
                             directory=Path("runs/demo/bundle"))
    assert not has_boxes(bundle)
    with pytest.raises(QueryError, match="no boxes output.*--family fsn"):
        attribute_boxes(bundle, b"not read")


def test_similar_refuses_an_item_whose_attribute_chunk_is_zero() -> None:
    from fashsdk import CatalogIndex
    from fashsdk.schema import Attribute, AttributeSchema
    from fashsdk.tasks.similar import similar

    schema = AttributeSchema((Attribute("colour", ("Red", "Blue")), Attribute("kind", ("Shirt", "Dress"))))
    vectors = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    vectors[3, :4] = 0.0  # item 3 has no colour chunk at all
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = CatalogIndex(8, 2, layout=[(0, 4), (4, 8)])
    index.add([f"i{i}" for i in range(30)], vectors, np.zeros((30, 2), np.int16))

    def ask(item: str, attribute: str) -> list:
        return similar(index, schema, lambda images: None, item, attribute, 5, None, False, False)

    colour = vectors[:, :4] / np.maximum(np.linalg.norm(vectors[:, :4], axis=1, keepdims=True), 1e-12)
    scores = colour @ colour[0]
    scores[0] = -np.inf
    found = ask("i0", "colour")
    assert [r.id for r in found] == [f"i{i}" for i in np.argsort(-scores)[:5]]
    np.testing.assert_allclose([r.score for r in found], np.sort(scores)[::-1][:5], atol=1e-6)
    with pytest.raises(QueryError, match="'colour' chunk is all zeros"):
        ask("i3", "colour")
    assert len(ask("i3", "kind")) == 5  # its other chunks still work
