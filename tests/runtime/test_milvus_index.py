"""The Milvus backend on Milvus Lite: the same Retriever calls as the embedded hnswlib index, the
same answers (top-10 overlap >= 0.95, ``where`` identical to an exact filtered scan), writes
visible to the next search, and clear errors for bad addresses and mismatched catalogs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="pymilvus (the milvus extra) not installed")
pytest.importorskip("milvus_lite", reason="Milvus Lite (the milvus extra, Linux and macOS) not installed")
from realdata import _first_photos  # noqa: E402

from fashsdk import Retriever  # noqa: E402
from fashsdk.errors import IndexFileError, QueryError  # noqa: E402
from fashsdk.index import CatalogIndex, IndexBackend  # noqa: E402
from fashsdk.index.milvus_index import MilvusIndex, where_expression  # noqa: E402
from fashsdk.index.milvus_target import parse_target  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = 400  # enough that the embedded index walks a graph (exact_max_items=0 below), not a scan


@pytest.fixture(scope="module")
def catalog(real_bundle_dir: Path):
    """400 real photos encoded once: ids, embeddings, predicted codes, and labels with a quarter unknown."""
    photos = _first_photos(PHOTOS, shard=1)
    ids = list(photos)
    retriever = Retriever(real_bundle_dir, threads=1)
    out = retriever.encode([photos[i] for i in ids])
    predicted = retriever.schema.predicted_codes(out.logits)[0].astype(np.int16)
    labels = predicted.copy()
    rng = np.random.default_rng(0)
    labels[rng.random(labels.shape) < 0.25] = -1
    return ids, out.embedding, labels, predicted


@pytest.fixture(scope="module")
def both(real_bundle_dir: Path, catalog, tmp_path_factory: pytest.TempPathFactory):
    """The same catalog in the embedded index (graph mode) and in Milvus Lite, each behind a Retriever."""
    ids, vectors, labels, predicted = catalog
    embedded = Retriever(real_bundle_dir, threads=1)
    embedded.index = CatalogIndex(vectors.shape[1], labels.shape[1], layout=list(embedded.bundle.layout.values()),
                                  exact_max_items=0, info=embedded._index_info())
    embedded.index.add(ids, vectors, labels, predicted)
    address = f"milvus://{tmp_path_factory.mktemp('milvus')}/catalog.db"
    milvus = Retriever(real_bundle_dir, address, threads=1)
    milvus.index.add(ids, vectors, labels, predicted)
    assert embedded.index.mode == "two-stage" and milvus.index.mode == "milvus"
    return embedded, milvus, address


def overlap(a: list, b: list) -> float:
    return len({r.id for r in a} & {r.id for r in b}) / max(len(b), 1)


def test_milvus_answers_like_the_embedded_index(both, catalog) -> None:
    embedded, milvus, _ = both
    ids = catalog[0]
    schema = embedded.schema
    names = schema.names
    scores = []
    for n, item in enumerate(ids[:40]):
        attribute = names[n % len(names)]
        values = schema.attributes[n % len(names)].values
        change = {attribute: values[n % len(values)]}
        got, want = milvus.search(item, change=change, k=10), embedded.search(item, change=change, k=10)
        scores.append(overlap(got, want))
        assert [r.id for r in got][:3] == [r.id for r in want][:3] or overlap(got, want) >= 0.9
        for g in got:  # the labels and predictions come back with each result
            assert g.attributes == next((w.attributes for w in embedded.search(g.id, k=1, include_query=True)), None)
        sim_got, sim_want = milvus.similar(item, names[1], k=10), embedded.similar(item, names[1], k=10)
        scores.append(overlap(sim_got, sim_want))
        assert item not in {r.id for r in got + sim_got}  # the query's own item is left out, as embedded
    assert np.mean(scores) >= 0.95, np.mean(scores)


def test_where_equals_an_exact_filtered_scan(both, catalog) -> None:
    _, milvus, _ = both
    ids, vectors, labels, predicted = catalog
    current = np.where(labels >= 0, labels, predicted)
    schema = milvus.schema
    a, b = 0, 2
    values_a, values_b = schema.attributes[a].values, schema.attributes[b].values
    for va in range(len(values_a)):
        vb = [int(v) for v in np.unique(current[current[:, a] == va, b])[:2]]
        if not vb:
            continue
        where = {schema.names[a]: values_a[va], schema.names[b]: [values_b[v] for v in vb]}
        allowed = (current[:, a] == va) & np.isin(current[:, b], vb)
        query = vectors[7]
        order = np.argsort(-(vectors[allowed] @ query), kind="stable")[:10]
        expected = [ids[i] for i in np.flatnonzero(allowed)[order]]
        got = milvus.search(ids[7], k=10, where=where, include_query=True)
        assert [r.id for r in got] == expected


def test_writes_are_visible_to_the_next_search(both, catalog, real_bundle_dir: Path) -> None:
    _, milvus, address = both
    ids, vectors, labels, predicted = catalog
    index = milvus.index
    fresh = "new/item \"quoted\" ✓"
    index.add([fresh], vectors[3:4] * 1.0, labels[3:4], predicted[3:4])
    assert fresh in index and milvus.search(ids[3], k=2, include_query=True)[0].id in {ids[3], fresh}
    assert fresh in {r.id for r in milvus.search(ids[3], k=2, include_query=True)}
    index.remove([fresh])
    assert fresh not in index and fresh not in {r.id for r in milvus.search(ids[3], k=5, include_query=True)}
    with pytest.raises(QueryError, match="not in the index"):
        index.remove([fresh])
    with pytest.raises(QueryError, match="already indexed"):
        index.add([ids[0]], vectors[:1], labels[:1], predicted[:1])
    # relabelling moves an item between where-filters at once
    name = milvus.schema.names[0]
    values = milvus.schema.attributes[0].values
    new_code = (int(np.where(labels[5] >= 0, labels[5], predicted[5])[0]) + 1) % len(values)
    codes = labels[5:6].copy()
    codes[0, 0] = new_code
    index.set_labels([ids[5]], codes)
    found = milvus.search(ids[5], k=3, where={name: values[new_code]}, include_query=True)
    assert found[0].id == ids[5] and found[0].attributes[name] == values[new_code]
    index.set_labels([ids[5]], labels[5:6])
    # a second Retriever on the same file sees the same catalog, with its description
    again = Retriever(real_bundle_dir, address, threads=1)
    assert len(again.index) == len(ids) and again.index.info["embedding_sha256"] == milvus.bundle.embedding_sha256()


def test_both_backends_meet_the_protocol(both) -> None:
    embedded, milvus, _ = both
    assert isinstance(embedded.index, IndexBackend) and isinstance(milvus.index, IndexBackend)
    with pytest.raises(QueryError, match="approximate"):
        milvus.search(embedded.index.ids[0], k=5, exact=True)
    with pytest.raises(QueryError, match="without a directory"):
        milvus.save_index("somewhere")


def test_addresses_are_checked_with_the_fix_named(tmp_path: Path) -> None:
    assert parse_target("milvus:///srv/x/catalog.db").uri == "/srv/x/catalog.db"
    assert parse_target("milvus://runs/c.db?collection=shop_a&index=flat").index_type == "FLAT"
    assert parse_target("milvus://db.internal:19530").uri == "http://db.internal:19530"
    assert parse_target("milvus+https://db.example.com:443?db=prod").uri == "https://db.example.com:443"
    for bad, message in [("milvus://user:pw@host:19530", "FASHSDK_MILVUS_TOKEN"),
                         ("milvus://x.db?collection=1bad", "collection name"),
                         ("milvus://x.db?index=DISKANN", "index="), ("milvus://x.db?colection=a", "unknown"),
                         ("milvus+https://x.db", "local"), ("milvus://host:1/path", "HOST:PORT")]:
        with pytest.raises(QueryError, match=message):
            parse_target(bad)
    assert where_expression({2: frozenset({3, 1}), 0: frozenset({4})}) == "value_0 in [4] and value_2 in [1, 3]"


def test_a_catalog_of_another_shape_is_refused(both, tmp_path: Path) -> None:
    _, _, address = both
    with pytest.raises(IndexFileError, match="another collection"):
        MilvusIndex.connect(address, dim=7, num_attributes=2)


def test_cli_indexes_into_milvus_and_searches_it(real_bundle_dir: Path, real_subset_data, tmp_path: Path) -> None:
    from realdata import real_subset

    images, labels = real_subset(tmp_path, 60)
    address = f"milvus://{tmp_path}/cli.db?collection=shop"
    cli = [sys.executable, "-m", "fashsdk"]
    built = subprocess.run(cli + ["index", "--bundle", str(real_bundle_dir), "--labels", str(labels), "--images",
                                  str(images), "--out", address, "--threads", "1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    summary = json.loads(built.stdout)
    assert summary["indexed"] > 40 and summary["report"] is None
    query = sorted(p.stem for p in images.iterdir())[0]
    found = subprocess.run(cli + ["search", "--bundle", str(real_bundle_dir), "--index", address, "--query", query,
                                  "-k", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr[-2000:]
    results = json.loads(found.stdout)["results"]
    assert len(results) == 5 and query not in {r["id"] for r in results}
    direct = Retriever(real_bundle_dir, threads=1)
    direct.add([(p.stem, p.read_bytes()) for p in sorted(images.iterdir())])
    assert overlap([type("R", (), {"id": r["id"]}) for r in results], direct.search(query, k=5)) >= 0.8
