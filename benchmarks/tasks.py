"""python -m benchmarks.tasks --bundle B --index CATALOG --json OUT: the tasks beyond one search.

Measured on one query thread, k=10, with their baselines in the same run:
- ``similar`` (conditional similarity) on the real catalog: p50 per attribute through the
  subspace graphs, recall@10 against the exact subspace scan, the exact scan's own p50;
- ``search`` by id with one change (the SDK call), as the reference the others are read against;
- ``search_batch`` of N queries against N single ``search`` calls: throughput ratio;
- ``where`` filters on a larger catalog (the real items grown with the kernel model of
  benchmarks.galleries, labels carried): a filter selecting about 10% and one selecting about
  0.1%, fashsdk's per-value graphs against an exact filtered scan (recall's ground truth),
  hnswlib's own filter callback and over-fetching from the full graph.
CATALOG is an index of the whole catalog built with B (``fashsdk index ... --out CATALOG``);
it is built first when absent. Writes OUT (JSON) and OUT with .md beside it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.galleries import KernelModel
from benchmarks.search import interleaved_latency
from export.catalog_args import add_data_args, data_paths
from fashsdk import CatalogIndex, Retriever
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.index.calibration import similar_beam
from fashsdk.index.subspaces import SIMILAR_BEAM
from fashsdk.progress import progress_bar
from fashsdk.sources.catalog import read_catalog
from fashsdk.sources.images import iter_images
from fashsdk.system import machine

K = 10


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def catalog_retriever(args: argparse.Namespace) -> Retriever:
    if (args.index / "index.json").is_file():
        return Retriever(args.bundle, args.index)
    retriever = Retriever(args.bundle)
    labels_path, images = data_paths(args)
    catalog, _ = read_catalog(labels_path, retriever.schema.names, schema=retriever.schema)
    bar, update = progress_bar(len(catalog), "index the whole catalog")
    retriever.add(iter_images(images, catalog.ids), {i: retriever.schema.decode(c) for i, c in zip(catalog.ids, catalog.codes)},
                  progress=update, skip_errors=True)
    bar.close()
    retriever.index.optimize()  # type: ignore[union-attr]
    retriever.index.prepare_similar(range(len(retriever.schema.attributes)))  # type: ignore[union-attr]
    retriever.save_index(args.index)
    return retriever


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, min(K, len(t))) for f, t in zip(found, truth)]))


def similar_rows(retriever: Retriever, ids: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per attribute: similar() with the beam the index measures for it (calibration.similar_beam)
    and, interleaved in the same run, with the fixed beam of 48 used before, and the exact scan."""
    index = retriever.index
    assert index is not None
    index.prepare_similar(range(len(retriever.schema.attributes)))
    rows = []
    for a, name in enumerate(retriever.schema.names):
        graph = index.subspaces.graphs.get(a)
        with index.lock.write():  # an index saved before similar was calibrated loads with the fixed beam
            chosen = similar_beam(index, a) if graph is not None else None

        def set_beam(beam: int | None, graph: Any = graph, chosen: int | None = chosen) -> None:
            if graph is not None:
                with index.lock.write():
                    graph.set_beam(beam or chosen)

        truth = [[r.id for r in retriever.similar(q, name, k=K, exact=True)] for q in ids[:args.recall_queries]]
        found = {}
        for beam in (None, SIMILAR_BEAM):
            set_beam(beam)
            found[beam] = [[r.id for r in retriever.similar(q, name, k=K)] for q in ids[:args.recall_queries]]
        latency = interleaved_latency({
            "graph": (None, lambda i, n=name: retriever.similar(ids[i % len(ids)], n, k=K)),
            "fixed": (SIMILAR_BEAM, lambda i, n=name: retriever.similar(ids[i % len(ids)], n, k=K)),
            "exact": (None, lambda i, n=name: retriever.similar(ids[i % len(ids)], n, k=K, exact=True)),
        }, args.latency_queries, args.rounds, set_beam)
        rows.append({"attribute": name, "subspace_dim": int(np.diff(retriever.bundle.layout[name])[0]),
                     "beam": chosen, "p50_ms": latency["graph"]["p50_ms"], "p99_ms": latency["graph"]["p99_ms"],
                     "p50_rounds_ms": latency["graph"]["p50_rounds_ms"], "recall_at_10": recall(found[None], truth),
                     "fixed_beam": SIMILAR_BEAM, "fixed_p50_ms": latency["fixed"]["p50_ms"],
                     "fixed_recall_at_10": recall(found[SIMILAR_BEAM], truth),
                     "exact_p50_ms": latency["exact"]["p50_ms"]})
        log(f"   similar {name}: {rows[-1]}")
    return rows


def batch_rows(retriever: Retriever, ids: list[str], changes: list[dict[str, str]], repeats: int) -> dict[str, Any]:
    singles, batches = [], []
    retriever.search_batch(ids[:50], changes[:50], k=K)  # warm-up
    for _ in range(repeats):  # interleaved, so a noisy period hits both alike
        t = time.perf_counter()
        for q, c in zip(ids, changes):
            retriever.search(q, c, k=K)
        singles.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch = retriever.search_batch(ids, changes, k=K)
        batches.append(time.perf_counter() - t)
    same = np.mean([[r.id for r in b] == [r.id for r in retriever.search(q, c, k=K)]
                    for q, c, b in list(zip(ids, changes, batch))[:200]])
    single_s, batch_s = float(np.median(singles)), float(np.median(batches))
    return {"queries": len(ids), "repeats": repeats, "single_calls_s": single_s, "batch_s": batch_s,
            "single_qps": len(ids) / single_s, "batch_qps": len(ids) / batch_s, "throughput_ratio": single_s / batch_s,
            "identical_results_share": float(same)}


def pick_filters(codes: np.ndarray, names: list[str], values: list[tuple[str, ...]], shares: tuple[float, ...]) -> list[dict]:
    """For each wanted share, the one- or two-attribute filter whose selection is closest to it."""
    n = len(codes)
    candidates = []
    for a in range(codes.shape[1]):
        for v in range(len(values[a])):
            candidates.append(({a: v}, float((codes[:, a] == v).mean())))
            for b in range(a + 1, codes.shape[1]):
                for w in range(len(values[b])):
                    share = float(((codes[:, a] == v) & (codes[:, b] == w)).sum() / n)
                    if share > 0:
                        candidates.append(({a: v, b: w}, share))
    out = []
    for wanted in shares:
        best, share = min(candidates, key=lambda c: abs(np.log(c[1] / wanted)))
        out.append({"where": {names[a]: values[a][v] for a, v in best.items()}, "codes": best, "share": share,
                    "target_share": wanted})
    return out


def filter_rows(retriever: Retriever, args: argparse.Namespace) -> dict[str, Any]:

    base = retriever.index
    assert base is not None
    ids, vectors, codes = base.vectors_and_codes()
    predicted = base.get_many(ids)[2]
    current = np.where(codes >= 0, codes, predicted)
    model = KernelModel.fit(vectors, current)  # synthetic items carry their source item's current values
    extra = max(0, args.filter_items - len(ids))
    synthetic, synthetic_codes = model.sample(extra, np.random.default_rng(5))
    all_vectors = np.concatenate([vectors, synthetic]).astype(np.float32)
    all_codes = np.concatenate([current, synthetic_codes]).astype(np.int16)
    index = CatalogIndex(base.dim, base.num_attributes, layout=base.layout)
    t = time.perf_counter()
    for s in range(0, len(all_vectors), 65536):
        index.add([str(i) for i in range(s, min(s + 65536, len(all_vectors)))], all_vectors[s:s + 65536],
                  all_codes[s:s + 65536])
    index.optimize()
    build_s = time.perf_counter() - t
    schema = retriever.schema
    qs = manipulation_queries(current, schema.sizes, max_queries=args.filter_queries, seed=7)
    queries = retriever.family.change_batch(vectors[qs.rows], current[qs.rows], qs.attrs, qs.values)
    graph = index.graph
    assert graph is not None
    out: dict[str, Any] = {"items": len(all_vectors), "real_items": len(ids), "build_s": build_s, "filters": []}
    for f in pick_filters(all_codes, schema.names, [a.values for a in schema.attributes], (0.10, 0.001)):
        where = {a: frozenset([v]) for a, v in f["codes"].items()}
        mask = np.ones(len(all_codes), bool)
        for a, v in f["codes"].items():
            mask &= all_codes[:, a] == v
        allowed = np.flatnonzero(mask)
        t = time.perf_counter()
        index.prepare_filters(list(f["codes"]))
        prepare_s = time.perf_counter() - t
        sub = all_vectors[allowed]
        truth = [[str(allowed[j]) for j in np.argsort(-(sub @ q))[:K]] for q in queries]
        allowed_list = mask.tolist()
        count = 128

        def fashsdk_call(i: int) -> list[str]:
            return index.search(queries[i % len(queries)], K, where=where)[0][0]

        def exact_call(i: int) -> list[str]:
            scores = sub @ queries[i % len(queries)]
            top = np.argpartition(-scores, min(K, len(scores) - 1))[:K]
            return [str(allowed[j]) for j in top[np.argsort(-scores[top])]]

        def callback_call(i: int) -> list[str]:
            graph.graph.set_ef(count)
            labels, _ = graph.graph.knn_query(queries[i % len(queries)], k=min(K, len(allowed)), num_threads=1,
                                              filter=allowed_list.__getitem__)
            return [str(x) for x in labels[0]]

        def overfetch_call(i: int) -> list[str]:
            labels, _ = graph.graph.knn_query(queries[i % len(queries)], k=min(len(all_codes), 8 * count), num_threads=1)
            return [str(x) for x in labels[0][mask[labels[0]]][:K]]

        calls: dict[str, Callable[[int], list[str]]] = {"fashsdk": fashsdk_call, "exact_scan": exact_call,
                                                        "hnswlib_filter_callback": callback_call,
                                                        "overfetch_8x": overfetch_call}
        latency = interleaved_latency({name: (None, fn) for name, fn in calls.items()}, args.filter_latency_queries,
                                      args.rounds, lambda c: None)
        row = {"where": f["where"], "share": f["share"], "selected": int(len(allowed)), "prepare_s": prepare_s,
               "methods": {name: {"p50_ms": latency[name]["p50_ms"], "p99_ms": latency[name]["p99_ms"],
                                  "p50_rounds_ms": latency[name]["p50_rounds_ms"],
                                  "recall_at_10": recall([fn(i) for i in range(len(queries))], truth)}
                           for name, fn in calls.items()}}
        out["filters"].append(row)
        log(f"   where {f['where']} ({100 * f['share']:.2f}%): " + ", ".join(
            f"{m} {v['p50_ms']:.3f} ms recall {v['recall_at_10']:.3f}" for m, v in row["methods"].items()))
    return out


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"Bundle `{report['bundle']}`, catalog {report['catalog_items']} items; {m['cpu']}, {m['cores']} cores "
             f"({', '.join(f for f, on in m['flags'].items() if on)}); one query thread, k=10.", "",
             f"`search` by id with one change (the SDK call): p50 {report['search_p50_ms']:.3f} ms "
             f"(rounds {report['search_p50_rounds_ms']}).", "",
             "| similar on | subspace dims | measured beam | p50 ms | p99 ms | recall@10 vs exact | fixed beam 48: "
             "p50 ms / recall | exact scan p50 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in report["similar"]:
        lines.append(f"| {r['attribute']} | {r['subspace_dim']} | {r['beam'] or '-'} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['recall_at_10']:.3f} | {r['fixed_p50_ms']:.3f} / "
                     f"{r['fixed_recall_at_10']:.3f} | {r['exact_p50_ms']:.3f} |")
    b = report["search_batch"]
    lines += ["", f"`search_batch` of {b['queries']} queries vs {b['queries']} single `search` calls (median of "
                  f"{b['repeats']}): {b['batch_qps']:.0f} vs {b['single_qps']:.0f} queries/s, "
                  f"**{b['throughput_ratio']:.2f}x**; identical results for {100 * b['identical_results_share']:.0f}%."]
    f = report["where"]
    lines += ["", f"`where` filters on {f['items']} items ({f['real_items']} real, the rest from the kernel model; "
                  f"built in {f['build_s']:.0f} s):", "",
              "| filter | selected | method | p50 ms | p99 ms | recall@10 |", "|---|---|---|---|---|---|"]
    for row in f["filters"]:
        for name, v in row["methods"].items():
            lines.append(f"| {row['where']} | {row['selected']} ({100 * row['share']:.2f}%) | {name} | "
                         f"{v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['recall_at_10']:.3f} |")
        lines.append(f"| | | per-value graphs built in {row['prepare_s']:.1f} s | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=Path("runs/demo/bundle"))
    p.add_argument("--index", type=Path, default=Path("runs/catalog-index"), help="index of the whole catalog")
    add_data_args(p)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--latency-queries", type=int, default=2000)
    p.add_argument("--recall-queries", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-queries", type=int, default=1000)
    p.add_argument("--batch-repeats", type=int, default=9)
    p.add_argument("--filter-items", type=int, default=100_000)
    p.add_argument("--filter-queries", type=int, default=500)
    p.add_argument("--filter-latency-queries", type=int, default=1000)
    args = p.parse_args(argv)

    retriever = catalog_retriever(args)
    index = retriever.index
    assert index is not None
    ids = index.ids
    rng = np.random.default_rng(0)
    pick = [ids[i] for i in rng.choice(len(ids), min(len(ids), args.latency_queries), replace=False)]
    schema = retriever.schema
    changes = []
    for _ in pick:
        a = int(rng.integers(len(schema.attributes)))
        changes.append({schema.names[a]: schema.attributes[a].values[int(rng.integers(schema.sizes[a]))]})
    log(f"== catalog of {len(ids)} items")
    search = interleaved_latency({"search": (None, lambda i: retriever.search(pick[i % len(pick)], changes[i % len(pick)], k=K))},
                                 args.latency_queries, args.rounds, lambda c: None)["search"]
    report: dict[str, Any] = {"bundle": str(args.bundle), "machine": machine(), "catalog_items": len(ids),
                              "search_p50_ms": search["p50_ms"], "search_p50_rounds_ms": search["p50_rounds_ms"]}
    log("== similar")
    report["similar"] = similar_rows(retriever, pick, args)
    log("== search_batch")
    report["search_batch"] = batch_rows(retriever, pick[:args.batch_queries], changes[:args.batch_queries], args.batch_repeats)
    log(f"   {report['search_batch']}")
    log("== where")
    report["where"] = filter_rows(retriever, args)
    atomic_write_json(args.json, report)
    table = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
