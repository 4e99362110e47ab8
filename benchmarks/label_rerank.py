"""python -m benchmarks.label_rerank --bundle B --index IDX --json OUT: what the label rerank buys, and costs.

B is a bundle with a label rerank (``python -m export demo`` or ``python -m export label-rerank``),
IDX its saved index of the test split. On the same queries as ``benchmarks.quality`` (20,000
single-attribute and 10,000 two-attribute, seed 0; exact search), rows: the bundle's family
without the rerank, then with it over each number of nearest candidates (with the bundle's value
candidates), then over each number of value candidates (with the bundle's nearest ones); Top-10/30,
two-attribute Top-30, the share of the top-10 keeping the unchanged attributes, and Top-30 per
changed attribute on up to 3,000 queries each.
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
from fashsdk.eval.protocol import manipulation_queries, per_attribute_queries
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.sources.catalog import read_catalog
from fashsdk.system import machine

from .quality import build_gallery

CANDIDATES = (50, 100, 200, 300, 500)  # nearest neighbours of the changed query
VALUE_CANDIDATES = (0, 25, 50, 100)  # neighbours among the items carrying the wanted values


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
             "Rows `+rerank N+M`: N nearest candidates and M value candidates.", "",
             "| row | Top-10 | Top-30 | two-attribute Top-30 | preservation | "
             + " | ".join(f"{a} Top-30" for a in report["attributes"]) + " | p50 ms |",
             "|---|---|---|---|---|" + "---|" * len(report["attributes"]) + "---|"]
    for name, r in report["rows"].items():
        per = " | ".join(f"{r['per_attribute_top30'][a]:.3f}" for a in report["attributes"])
        lines.append(f"| {name} | {r['top10']:.3f} | {r['top30']:.3f} | {r['two_attribute_top30']:.3f} | "
                     f"{r['preservation']:.3f} | {per} | {r['p50_ms']:.3f} |")
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
    served = base.rerank
    pools = sorted({*((k, served.value_candidates) for k in CANDIDATES),
                    *((served.candidates, m) for m in VALUE_CANDIDATES)})
    reranks = {f"{family}+rerank {k}+{m}": replace(served, candidates=k, value_candidates=m) for k, m in pools}
    rows: dict[str, dict] = {}
    sizes = base.schema.sizes
    query_sets = {"single": manipulation_queries(gallery.codes, sizes, max_queries=args.max_queries, seed=args.seed),
                  "pair": manipulation_queries(gallery.codes, sizes, changes=2, max_queries=args.pair_queries,
                                               seed=args.seed),
                  "each": per_attribute_queries(gallery.codes, sizes, 3000, seed=args.seed)}
    for kind, queries in query_sets.items():
        for name, rerank in [(family, None), *reranks.items()]:
            found = evaluate_methods({family: gallery}, {family: base.family}, base.schema, queries, ks=(10, 30),
                                     rerankers=None if rerank is None else {family: rerank})
            key = family if rerank is None else family + "+rerank"
            row = rows.setdefault(name, {})
            if kind == "single":
                row.update(top10=found["top_k"][key][10], top30=found["top_k"][key][30],
                           preservation=found["preservation_at_10"][key]["mean"])
            elif kind == "pair":
                row["two_attribute_top30"] = found["top_k"][key][30]
            else:
                row["per_attribute_top30"] = {a: hits[30] for a, hits in found["per_attribute"][key].items()}
        print(f"evaluated the {kind} queries", file=sys.stderr, flush=True)
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
              "attributes": base.schema.names, "kept": served.kept, "changed": served.changed,
              "served_candidates": served.candidates, "served_value_candidates": served.value_candidates,
              "queries": args.max_queries, "pair_queries": args.pair_queries, "rows": rows}
    atomic_write_json(args.json, report)
    table = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
