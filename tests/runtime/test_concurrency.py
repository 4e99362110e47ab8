"""Concurrency: 8 threads search while another thread adds and removes items.

No crash, no error, and every result is consistent with a committed state of the index:
only ids that were present at some time, sorted, unique, with the true cosine scores, and
(for exact searches) no permanent item left out that should have ranked. With no writer,
8 threads get exactly the results of a serial run.
"""
from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fashsdk import CatalogIndex, Retriever

READERS = 8
WRITE_SECONDS = 3.0


def _index_kwargs() -> dict:
    """Force the two-stage (hnswlib graph) path even for a small catalog, where supported."""
    params = inspect.signature(CatalogIndex).parameters
    return {k: v for k, v in (("exact_max_items", 32), ("threads", 1)) if k in params}


@pytest.fixture()
def setup(real_bundle_dir: Path, real_retriever: Retriever, real_subset_data):
    ids, vectors, codes = real_retriever.index.vectors_and_codes()
    index = CatalogIndex(vectors.shape[1], codes.shape[1], **_index_kwargs())
    index.add(ids, vectors, codes)
    retriever = Retriever(real_bundle_dir, index, threads=1)
    rng = np.random.default_rng(3)
    churn = vectors[rng.integers(len(ids), size=200)] + rng.normal(0, 0.05, (200, vectors.shape[1])).astype(np.float32)
    churn /= np.linalg.norm(churn, axis=1, keepdims=True)
    churn_ids = [f"churn-{n}" for n in range(200)]
    known = dict(zip(ids, vectors)) | dict(zip(churn_ids, churn))
    for n, item in enumerate(real_subset_data.ids[:6]):  # re-added photos carry their original vector
        known[f"photo-copy-{n}"] = vectors[ids.index(item)]
    return retriever, ids, churn_ids, churn, known


def _check(hits, query_vec: np.ndarray, k: int, stable: dict, known: dict, exact: bool, exclude: str | None) -> None:
    got = [h.id for h in hits]
    assert len(got) == k and len(set(got)) == k, got
    assert set(got) <= set(known), set(got) - set(known)  # never an id that was never added
    scores = np.array([h.score for h in hits])
    assert (np.diff(scores) <= 1e-6).all(), scores
    true = np.array([float(query_vec @ known[i]) for i in got])
    assert np.allclose(scores, true, atol=1e-4), (scores, true)
    if exact:  # no permanent item that outscores the k-th result was left out (ties may go either way)
        floor = scores[-1] + 1e-5
        missed = {i: float(query_vec @ v) for i, v in stable.items() if i not in got and i != exclude
                  and float(query_vec @ v) > floor}
        assert not missed, f"{missed} {[(g, round(x, 4)) for g, x in zip(got, scores.tolist())]} {exclude}"


def test_searches_during_adds_and_removes_see_committed_states(setup, real_subset_data) -> None:
    retriever, ids, churn_ids, churn, known = setup
    stable = {i: known[i] for i in ids}
    schema = retriever.schema
    photos = [real_subset_data.images[i] for i in real_subset_data.ids[:6]]
    photo_vectors = retriever.encode(photos).embedding
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = [0] * READERS
    writes = [0]

    def writer() -> None:
        try:
            batch = 0
            while not stop.is_set():
                sl = slice((batch % 10) * 20, (batch % 10 + 1) * 20)
                retriever.index.add(churn_ids[sl], churn[sl])
                copies = [(f"photo-copy-{n}", photos[n]) for n in range(batch % 2 * 3, batch % 2 * 3 + 3)]
                retriever.add(copies)
                retriever.remove(churn_ids[sl] + [c[0] for c in copies])
                batch += 1
                writes[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader(slot: int) -> None:
        rng = np.random.default_rng(100 + slot)
        try:
            while not stop.is_set():
                kind = int(rng.integers(3))
                exact = bool(rng.integers(2))
                if kind == 0:  # an indexed item, one attribute changed
                    qid = ids[int(rng.integers(len(ids)))]
                    a = int(rng.integers(len(schema.attributes)))
                    change = {schema.names[a]: schema.attributes[a].values[int(rng.integers(schema.sizes[a]))]}
                    vec, _ = retriever.query_vector(qid, change)
                    hits = retriever.search(qid, change, k=10, exact=exact)
                    _check(hits, vec, 10, stable, known, exact, qid)
                elif kind == 1:  # a shopper's photo
                    n = int(rng.integers(len(photos)))
                    hits = retriever.search(photos[n], k=5, exact=exact)
                    _check(hits, photo_vectors[n], 5, stable, known, exact, None)
                else:  # raw vectors, several queries at once
                    q = churn[rng.integers(len(churn), size=4)]
                    out_ids, out_scores = retriever.index.search(q, 8, exact=exact)
                    for row, qv, sc in zip(out_ids, q, out_scores):
                        assert len(row) == 8 and set(row) <= set(known)
                        assert np.allclose(sc, [float(qv @ known[i]) for i in row], atol=1e-4)
                counts[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in range(READERS)]
    for t in threads:
        t.start()
    time.sleep(WRITE_SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, f"{len(errors)} errors: {[str(e)[:1500] for e in errors[:3]]}"
    assert writes[0] >= 3 and min(counts) >= 3, (writes, counts)
    assert sorted(retriever.index.ids) == sorted(ids)  # every add was matched by its remove


def test_parallel_searches_without_writes_equal_a_serial_run(setup, real_subset_data) -> None:
    retriever, ids, _, _, _ = setup
    schema = retriever.schema
    rng = np.random.default_rng(9)
    photos = [real_subset_data.images[i] for i in real_subset_data.ids[10:14]]
    queries = []
    for n in range(40):
        a = int(rng.integers(len(schema.attributes)))
        change = {schema.names[a]: schema.attributes[a].values[int(rng.integers(schema.sizes[a]))]}
        queries.append((photos[n % 4] if n % 5 == 0 else ids[int(rng.integers(len(ids)))], change, bool(n % 2)))

    def run(query) -> list[tuple[str, float]]:
        q, change, exact = query
        return [(h.id, h.score) for h in retriever.search(q, change, k=10, exact=exact)]

    serial = [run(q) for q in queries]
    results: list[list] = [[] for _ in range(READERS)]
    errors: list[BaseException] = []

    def reader(slot: int) -> None:
        try:
            order = np.random.default_rng(slot).permutation(len(queries))
            got = {int(i): run(queries[int(i)]) for i in order}
            results[slot] = [got[i] for i in range(len(queries))]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, repr(errors[0]) if errors else ""
    assert all(r == serial for r in results)
