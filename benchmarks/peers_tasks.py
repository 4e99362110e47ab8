"""python -m benchmarks.peers_tasks --json OUT: ``similar`` and ``where`` against other vector search
libraries, at equal recall, on a trained bundle's embeddings (the manipulation search is
benchmarks.peers).

- similar (conditional similarity): each attribute's chunk of the vectors, re-normalised, is its
  own space. fashsdk's subspace graphs (``CatalogIndex.hits(..., attribute=a)``, beam swept;
  "auto" is the beam each graph's build measured) against hnswlib, faiss HNSW and usearch
  graphs built on the same chunks, one per attribute. Queries are real catalog items (query i asks about attribute i mod A), the
  item itself left out; recall@10 against the exact chunk scan.
- where (filtered search): manipulated queries with a filter on one attribute value selecting
  about 10%, then about 1%, of the gallery. fashsdk's per-value graphs (``search(..., where=)``,
  candidates swept; "auto" is its default) against hnswlib's filter callback and faiss HNSW
  with an ``IDSelectorBitmap``, both over the whole gallery; recall@10 against the exact filtered
  scan. usearch's Python search takes no filter, so it is not in this table.

Galleries are the real catalog grown with the kernel model (benchmarks.galleries), as in
benchmarks.peers; one query thread, k=10, p50 over interleaved rounds. Writes OUT (JSON), OUT
with .md and OUT with .png (the curves).

    pip install '.[peers]'
    python -m benchmarks.peers_tasks --sizes 44441,100000 --json benchmarks/results/peers-tasks.json
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # single-thread queries; set before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.peers import (K, Nearest, Search, common_arguments, drop, fashsdk_index, fashsdk_rows,  # noqa: E402
                              markdown, peer_searchers, plot, sweep, usable_threads, workload)
from benchmarks.search import gallery  # noqa: E402
from fashsdk.eval.protocol import manipulation_queries  # noqa: E402
from fashsdk.files import atomic_write_bytes, atomic_write_json  # noqa: E402
from fashsdk.index import CatalogIndex  # noqa: E402
from fashsdk.index.subspaces import chunks  # noqa: E402
from fashsdk.system import machine  # noqa: E402

Built = dict[str, tuple[float, list[Any], Callable[[Any], Search]]]


def grown(work: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    parts = list(gallery(work, n, seed=n))
    return (np.ascontiguousarray(np.concatenate([p[0] for p in parts]), np.float32),
            np.concatenate([p[1] for p in parts]))


def best_rows(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` highest scores, best first."""
    top = np.argpartition(-scores, count)[:count] if count < len(scores) else np.arange(len(scores))
    return top[np.argsort(-scores[top], kind="stable")]


def exact_rows(scores: np.ndarray, own: int) -> list[int]:
    return drop(best_rows(scores, K + 1), own)


def similar_size(work: Any, n: int, args: argparse.Namespace, wanted: set[str]) -> list[dict[str, Any]]:
    print(f"== similar, n={n}", flush=True)
    vectors, codes = grown(work, n)
    layout, names = work.chunks, work.schema.names
    rng = np.random.default_rng(n)
    own = rng.choice(min(n, len(work.base_vectors)), args.queries, replace=False)
    attribute = np.arange(args.queries) % len(layout)
    spaces = [chunks(vectors, span) for span in layout]
    queries = [spaces[a][r] for a, r in zip(attribute, own)]
    exact = np.array([exact_rows(spaces[a] @ q, r) for a, q, r in zip(attribute, queries, own)])
    index, seconds = fashsdk_index(vectors, codes, layout, usable_threads())
    start = time.perf_counter()
    index.prepare_similar(range(len(layout)))
    seconds += time.perf_counter() - start
    keys = [f"r{r}" for r in own]
    walks = {a: graph.walk for a, graph in index.subspaces.graphs.items()}
    measured = {a: graph.beam for a, graph in index.subspaces.graphs.items()}  # what each graph's build chose
    auto = f"auto ({'/'.join(str(measured[a]) for a in sorted(measured))})"

    def fashsdk(beam: int | str, native: bool = True) -> Search:
        for a, graph in index.subspaces.graphs.items():
            graph.set_beam(measured[a] if isinstance(beam, str) else beam)
            graph.walk = walks[a] if native else None  # the same graphs, walked by hnswlib instead
        return Search(lambda i: index.search(queries[i][None], K, exclude=[keys[i]], attribute=int(attribute[i])),
                      fashsdk_rows)
    built: Built = {"fashsdk": (seconds, [auto, 16, 24, 32, 48, 64, 96], fashsdk)}
    if any(w is not None for w in walks.values()):
        built["fashsdk, hnswlib walk"] = (seconds, [16, 24, 32, 48, 64, 96], lambda b: fashsdk(b, native=False))
    per_attribute = [peer_searchers(space, wanted, usable_threads()) for space in spaces]
    for name in per_attribute[0]:
        total = sum(p[name][0] for p in per_attribute)

        def peer(setting: int, name: str = name) -> Search:
            nearest: list[Nearest] = [p[name][2](setting) for p in per_attribute]
            return Search(lambda i: nearest[attribute[i]](queries[i], K + 1), lambda found, i: drop(found, own[i]))
        built[name] = (total, per_attribute[0][name][1], peer)
    rows = sweep(n, built, exact, args)
    rows.append(scan_row(n, lambda i: spaces[attribute[i]] @ queries[i], args))
    print(f"   attributes: {names}", flush=True)
    return rows


def pick_value(codes: np.ndarray, share: float) -> tuple[int, int, float]:
    """(attribute, value, selected share) closest to ``share`` of the gallery."""
    best = (0, 0, -1.0)
    for a in range(codes.shape[1]):
        values, counts = np.unique(codes[:, a][codes[:, a] >= 0], return_counts=True)
        for v, c in zip(values, counts):
            if abs(c / len(codes) - share) < abs(best[2] - share):
                best = (a, int(v), float(c / len(codes)))
    return best


def where_size(work: Any, n: int, args: argparse.Namespace, wanted: set[str]) -> list[dict[str, Any]]:
    vectors, codes = grown(work, n)
    take = min(n, len(work.base_vectors))
    qs = manipulation_queries(work.base_codes[:take], work.schema.sizes, max_queries=args.queries, seed=0)
    queries = np.ascontiguousarray(work.queries(qs, take), np.float32)
    own = qs.rows.astype(np.int64)
    index, seconds = fashsdk_index(vectors, codes, work.chunks, usable_threads())
    peers = peer_searchers(vectors, wanted & {"faiss"}, usable_threads())
    rows = []
    for share in (0.10, 0.01):
        a, v, got = pick_value(codes, share)
        label = f"where {work.schema.names[a]} = {work.schema.attributes[a].values[v]} ({100 * got:.1f}%)"
        print(f"== {label}, n={n}", flush=True)
        allowed = codes[:, a] == v
        selected = np.flatnonzero(allowed)
        exact = np.array([drop(selected[best_rows(vectors[selected] @ q, K + 1)], r) for q, r in zip(queries, own)])
        start = time.perf_counter()
        index.prepare_filters([a])
        built: Built = {"fashsdk": (seconds + time.perf_counter() - start, ["auto", 32, 48, 64, 96, 128],
                                    fashsdk_where(index, queries, own, {a: frozenset([v])}))}
        built.update(filtered_peers(peers, allowed, queries, own))
        part = sweep(n, built, exact, args)
        part.append(scan_row(n, lambda i: vectors[selected] @ queries[i], args))
        rows += [{**row, "task": label} for row in part]
    return rows


def fashsdk_where(index: CatalogIndex, queries: np.ndarray, own: np.ndarray,
                  where: dict[int, frozenset[int]]) -> Callable[[Any], Search]:
    keys = [f"r{r}" for r in own]

    def make(candidates: Any) -> Search:
        index.ef_search = None if candidates == "auto" else int(candidates)
        return Search(lambda i: index.search(queries[i], K, exclude=[keys[i]], where=where), fashsdk_rows)
    return make


def filtered_peers(peers: dict[str, Any], allowed: np.ndarray, queries: np.ndarray, own: np.ndarray) -> Built:
    """hnswlib with its filter callback; faiss HNSW with a bitmap selector; both over every item."""
    out: Built = {}
    seconds, settings, _, hnsw = peers["hnswlib"]
    keep = allowed.tolist()

    def callback(ef: int) -> Search:
        hnsw.set_ef(ef)
        return Search(lambda i: hnsw.knn_query(queries[i], k=K + 1, num_threads=1, filter=keep.__getitem__),
                      lambda found, i: drop(found[0][0], own[i]))
    out["hnswlib filter callback"] = (seconds, [16, 48, 128], callback)  # a Python call per visited node: slow
    if "faiss HNSWFlat" in peers:
        import faiss

        seconds, settings, _, flat = peers["faiss HNSWFlat"]
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))

        def bitmap(ef: int, bits: np.ndarray = bits) -> Search:  # bits: the selector reads this memory
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
            return Search(lambda i: flat.search(queries[i:i + 1], K + 1, params=params),
                          lambda found, i: drop(found[1][0], own[i]))
        out["faiss HNSWFlat bitmap"] = (seconds, settings, bitmap)
    return out


def scan_row(n: int, scores: Callable[[int], np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.search import timed

    times = timed(lambda i: np.argpartition(-scores(i % args.queries), K)[:K + 1], min(200, args.latency_queries),
                  warmup=3)
    return {"n": n, "method": "exact numpy scan", "setting": None, "build_s": 0.0, "build_items_per_s": None,
            "recall_at_10": 1.0, "p50_ms": round(1000 * float(np.median(times)), 4)}


def main(argv: list[str] | None = None) -> int:
    p = common_arguments(__doc__)
    p.add_argument("--tasks", nargs="+", default=["similar", "where"], choices=["similar", "where"])
    args = p.parse_args(argv)
    start = time.perf_counter()
    work, shape = workload(args)
    wanted = set(args.methods)
    for task in args.tasks:
        rows = []
        for n in [int(s) for s in args.sizes.split(",") if s]:
            rows += similar_size(work, n, args, wanted) if task == "similar" else where_size(work, n, args, wanted)
        groups = sorted({r.get("task", task) for r in rows})
        for group in groups:
            result = {"machine": machine(), "bundle": str(args.bundle), "index": str(args.index), "embedding": shape,
                      "task": group, "queries": args.queries, "rounds": args.rounds,
                      "recall_targets": [float(t) for t in args.recall_targets.split(",") if t],
                      "rows": [r for r in rows if r.get("task", task) == group],
                      "wall_s": round(time.perf_counter() - start, 1)}
            slug = group.split(" (")[0].replace(" = ", "-").replace(" ", "-").lower()
            out = args.json.with_name(f"{args.json.stem}-{slug}.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out, result)
            atomic_write_bytes(out.with_suffix(".md"), markdown(result).encode())
            plot(result, out.with_suffix(".png"))
            print(f"wrote {out} and its .md/.png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
