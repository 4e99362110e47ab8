"""python -m benchmarks.peers --json OUT: fashsdk's index against other vector search libraries,
at equal recall, on a trained bundle's embeddings.

The same galleries (the real catalog embedded by ``--bundle``, grown to larger sizes with the
kernel model of benchmarks.galleries), the same manipulated single-attribute queries (ADDE
over the bundle's prototypes; the query's own item left out of its results), one query thread,
k=10. Each method is swept over its search-time setting, so the result is a recall-vs-latency
curve per method rather than one point:

- fashsdk ``CatalogIndex`` (its defaults: "auto" is the candidate count its build calibrated;
  then candidates per query swept), and the same index walked by hnswlib instead of its native
  walk (what the native walk adds),
- hnswlib (M=16, ef_construction=150; ef swept),
- faiss ``IndexHNSWFlat`` (M=16, efConstruction=150; efSearch swept), when faiss-cpu is installed,
- usearch (connectivity 16, expansion_add 150; f32, f16 and i8 storage; expansion_search swept),
  when usearch is installed,
- the exact numpy scan (recall's ground truth).

Latency is per query (p50 over the median of interleaved rounds: on a shared VM a noisy period
hits every method alike) and times the library call alone: turning its result into gallery rows
(fashsdk's string ids, the peers' label arrays, the own row the peers return) is left untimed for
every method; fashsdk leaves the own item out inside its call. Recall@10 is against the exact scan over all queries. The embedding's
shape is reported beside it (each attribute chunk's share of the squared norm, the cosine of
random pairs), because a collapsed embedding is easy for any graph. Writes OUT (JSON), OUT with
.md, and OUT with .png (the curves).

    pip install '.[peers]'   # faiss-cpu and usearch; without them only fashsdk, hnswlib and exact run
    python -m benchmarks.peers --bundle runs/demo/bundle --index runs/catalog-index \\
        --sizes 44441,100000 --json benchmarks/results/peers-lite.json
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # single-thread queries; set before numpy loads
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, NamedTuple  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.search import demo_workload, exact_topk_merge, gallery, recall, timed  # noqa: E402
from fashsdk.eval.protocol import manipulation_queries  # noqa: E402
from fashsdk.files import atomic_write_bytes, atomic_write_json  # noqa: E402
from fashsdk.index import CatalogIndex  # noqa: E402
from fashsdk.system import machine  # noqa: E402

K = 10
M, EF_CONSTRUCTION = 16, 150


class Search(NamedTuple):
    """One method at one setting. ``call(i)`` is the library call for query i, the only part timed;
    ``rows(result, i)`` turns its result into gallery rows without the query's own row, for recall
    only (converting ids or dropping a row is the benchmark's work, not the library's)."""

    call: Callable[[int], Any]
    rows: Callable[[Any, int], list[int]]


def fashsdk_rows(result: Any, i: int) -> list[int]:
    """Rows of a ``CatalogIndex.search`` result over ids "r<row>" (it drops the own row itself)."""
    return [int(x[1:]) for x in result[0][0]]


def embedding_shape(vectors: np.ndarray, chunks: list[tuple[int, int]], names: list[str],
                    seed: int = 0) -> dict[str, Any]:
    """Each chunk's share of the squared norm and the cosine of random pairs."""
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), min(5000, len(vectors)), replace=False)]
    total = np.einsum("ij,ij->i", sample, sample)
    shares = {name: round(float(np.mean(np.einsum("ij,ij->i", sample[:, a:b], sample[:, a:b]) / total)), 3)
              for name, (a, b) in zip(names, chunks)}
    left, right = rng.integers(0, len(vectors), 2000), rng.integers(0, len(vectors), 2000)
    cosines = np.einsum("ij,ij->i", vectors[left], vectors[right])
    return {"chunk_share_of_squared_norm": shares, "random_pair_cosine_mean": round(float(cosines.mean()), 3)}


def drop(rows: Any, own: int) -> list[int]:
    return [int(r) for r in rows if r != own][:K]


def methods(vectors: np.ndarray, ids: list[str], codes: np.ndarray, queries: np.ndarray, own: np.ndarray,
            wanted: set[str], threads: int) -> dict[str, tuple[float, list[Any], Callable[[Any], Search]]]:
    """name -> (build seconds, the settings swept, setting -> one-query search)."""
    out: dict[str, tuple[float, list[Any], Callable[[Any], Search]]] = {}

    index, built = fashsdk_index(vectors, codes, None, threads)
    keys = [ids[r] for r in own]

    ours = index.graph
    calibrated, walk = (ours.calibrated, ours.walk) if ours is not None else (None, None)

    def fashsdk(candidates: int | str, native: bool = True) -> Search:
        if ours is not None:
            ours.walk = walk if native else None  # the same graph, walked by hnswlib instead of walk.c
        index.ef_search = None if isinstance(candidates, str) else candidates  # "auto": the calibrated count
        return Search(lambda i: index.search(queries[i], K, exclude=[keys[i]]), fashsdk_rows)
    out["fashsdk"] = (built, [f"auto ({calibrated})", *SETTINGS[:5], 80, *SETTINGS[5:]], fashsdk)
    if walk is not None:
        out["fashsdk, hnswlib walk"] = (built, SETTINGS[2:], lambda c: fashsdk(c, native=False))

    for name, (seconds, settings, make, _) in peer_searchers(vectors, wanted, threads).items():
        def bound(setting: Any, make: Callable[[Any], Nearest] = make) -> Search:
            nearest = make(setting)
            return Search(lambda i: nearest(queries[i], K + 1), lambda found, i: drop(found, own[i]))
        out[name] = (seconds, settings, bound)
    return out


def fashsdk_index(vectors: np.ndarray, codes: np.ndarray, layout: list[tuple[int, int]] | None,
                  threads: int) -> tuple[CatalogIndex, float]:
    """fashsdk's index over the gallery (ids "r<row>"), built as the CLI builds one (add, then
    optimize), and the seconds that took."""
    index = CatalogIndex(vectors.shape[1], codes.shape[1], layout=layout, threads=threads)
    start = time.perf_counter()
    index.add([f"r{i}" for i in range(len(vectors))], vectors, codes)
    index.optimize()
    return index, time.perf_counter() - start


Nearest = Callable[[np.ndarray, int], Any]  # (query (D,), k) -> result rows, best first
SETTINGS = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]  # up to where every method reaches recall@10 0.98 at 1M


def peer_searchers(vectors: np.ndarray, wanted: set[str], threads: int
                   ) -> dict[str, tuple[float, list[int], Callable[[int], Nearest], Any]]:
    """The peers built over ``vectors`` (rows are their labels): name -> (build seconds, the
    settings swept, setting -> one-query search, the library's index object). hnswlib always;
    faiss and usearch when asked for and installed (a note says which were skipped)."""
    n, dim = vectors.shape
    out: dict[str, tuple[float, list[int], Callable[[int], Nearest], Any]] = {}
    import hnswlib

    graph = hnswlib.Index(space="ip", dim=dim)
    graph.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
    start = time.perf_counter()
    graph.add_items(vectors, np.arange(n), num_threads=threads)
    built = time.perf_counter() - start

    def plain(ef: int) -> Nearest:
        graph.set_ef(ef)
        return lambda q, k: graph.knn_query(q, k=k, num_threads=1)[0][0]
    out["hnswlib"] = (built, SETTINGS, plain, graph)

    if "faiss" in wanted:
        try:
            import faiss
        except ImportError:
            print("   faiss-cpu is not installed: pip install faiss-cpu (skipped)", flush=True)
        else:
            faiss.omp_set_num_threads(threads)
            flat = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
            flat.hnsw.efConstruction = EF_CONSTRUCTION
            start = time.perf_counter()
            flat.add(vectors)
            built = time.perf_counter() - start
            faiss.omp_set_num_threads(1)

            def hnsw_flat(ef: int) -> Nearest:
                flat.hnsw.efSearch = ef
                return lambda q, k: flat.search(q[None], k)[1][0]
            out["faiss HNSWFlat"] = (built, SETTINGS, hnsw_flat, flat)

    if "usearch" in wanted:
        try:
            from usearch.index import Index as USearchIndex
        except ImportError:
            print("   usearch is not installed: pip install usearch (skipped)", flush=True)
        else:
            for dtype in ("f32", "f16", "i8"):
                store = USearchIndex(ndim=dim, metric="ip", dtype=dtype, connectivity=M,
                                     expansion_add=EF_CONSTRUCTION)
                start = time.perf_counter()
                store.add(np.arange(n), vectors, threads=threads)
                built = time.perf_counter() - start

                def searcher(expansion: int, store: Any = store) -> Nearest:
                    store.expansion_search = expansion
                    return lambda q, k: store.search(q, k, threads=1).keys
                out[f"usearch {dtype}"] = (built, SETTINGS, searcher, store)
    return out


def measure(searcher: Search, count: int, exact: np.ndarray, rounds: list[list[float]], with_recall: bool) -> float:
    """One round of ``count`` timed calls into ``rounds``; with ``with_recall``, also recall@10 over
    every query (else NaN)."""
    found = [searcher.rows(searcher.call(i), i) for i in range(len(exact))] if with_recall else None
    call = searcher.call
    rounds.append(timed(lambda i: call(i % len(exact)), count, warmup=0))
    return recall(found, exact, K) if found is not None else float("nan")


def run_size(work: Any, n: int, args: argparse.Namespace, wanted: set[str]) -> list[dict[str, Any]]:
    print(f"== n={n}", flush=True)
    take = min(n, len(work.base_vectors))
    qs = manipulation_queries(work.base_codes[:take], work.schema.sizes, max_queries=args.queries, seed=0)
    queries = np.ascontiguousarray(work.queries(qs, take), np.float32)
    own = qs.rows.astype(np.int64)
    parts, codes, best, offset = [], [], None, 0
    for vectors, chunk_codes in gallery(work, n, seed=n):
        parts.append(vectors)
        codes.append(chunk_codes)
        best = exact_topk_merge(best, queries, vectors, offset, K + 1)
        offset += len(vectors)
    vectors, all_codes = np.ascontiguousarray(np.concatenate(parts), np.float32), np.concatenate(codes)
    order = np.argsort(-best[1], axis=1, kind="stable")
    exact = np.array([drop(row, q) for row, q in zip(np.take_along_axis(best[0], order, 1), own)])
    ids = [f"r{i}" for i in range(n)]
    built = methods(vectors, ids, all_codes, queries, own, wanted, usable_threads())
    rows = sweep(n, built, exact, args)

    def scan(i: int) -> None:
        sims = vectors @ queries[i % len(queries)]
        np.argpartition(-sims, K)[:K + 1]
    times = timed(scan, min(200, args.latency_queries), warmup=3)
    rows.append({"n": n, "method": "exact numpy scan", "setting": None, "build_s": 0.0, "build_items_per_s": None,
                 "recall_at_10": 1.0, "p50_ms": round(1000 * float(np.median(times)), 4)})
    return rows


def usable_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def sweep(n: int, built: dict[str, tuple[float, list[Any], Callable[[Any], Search]]], exact: np.ndarray,
          args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every setting of every method: recall@10 against ``exact`` (Q, 10) and p50 over interleaved rounds."""
    per_round = max(1, args.latency_queries // args.rounds)
    samples: dict[tuple[str, Any], list[list[float]]] = {}
    recalls: dict[tuple[str, Any], float] = {}
    for r in range(args.rounds):  # every setting of every method once per round
        for name, (_, settings, make) in built.items():
            for setting in settings:
                rounds = samples.setdefault((name, setting), [])
                measured = measure(make(setting), per_round, exact, rounds, with_recall=r == 0)
                if r == 0:
                    recalls[(name, setting)] = measured
    rows = []
    for (name, setting), rounds in samples.items():
        medians = [1000 * float(np.median(r)) for r in rounds]
        rows.append({"n": n, "method": name, "setting": setting, "build_s": round(built[name][0], 2),
                     "build_items_per_s": round(n / built[name][0]), "recall_at_10": round(recalls[(name, setting)], 4),
                     "p50_ms": round(float(np.median(medians)), 4), "p50_rounds_ms": [round(m, 4) for m in medians]})
        print(f"   {name} {setting}: p50 {rows[-1]['p50_ms']} ms, recall@10 {rows[-1]['recall_at_10']}", flush=True)
    return rows


def fastest_at(rows: list[dict[str, Any]], recall: float) -> dict[tuple[int, str], float | None]:
    """(n, method) -> the lowest p50 among its settings reaching ``recall``, None if none does."""
    out: dict[tuple[int, str], float | None] = {}
    for row in rows:
        key = (row["n"], row["method"])
        if row["recall_at_10"] >= recall and (out.get(key) is None or row["p50_ms"] < out[key]):  # type: ignore[operator]
            out[key] = row["p50_ms"]
        else:
            out.setdefault(key, None)
    return out


def markdown(result: dict[str, Any]) -> str:
    m, shape = result["machine"], result["embedding"]
    task = result.get("task", "manipulated single-attribute queries")
    lines = [f"# Vector search peers on {result['bundle']} embeddings: {task}", "",
             f"Machine: {m['cpu']}, {m['cores']} usable cores. One query thread, k=10, {result['queries']} "
             f"queries, the query's own item left out; p50 is the median of "
             f"{result['rounds']} interleaved rounds' medians.",
             f"Embedding: chunk shares of the squared norm {shape['chunk_share_of_squared_norm']}, random-pair "
             f"cosine {shape['random_pair_cosine_mean']}.", ""]
    for target in result["recall_targets"]:
        best = fastest_at(result["rows"], target)
        sizes = sorted({n for n, _ in best})
        names = sorted({name for _, name in best})
        lines += [f"Fastest p50 (ms) at recall@10 >= {target}:", "",
                  "| method | " + " | ".join(f"{n:,} items" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for name in names:
            cells = [best.get((n, name)) for n in sizes]
            lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.3f}" for c in cells) + " |")
        lines.append("")
    lines += ["Every setting:", "", "| items | method | setting | build items/s | recall@10 | p50 ms |",
              "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['n']:,} | {row['method']} | {row['setting'] if row['setting'] is not None else '-'} | "
                     f"{row['build_items_per_s'] or '-'} | {row['recall_at_10']} | {row['p50_ms']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({r["n"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for name in sorted({r["method"] for r in result["rows"] if r["n"] == n and r["setting"] is not None}):
            points = sorted((r["recall_at_10"], r["p50_ms"]) for r in result["rows"] if r["n"] == n
                            and r["method"] == name)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_title(f"{n:,} items")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("p50 ms per query (one thread)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def common_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options benchmarks.peers and benchmarks.peers_tasks share."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    p.add_argument("--index", type=Path, default=Path("runs/catalog-index"), help="an index of the catalog "
                   "built with the bundle (fashsdk index ... --out)")
    p.add_argument("--sizes", default="44441,100000", help="gallery sizes, comma-separated")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall")
    p.add_argument("--latency-queries", type=int, default=1500, help="timed calls per setting, over all rounds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["faiss", "usearch"], choices=["faiss", "usearch"],
                   help="peers beside fashsdk, hnswlib and the exact scan")
    p.add_argument("--recall-targets", default="0.95,0.98")
    p.add_argument("--json", type=Path, required=True)
    return p


def workload(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The bundle's catalog embeddings and their shape; a clear exit when an input is missing."""
    for path, what in ((args.bundle, "bundle"), (args.index, "index")):
        if not path.is_dir():
            raise SystemExit(f"{what} {path} not found: pass --{what} (make demo builds runs/demo/bundle; "
                             "fashsdk index --bundle ... --out runs/catalog-index builds the index)")
    work = demo_workload(args.bundle, args.index, "float32")
    shape = embedding_shape(work.base_vectors, work.chunks, work.schema.names)
    print(f"embedding: {shape}", flush=True)
    return work, shape


def main(argv: list[str] | None = None) -> int:
    args = common_arguments(__doc__).parse_args(argv)
    start = time.perf_counter()
    work, shape = workload(args)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        rows += run_size(work, n, args, set(args.methods))
    result = {"machine": machine(), "bundle": str(args.bundle), "index": str(args.index), "embedding": shape,
              "queries": args.queries, "rounds": args.rounds,
              "recall_targets": [float(t) for t in args.recall_targets.split(",") if t], "rows": rows,
              "wall_s": round(time.perf_counter() - start, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    atomic_write_bytes(args.json.with_suffix(".md"), markdown(result).encode())
    drawn = plot(result, args.json.with_suffix(".png"))
    print(f"wrote {args.json}, {args.json.with_suffix('.md')}" + (f", {args.json.with_suffix('.png')}" if drawn
                                                                    else " (matplotlib absent: no curves)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
