"""python -m benchmarks.quality --bundle B --data D --json OUT: how good is this bundle?

Evaluates a bundle on the catalog's test split with the papers' protocol (single- and
two-attribute manipulation queries, Top-k and NDCG@k, per attribute), the baselines on the
same queries, exact search and the production hnswlib index, and conditional similarity.
Writes OUT (JSON), OUT with .md (a table) and .png (Top-k curves) beside it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.catalog_args import add_data_args, data_paths
from fashsdk import Retriever
from fashsdk.catalog import read_catalog
from fashsdk.evaluation import DEFAULT_KS, manipulation_queries
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.image_source import iter_images, load_images
from fashsdk.index import CatalogIndex
from fashsdk.progress import progress_bar
from fashsdk.quality import METHODS, Gallery, conditional_similarity, evaluate_methods, value_means


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def build_gallery(retriever: Retriever, ids: list[str], codes: np.ndarray, images: list[str], index: Path | None) -> Gallery:
    """The test split as a gallery: from a saved index when it matches, else encoded now."""
    if index is not None and (index / "index.json").is_file():
        retriever.index = CatalogIndex.load(index)
        retriever._check_index(retriever.index)
        missing = [i for i in ids if i not in retriever.index]
        if missing:
            raise SystemExit(f"index {index} lacks {len(missing)} test ids (first {missing[:3]}); rebuild it")
    else:
        labels = {i: retriever.schema.decode(c) for i, c in zip(ids, codes)}
        bar, update = progress_bar(len(ids), "encode test split")
        retriever.add(iter_images(images, ids), labels, progress=update)
        bar.close()
    all_ids, vectors, _ = retriever.index.vectors_and_codes()  # type: ignore[union-attr]
    position = {i: n for n, i in enumerate(all_ids)}
    order = np.array([position[i] for i in ids])
    predicted = np.stack([retriever.index.get(i)[2] for i in ids])  # type: ignore[union-attr]
    return Gallery(ids, vectors[order], codes, predicted)


def reference_means(retriever: Retriever, catalog, images: list[str], per_value: int, seed: int) -> tuple[np.ndarray, int]:
    """Mean chunk per value over up to ``per_value`` training images (never the test split)."""
    train = catalog.split("train")
    rng = np.random.default_rng(seed)
    rows: set[int] = set()
    for a, size in enumerate(catalog.schema.sizes):
        for v in range(size):
            r = np.flatnonzero(train.codes[:, a] == v)
            rows.update((rng.choice(r, per_value, replace=False) if len(r) > per_value else r).tolist())
    pick = sorted(rows)
    ids = [train.ids[i] for i in pick]
    encoded = load_images(images, ids)
    vectors = retriever.encode([encoded[i] for i in ids]).embedding
    layout = list(retriever.bundle.layout.values())
    return value_means(vectors, train.codes[pick], catalog.schema, layout), len(pick)


def markdown(report: dict[str, Any]) -> str:
    ks = [str(k) for k in DEFAULT_KS]
    lines = [f"Bundle `{report['bundle']}` (sha256 {report['bundle_sha256'][:12]}), gallery {report['gallery']} test items, "
             f"{report['machine']['cpu']}", "",
             f"Single-attribute manipulation, {report['queries']} queries (of {report['valid_queries']} valid, seed "
             f"{report['seed']}), exact search, Top-k accuracy:", "",
             "| method | " + " | ".join(f"Top-{k}" for k in ks) + " | NDCG@30 |",
             "|---|" + "---|" * (len(ks) + 1)]
    for m in METHODS:
        row = report["top_k"][m]
        lines.append(f"| {m} | " + " | ".join(f"{row[k]:.3f}" for k in ks) + f" | {report['ndcg'][m]['30']:.3f} |")
    lines += ["", "Top-30 per changed attribute (single-attribute queries):", "",
              "| method | " + " | ".join(report["attributes"]) + " |", "|---|" + "---|" * len(report["attributes"])]
    for m in METHODS:
        per = report["per_attribute"][m]
        lines.append(f"| {m} | " + " | ".join(f"{per[a]['30']:.3f}" if a in per else "-" for a in report["attributes"]) + " |")
    lines += ["", "Through the production hnswlib index (Top-10 / Top-30), vs exact:", "",
              "| method | exact Top-10 | hnsw Top-10 | exact Top-30 | hnsw Top-30 |", "|---|---|---|---|---|"]
    for m, row in report["top_k_hnsw"].items():
        lines.append(f"| {m} | {report['top_k'][m]['10']:.3f} | {row['10']:.3f} | {report['top_k'][m]['30']:.3f} | {row['30']:.3f} |")
    two = report["two_attribute"]
    lines += ["", f"Two-attribute manipulation, {two['queries']} queries (of {two['valid_queries']} valid):", "",
              "| method | Top-10 | Top-30 | Top-50 |", "|---|---|---|---|"]
    for m in METHODS:
        r = two["top_k"][m]
        lines.append(f"| {m} | {r['10']:.3f} | {r['30']:.3f} | {r['50']:.3f} |")
    lines += ["", "Conditional similarity (k-NN on one attribute's chunk vs the full embedding):", "",
              "| attribute | precision@10 chunk | precision@10 full | triplet acc chunk | triplet acc full | chance |",
              "|---|---|---|---|---|---|"]
    for a, r in report["conditional_similarity"].items():
        lines.append(f"| {a} | {r['precision_at_10']:.3f} | {r['precision_at_10_full_embedding']:.3f} | "
                     f"{r['triplet_accuracy']:.3f} | {r['triplet_accuracy_full_embedding']:.3f} | {r['chance_precision']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (title, block) in zip(axes, (("single-attribute", report["top_k"]),
                                          ("two-attribute", report["two_attribute"]["top_k"]))):
        for m in METHODS:
            ax.plot(list(DEFAULT_KS), [block[m][str(k)] for k in DEFAULT_KS], marker="o", label=m)
        ax.set_title(f"{title} manipulation")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Top-k accuracy")
    axes[0].legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _str_keys(v) for k, v in obj.items()}
    return obj


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    add_data_args(p)
    p.add_argument("--index", type=Path, help="a saved index of the test split to reuse (else encoded now)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--max-queries", type=int, default=20000, help="single-attribute query sample size")
    p.add_argument("--pair-queries", type=int, default=10000, help="two-attribute query sample size")
    p.add_argument("--means-per-value", type=int, default=100, help="training images per value for mean_swap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    retriever = Retriever(args.bundle, backend=args.backend)
    schema, layout = retriever.schema, list(retriever.bundle.layout.values())
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, schema.names, schema=schema)
    test = catalog.split("test")
    gallery = build_gallery(retriever, test.ids, test.codes, images, args.index)
    means, n_ref = reference_means(retriever, catalog, images, args.means_per_value, args.seed)
    index = retriever.index
    assert index is not None
    row_of = {i: n for n, i in enumerate(gallery.ids)}

    def approximate(q: np.ndarray, k: int) -> np.ndarray:
        """Gallery rows found by the production index (a short row repeats its last hit)."""
        found, _ = index.search(q, k)
        rows = [[row_of[i] for i in r] for r in found]
        return np.array([r + r[-1:] * (k - len(r)) for r in rows])

    print(f"evaluating {len(gallery.ids)} gallery items ...", file=sys.stderr, flush=True)
    single_q = manipulation_queries(gallery.codes, schema.sizes, max_queries=args.max_queries, seed=args.seed)
    single = evaluate_methods(gallery, retriever.bundle.prototypes, means, schema, layout, single_q,
                              approximate=approximate)
    pair_q = manipulation_queries(gallery.codes, schema.sizes, changes=2, max_queries=args.pair_queries, seed=args.seed)
    pair = evaluate_methods(gallery, retriever.bundle.prototypes, means, schema, layout, pair_q)
    cond = conditional_similarity(gallery, schema, layout, seed=args.seed)
    report = _str_keys({
        "bundle": str(args.bundle), "bundle_sha256": retriever.bundle.sha256(), "machine": machine(),
        "backend": retriever.backend_name, "gallery": len(gallery.ids), "attributes": schema.names, "seed": args.seed,
        "mean_swap_reference_images": n_ref, **single,
        "two_attribute": {k: pair[k] for k in ("queries", "valid_queries", "top_k", "ndcg", "per_attribute")},
        "conditional_similarity": cond, "seconds": round(time.perf_counter() - t0, 1),
    })
    atomic_write_json(args.json, report)
    table = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table.encode())
    plot(report, args.json.with_suffix(".png"))
    print(table)
    print(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.json.with_suffix('.png')} "
          f"in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
