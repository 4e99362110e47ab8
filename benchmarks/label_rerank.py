"""python -m benchmarks.label_rerank --bundle B --index IDX --json OUT: what the label rerank buys, and costs.

B is a bundle with a label rerank (``python -m export demo`` or ``python -m export label-rerank``),
IDX its saved index of the test split. On the same queries as ``benchmarks.quality`` (20,000
single-attribute and 10,000 two-attribute, seed 0; exact search), rows: the bundle's family
without the rerank, then with it over each number of candidates (the bundle's own among them);
Top-10/30, two-attribute Top-30 and the share of the top-10 keeping the unchanged attributes.
Beside each, the p50 of ``Retriever.search(id, change, k=30)`` through the production index,
over the same 500 queries, interleaved rounds, one thread: the price of the candidates.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from export.catalog_args import add_data_args, data_paths
from fashsdk import Retriever
from fashsdk.eval.methods import evaluate_methods
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.sources.catalog import read_catalog
from fashsdk.system import machine

from .quality import build_gallery

CANDIDATES = (50, 100, 200, 300, 500)


def latency_ms(retrievers: dict[str, Retriever], queries: list[tuple[str, dict[str, str]]], rounds: int) -> dict:
    """p50 ms of search(id, change, k=30) per retriever, rounds interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in retrievers}
    for _ in range(rounds):
        for name, retriever in retrievers.items():
            for query, change in queries:
                t = time.perf_counter()
                retriever.search(query, change=change, k=30)
                times[name].append(time.perf_counter() - t)
    return {name: round(1000 * statistics.median(t), 4) for name, t in times.items()}


def markdown(report: dict) -> str:
    lines = [f"Label rerank on the test split ({report['gallery']} items) of `{report['bundle']}` "
             f"(weights kept {report['kept']:g}, changed {report['changed']:g}); {report['machine']['cpu']}, "
             f"{report['machine'].get('cores', '?')} cores. Exact search; latency: search(id, change, k=30) through "
             "the index, one thread, p50.", "",
             "| row | Top-10 | Top-30 | two-attribute Top-30 | preservation | p50 ms |", "|---|---|---|---|---|---|"]
    for name, r in report["rows"].items():
        lines.append(f"| {name} | {r['top10']:.3f} | {r['top30']:.3f} | {r['two_attribute_top30']:.3f} | "
                     f"{r['preservation']:.3f} | {r['p50_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_rerank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--index", type=Path, required=True)
    add_data_args(p)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--max-queries", type=int, default=20000)
    p.add_argument("--pair-queries", type=int, default=10000)
    p.add_argument("--latency-queries", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    base = Retriever(args.bundle, args.index, threads=1)
    if base.rerank is None:
        raise SystemExit(f"{args.bundle} has no label rerank; add one with python -m export label-rerank")
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, base.schema.names, schema=base.schema)
    gallery = build_gallery(base, catalog.split("test"), images, args.index)
    family = base.family.name
    counts = sorted({*CANDIDATES, base.rerank.candidates})
    reranks = {f"{family}+rerank {k}": replace(base.rerank, candidates=k) for k in counts}
    rows: dict[str, dict] = {}
    for changes, limit in ((1, args.max_queries), (2, args.pair_queries)):
        queries = manipulation_queries(gallery.codes, base.schema.sizes, changes=changes, max_queries=limit,
                                       seed=args.seed)
        for name, rerank in [(family, None), *reranks.items()]:
            found = evaluate_methods({family: gallery}, {family: base.family}, base.schema, queries, ks=(10, 30),
                                     rerankers=None if rerank is None else {family: rerank})
            key = family if rerank is None else family + "+rerank"
            row = rows.setdefault(name, {})
            if changes == 1:
                row.update(top10=found["top_k"][key][10], top30=found["top_k"][key][30],
                           preservation=found["preservation_at_10"][key]["mean"])
            else:
                row["two_attribute_top30"] = found["top_k"][key][30]
        print(f"evaluated {changes}-attribute queries", file=sys.stderr, flush=True)
    rng = np.random.default_rng(args.seed)
    single = manipulation_queries(gallery.codes, base.schema.sizes, max_queries=args.latency_queries, seed=args.seed)
    timed = [(gallery.ids[int(r)], {base.schema.names[int(a)]: base.schema.attributes[int(a)].values[int(v)]})
             for r, a, v in zip(single.rows, single.attrs[:, 0], single.values[:, 0])]
    rng.shuffle(timed)  # type: ignore[arg-type]
    plain = Retriever(base.bundle, base.index, threads=1)
    plain.rerank = None
    retrievers = {family: plain}
    for name, rerank in reranks.items():
        retrievers[name] = Retriever(base.bundle, base.index, threads=1)
        retrievers[name].rerank = rerank
    for name, ms in latency_ms(retrievers, timed, args.rounds).items():
        rows[name]["p50_ms"] = ms
    report = {"bundle": str(args.bundle), "machine": machine(), "gallery": len(gallery.ids),
              "kept": base.rerank.kept, "changed": base.rerank.changed, "served_candidates": base.rerank.candidates,
              "queries": args.max_queries, "pair_queries": args.pair_queries, "rows": rows}
    atomic_write_json(args.json, report)
    table = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
