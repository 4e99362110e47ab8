"""python -m benchmarks.scale --json OUT: the scale-out paths on this machine, each against its
single-machine baseline measured in the same run.

1. Embedding: ``fashsdk embed`` single process vs the same job on a local Ray Data instance
   (``--ray``), interleaved over ``--repeats`` on the first ``--embed-shards`` image shards;
   images/s, Ray's ratio to the single process, Ray's start-up apart, and the largest
   difference between the two runs' embeddings (they must be the same model outputs).
2. Shards: Parquet write and read rates (rows/s, MB/s) on the whole catalog's shards.
3. Index backends on the whole catalog: the embedded hnswlib index vs Milvus Lite: load time
   from the shards, single-query p50/p99 of manipulated single-attribute queries (the query's
   own item left out), recall@10 against the exact scan, top-10 overlap between the two, bytes
   per item (in memory for the embedded index, on disk for Milvus Lite).

The whole catalog is embedded once into ``--work``/catalog-shards (kept: a re-run reuses it).

    python -m benchmarks.scale --bundle runs/demo/bundle --data ../shared/data/myntra-small \\
        --json benchmarks/results/scale-lite.json
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.search import percentiles, recall, timed
from fashsdk import Retriever
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.index import CatalogIndex
from fashsdk.system import machine
from fashsdk.tasks.shards import read_shards

K = 10


def embed_once(bundle: Path, labels: Path, sources: list[Path], out: Path, ray: bool) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    retriever = Retriever(bundle)
    start = time.perf_counter()
    run = retriever.embed_shards(labels, sources, out, ray=ray)
    return time.perf_counter() - start, run.items


def ray_start_seconds() -> float:
    """A local Ray instance's start and stop alone: the fixed cost inside every --ray run."""
    import ray

    from fashsdk.system import usable_cores

    start = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=usable_cores())
    ray.shutdown()
    return time.perf_counter() - start


def all_vectors(retriever: Retriever, directory: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    ids: list[str] = []
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for shard_ids, vectors, labels, predicted, _ in read_shards(directory, retriever.schema,
                                                                retriever.bundle.embedding_sha256(), retriever.bundle.dim):
        ids += shard_ids
        parts.append((vectors, labels, predicted))
    return ids, *(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def embedding(args: argparse.Namespace, sources: list[Path]) -> dict[str, Any]:
    single, ray = [], []
    images = 0
    for r in range(args.repeats):
        for name, runs in (("single", single), ("ray", ray)):
            seconds, images = embed_once(args.bundle, args.labels, sources, args.work / f"embed-{name}", name == "ray")
            runs.append(seconds)
            print(f"  embed {name} repeat {r + 1}: {images} images in {seconds:.1f} s", file=sys.stderr)
    retriever = Retriever(args.bundle)
    a_ids, a, _, _ = all_vectors(retriever, args.work / "embed-single")
    b_ids, b, _, _ = all_vectors(retriever, args.work / "embed-ray")
    order = {k: i for i, k in enumerate(b_ids)}
    cosine = np.einsum("ij,ij->i", a, b[[order[k] for k in a_ids]]) / (
        np.linalg.norm(a, axis=1) * np.linalg.norm(b[[order[k] for k in a_ids]], axis=1))
    start = ray_start_seconds()
    single_s, ray_s = statistics.median(single), statistics.median(ray)
    return {"images": images, "sources": [s.name for s in sources], "repeats": args.repeats,
            "single_s": [round(s, 2) for s in single], "ray_s": [round(s, 2) for s in ray],
            "single_images_per_s": round(images / single_s, 1), "ray_images_per_s": round(images / ray_s, 1),
            "ray_throughput_ratio": round(single_s / ray_s, 3), "ray_start_stop_s": round(start, 2),
            "ray_ratio_without_start": round(single_s / max(ray_s - start, 1e-9), 3),
            "same_ids": sorted(a_ids) == sorted(b_ids), "min_cosine_ray_vs_single": float(cosine.min())}


def shard_rates(directory: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    files = sorted(directory.glob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    reads, writes, rows = [], [], 0
    scratch.mkdir(parents=True, exist_ok=True)
    for _ in range(repeats):
        start = time.perf_counter()
        tables = [pq.read_table(f) for f in files]
        reads.append(time.perf_counter() - start)
        rows = sum(t.num_rows for t in tables)
        start = time.perf_counter()
        for n, table in enumerate(tables):
            pq.write_table(table, scratch / f"{n}.parquet")
        writes.append(time.perf_counter() - start)
    read_s, write_s = statistics.median(reads), statistics.median(writes)
    return {"shards": len(files), "rows": rows, "bytes": size, "read_rows_per_s": round(rows / read_s),
            "read_mb_per_s": round(size / 1e6 / read_s, 1), "write_rows_per_s": round(rows / write_s),
            "write_mb_per_s": round(size / 1e6 / write_s, 1)}


def backends(args: argparse.Namespace, shards: Path) -> dict[str, Any]:
    embedded = Retriever(args.bundle, threads=1)
    start = time.perf_counter()
    count = embedded.index_shards(shards)
    assert isinstance(embedded.index, CatalogIndex)
    embedded.index.optimize()
    embedded_load = time.perf_counter() - start
    lite = args.work / "milvus"
    shutil.rmtree(lite, ignore_errors=True)
    milvus = Retriever(args.bundle, f"milvus://{lite}/catalog.db", threads=1)
    start = time.perf_counter()
    milvus.index_shards(shards)
    milvus.save_index()
    milvus_load = time.perf_counter() - start
    ids, vectors, labels, predicted = all_vectors(embedded, shards)
    current = np.where(labels >= 0, labels, predicted)
    qs = manipulation_queries(labels, embedded.schema.sizes, max_queries=args.queries, seed=0)
    queries = embedded.family.change_batch(vectors[qs.rows], current[qs.rows], qs.attrs, qs.values)
    own = [ids[r] for r in qs.rows]
    scores = queries @ vectors.T
    scores[np.arange(len(qs)), qs.rows] = -np.inf
    exact = np.argsort(-scores, axis=1)[:, :K]
    row_of = {k: i for i, k in enumerate(ids)}
    out: dict[str, Any] = {"items": count, "queries": len(qs), "dim": int(vectors.shape[1])}
    found: dict[str, list[list[str]]] = {}
    for name, retriever, load in (("embedded_hnswlib", embedded, embedded_load), ("milvus_lite", milvus, milvus_load)):
        index = retriever.index
        assert index is not None

        def one(i: int) -> Any:
            return index.hits(queries[i:i + 1], K, exclude=[own[i]])

        count_timed = len(qs) if name == "embedded_hnswlib" else min(len(qs), args.milvus_queries)
        times = timed(one, count_timed, warmup=5)
        found[name] = [h.ids for h in index.hits(queries, K, exclude=own)]
        p50, p99 = percentiles(times)
        out[name] = {"load_s": round(load, 2), "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                     "timed_queries": count_timed,
                     "recall_at_10": round(recall([[row_of[k] for k in f] for f in found[name]], exact, K), 4)}
    out["embedded_hnswlib"]["bytes_per_item"] = round(sum(embedded.index.stats()["bytes"].values()) / count)
    out["milvus_lite"]["bytes_per_item_on_disk"] = round(sum(f.stat().st_size for f in lite.rglob("*") if f.is_file())
                                                         / count)
    out["top10_overlap_milvus_vs_hnswlib"] = round(float(np.mean(
        [len(set(a) & set(b)) / K for a, b in zip(found["milvus_lite"], found["embedded_hnswlib"])])), 4)
    milvus.index.close()  # type: ignore[union-attr]
    return out


def markdown(result: dict[str, Any]) -> str:
    m, e, s, b = result["machine"], result["embedding"], result["shards"], result["backends"]
    lines = [f"# Scale-out paths on one machine ({result['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} usable cores, flags "
             f"{', '.join(f for f, on in m['flags'].items() if on) or 'none of note'}; bundle `{result['bundle']}`.", "",
             f"## Embedding: single process vs local Ray Data ({e['images']} images, {e['repeats']} repeats, median)",
             "", "| path | images/s | runs (s) |", "| --- | --- | --- |",
             f"| single process | {e['single_images_per_s']} | {e['single_s']} |",
             f"| Ray Data, local | {e['ray_images_per_s']} | {e['ray_s']} |", "",
             f"Ray / single throughput: **{e['ray_throughput_ratio']}** (target >= 0.85); Ray's start and stop alone "
             f"take {e['ray_start_stop_s']} s (ratio without it: {e['ray_ratio_without_start']}). Same ids: "
             f"{e['same_ids']}; smallest cosine between the two runs' embeddings: {e['min_cosine_ray_vs_single']:.6f}.",
             "", f"## Parquet shards ({s['shards']} shards, {s['rows']} rows, {s['bytes'] / 1e6:.1f} MB)", "",
             f"Read {s['read_rows_per_s']} rows/s ({s['read_mb_per_s']} MB/s); write {s['write_rows_per_s']} rows/s "
             f"({s['write_mb_per_s']} MB/s).", "",
             f"## Index backends ({b['items']} items, {b['dim']}-d, {b['queries']} manipulated queries, k=10, one "
             "query at a time)", "", "| backend | load from shards (s) | p50 ms | p99 ms | recall@10 | bytes/item |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, size_key in (("embedded_hnswlib", "bytes_per_item"), ("milvus_lite", "bytes_per_item_on_disk")):
        row = b[name]
        lines.append(f"| {name} | {row['load_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['recall_at_10']} | "
                     f"{row[size_key]} ({'memory' if name == 'embedded_hnswlib' else 'disk'}) |")
    lines += ["", f"Top-10 overlap, Milvus Lite vs hnswlib: **{b['top10_overlap_milvus_vs_hnswlib']}** "
              "(target >= 0.95). Milvus latency is over the first "
              f"{b['milvus_lite']['timed_queries']} queries."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path("../shared/data/myntra-small"))
    p.add_argument("--work", type=Path, default=Path("runs/scale"), help="scratch folder (catalog shards kept)")
    p.add_argument("--embed-shards", type=int, default=1, help="image shards in the single-vs-Ray comparison")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--milvus-queries", type=int, default=300, help="queries timed one at a time on Milvus Lite")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    args.labels = args.data / "styles.csv"
    sources = sorted(args.data.glob("images-*.tar"))
    if not sources:
        p.error(f"no images-*.tar shards in {args.data}")
    print("embedding: single process vs Ray", file=sys.stderr)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "bundle": str(args.bundle),
                              "embedding": embedding(args, sources[:args.embed_shards])}
    catalog = args.work / "catalog-shards"
    print("embedding the whole catalog (reused when present)", file=sys.stderr)
    run = Retriever(args.bundle).embed_shards(args.labels, sources, catalog)
    result["catalog_embed"] = run.to_json() | {"undecodable": run.to_json()["undecodable_count"]}
    result["shards"] = shard_rates(catalog, args.work / "rewrite", args.repeats)
    print("index backends", file=sys.stderr)
    result["backends"] = backends(args, catalog)
    atomic_write_json(args.json, result)
    atomic_write_bytes(args.json.with_suffix(".md"), markdown(result).encode())
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
