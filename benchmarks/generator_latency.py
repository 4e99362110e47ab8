"""G's cost per query for a generator-family bundle (FLAM's manipulator.onnx), one thread.

Part of ``python -m benchmarks.search --generator-bundle B [--generator-index I]``. On the index's
real items, with random single-attribute changes to another value, interleaved rounds of:

- ``manipulator``: the family's ``change_one`` (build the wanted values, run the graph, normalise):
  what a query with a change pays on top of a plain search;
- ``search by id, one change`` and ``search by id, no change``: the whole ``Retriever.search``
  call, k=10; the difference is G's share, and the no-change call never runs G.

p50 is the median of the rounds' medians (their spread is reported), p99 pools every call.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

TARGET_MS = 0.2  # issue 23: G per query on one core


def generator_latency(bundle_dir: Path, index_dir: Path, queries: int = 2000, rounds: int = 5,
                      seed: int = 0) -> dict[str, Any]:
    """The section's numbers for one generator bundle and its index (see the module docstring)."""
    from fashsdk.bundle import Bundle
    from fashsdk.retriever import Retriever

    bundle = Bundle.load(bundle_dir)
    if bundle.family.name != "generator":
        raise SystemExit(f"--generator-bundle {bundle_dir} is a {bundle.family.name!r} bundle; the generator section "
                         "measures a generator-family bundle (python -m export flam writes one)")
    retriever = Retriever(bundle, index_dir)
    family = retriever.family
    schema = retriever.schema
    ids, vectors, codes = retriever.index.vectors_and_codes()  # type: ignore[union-attr]
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(ids), queries)
    attrs = rng.integers(0, len(schema.sizes), queries)
    shift = np.array([rng.integers(1, schema.sizes[a]) if schema.sizes[a] > 1 else 0 for a in attrs])
    current = np.where(codes[rows, attrs] >= 0, codes[rows, attrs], 0)
    values = (current + shift) % np.asarray(schema.sizes)[attrs]
    names = schema.names
    wanted = [{names[a]: schema.attributes[a].values[v]} for a, v in zip(attrs, values)]

    def manipulate(i: int) -> None:
        j = i % queries
        family.change_one(vectors[rows[j]], codes[rows[j]], {int(attrs[j]): int(values[j])})

    def with_change(i: int) -> None:
        j = i % queries
        retriever.search(ids[rows[j]], wanted[j], k=10)

    def without_change(i: int) -> None:
        retriever.search(ids[rows[i % queries]], k=10)

    from benchmarks.search import interleaved_latency

    calls = {"manipulator": (None, manipulate), "search by id, one change": (None, with_change),
             "search by id, no change": (None, without_change)}
    timings = interleaved_latency(calls, queries, rounds, lambda candidates: None, warmup=50)
    g = timings["manipulator"]["p50_ms"]
    return {"bundle": str(bundle_dir), "index": str(index_dir), "items": len(ids), "queries": queries,
            "rounds": rounds, "timings": timings, "target_ms": TARGET_MS, "within_target": g <= TARGET_MS}


def markdown(section: dict[str, Any]) -> str:
    lines = [f"Generator family: G per query, `{section['bundle']}` on {section['items']} items, one thread, "
             f"{section['queries']} random single changes in {section['rounds']} interleaved rounds:", "",
             "| call | p50 ms | p99 ms | p50 per round |", "|---|---|---|---|"]
    for name, t in section["timings"].items():
        lines.append(f"| {name} | {t['p50_ms']:.3f} | {t['p99_ms']:.3f} | "
                     f"{' / '.join(f'{m:.3f}' for m in t['p50_rounds_ms'])} |")
    verdict = "within" if section["within_target"] else "ABOVE"
    lines += ["", f"G's p50 is {verdict} the {section['target_ms']} ms target."]
    return "\n".join(lines) + "\n"
