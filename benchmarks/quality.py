"""python -m benchmarks.quality --bundle B [--bundle B2 ...] --json OUT: how good are these bundles?

Evaluates bundles on the catalog's test split with the papers' protocol (single- and
two-attribute manipulation queries, Top-k and NDCG@k, per attribute) on the same queries:
one row per bundle (its model family's own arithmetic, e.g. adde or chunk_replace), the
mean_swap baseline (the chunk_replace family with value means over training images, built
from the first bundle), attribute_based and no_manipulation; exact search, and again through
the production hnswlib index; and conditional similarity per embedding space.
Writes OUT (JSON), OUT with .md (a table) and .png (Top-k curves) beside it.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.catalog_args import add_data_args, data_paths
from fashsdk import Retriever
from fashsdk.bundle import Bundle
from fashsdk.errors import BundleError
from fashsdk.eval.guard import check
from fashsdk.eval.methods import BASELINES, RERANKED, Gallery, conditional_similarity, evaluate_methods
from fashsdk.eval.protocol import DEFAULT_KS, manipulation_queries, per_attribute_queries
from fashsdk.eval.shape import chunk_shares, score_spread
from fashsdk.families import Family
from fashsdk.families.chunk_replace import ChunkReplace, reference_rows, value_means
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.index import CatalogIndex
from fashsdk.progress import progress_bar
from fashsdk.sources.catalog import Catalog, read_catalog
from fashsdk.sources.images import iter_images, load_images
from fashsdk.system import machine


def build_gallery(retriever: Retriever, test: Catalog, images: list[str], index: Path | None) -> Gallery:
    """The test split as a gallery: from a saved index when it matches, else encoded now."""
    ids, codes = test.ids, test.codes
    if index is not None and (index / "index.json").is_file():
        loaded = CatalogIndex.load(index)
        retriever._check_index(loaded)
        retriever.index = loaded
        missing = [i for i in ids if i not in loaded]
        if missing:
            raise SystemExit(f"index {index} lacks {len(missing)} test ids (first {missing[:3]}); rebuild it")
    else:
        labels = {i: retriever.schema.decode(c) for i, c in zip(ids, codes)}
        bar, update = progress_bar(len(ids), "encode test split")
        retriever.add(iter_images(images, ids), labels, progress=update)
        bar.close()
    assert retriever.index is not None
    vectors, _, predicted = retriever.index.get_many(ids)
    return Gallery(list(ids), vectors, codes, predicted)


def mean_swap(retriever: Retriever, train: Catalog, images: list[str], per_value: int, seed: int) -> tuple[Family, int]:
    """The chunk_replace family with value means over up to ``per_value`` training images per value."""
    rows = reference_rows(train.codes, retriever.schema.sizes, per_value, seed)
    ids = [train.ids[i] for i in rows]
    encoded = load_images(images, ids)
    vectors = retriever.encode([encoded[i] for i in ids]).embedding
    layout = list(retriever.bundle.layout.values())
    table, _ = value_means(vectors, train.codes[rows], retriever.schema, layout)
    return ChunkReplace(retriever.schema, layout, table), len(rows)


def mean_swap_from(retriever: Retriever, path: Path) -> tuple[Family, str]:
    """mean_swap read from a chunk_replace bundle built over the same model (the demo's
    bundle-chunk-replace), instead of encoding training images again."""
    try:
        source = Bundle.load(path)
    except (BundleError, OSError) as exc:
        raise SystemExit(f"--mean-swap-from {path}: {exc}") from exc
    if source.family_name != "chunk_replace":
        raise SystemExit(f"--mean-swap-from {path}: a {source.family_name} bundle has no value means; pass a "
                         f"chunk_replace bundle (the demo's bundle-chunk-replace) or leave the option out")
    if source.embedding_sha256() != retriever.bundle.embedding_sha256():
        raise SystemExit(f"--mean-swap-from {path}: its model is not the first bundle's, so its value means live in "
                         f"another embedding space; pass the chunk_replace bundle derived from "
                         f"{retriever.bundle.directory} or leave the option out")
    return source.family, str(path)


def row_names(retrievers: list[Retriever]) -> list[str]:
    """A row per bundle, named by its model (ADDE's bundles by their family; other architectures by
    name and ablation), with its folder where names repeat."""
    labels = [model_label(r) for r in retrievers]
    names = [f if labels.count(f) == 1 else f"{f} ({r.bundle.directory.parent.name}/{r.bundle.directory.name})"
             for f, r in zip(labels, retrievers)]
    return [n if names.count(n) == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def model_label(retriever: Retriever) -> str:
    model = retriever.bundle.manifest.get("model", {})
    architecture = model.get("architecture", "adde")
    if architecture == "adde":  # fsn over an ADDE model: chunk_replace with the changed chunk weighted
        return "chunk_replace_weighted" if retriever.family.name == "fsn" else retriever.family.name
    config = model.get("config", {})
    label = architecture if config.get("block", "ase") == "ase" else f"{architecture}-{config['block']}"
    if not config.get("fsn_localize", True):
        label += "-no-localize"
    if architecture == "fsn" and retriever.family.name != "fsn":  # no attribute-weighted global representation
        label += "-no-weights"
    return label


def markdown(report: dict[str, Any]) -> str:
    ks = [str(k) for k in DEFAULT_KS]
    rows = report["rows"]
    bundles = ", ".join(f"`{b['path']}` ({b['family']}, sha256 {b['sha256'][:12]})" for b in report["bundles"])
    lines = [f"Bundles {bundles}; gallery {report['gallery']} test items; {report['machine']['cpu']}", "",
             f"Single-attribute manipulation, {report['queries']} queries (of {report['valid_queries']} valid, seed "
             f"{report['seed']}), exact search, Top-k accuracy:", "",
             "| method | " + " | ".join(f"Top-{k}" for k in ks) + " | NDCG@30 |",
             "|---|" + "---|" * (len(ks) + 1)]
    for m in rows:
        row = report["top_k"][m]
        lines.append(f"| {m} | " + " | ".join(f"{row[k]:.3f}" for k in ks) + f" | {report['ndcg'][m]['30']:.3f} |")
    lines += ["", "Top-30 per changed attribute (single-attribute queries):", "",
              "| method | " + " | ".join(report["attributes"]) + " |", "|---|" + "---|" * len(report["attributes"])]
    for m in rows:
        per = report["per_attribute"][m]
        lines.append(f"| {m} | " + " | ".join(f"{per[a]['30']:.3f}" if a in per else "-" for a in report["attributes"]) + " |")
    each = report.get("per_attribute_queries")
    if each:
        counts = ", ".join(f"{a} {n}" for a, n in each["queries"].items())
        lines += ["", f"Top-30 per changed attribute on up to {max(each['queries'].values())} queries per attribute "
                      f"({counts}; the precise per-attribute figure):", "",
                  "| method | " + " | ".join(report["attributes"]) + " |", "|---|" + "---|" * len(report["attributes"])]
        for m in rows:
            per = each["per_attribute"][m]
            lines.append(f"| {m} | " + " | ".join(f"{per[a]['30']:.3f}" if a in per else "-"
                                                  for a in report["attributes"]) + " |")
    lines += ["", "Through the production hnswlib index (Top-10 / Top-30), vs exact:", "",
              "| method | exact Top-10 | hnsw Top-10 | exact Top-30 | hnsw Top-30 |", "|---|---|---|---|---|"]
    for m, row in report["top_k_hnsw"].items():
        lines.append(f"| {m} | {report['top_k'][m]['10']:.3f} | {row['10']:.3f} | {report['top_k'][m]['30']:.3f} | {row['30']:.3f} |")
    two = report["two_attribute"]
    lines += ["", f"Two-attribute manipulation, {two['queries']} queries (of {two['valid_queries']} valid):", "",
              "| method | Top-10 | Top-30 | Top-50 |", "|---|---|---|---|"]
    for m in rows:
        r = two["top_k"][m]
        lines.append(f"| {m} | {r['10']:.3f} | {r['30']:.3f} | {r['50']:.3f} |")
    lines += ["", "Preservation: share of the top-10 that keep each attribute the query did not change "
                  "(single-attribute queries):", "",
              "| method | mean | " + " | ".join(report["attributes"]) + " |", "|---|---|" + "---|" * len(report["attributes"])]
    for m in rows:
        kept = report["preservation_at_10"][m]
        lines.append(f"| {m} | {kept['mean']:.3f} | " + " | ".join(f"{kept[a]:.3f}" if a in kept else "-"
                                                                     for a in report["attributes"]) + " |")
    if "requested_at_10" in report:
        lines += ["", "Requested value: share of the top-10 that carry the value asked for, by changed attribute "
                      "(single-attribute queries):", "",
                  "| method | mean | " + " | ".join(report["attributes"]) + " |",
                  "|---|---|" + "---|" * len(report["attributes"])]
        for m in rows:
            got = report["requested_at_10"][m]
            lines.append(f"| {m} | {got['mean']:.3f} | " + " | ".join(f"{got[a]:.3f}" if a in got else "-"
                                                                        for a in report["attributes"]) + " |")
    for space, shape in report["embedding"].items():
        shares = ", ".join(f"{a} {v:.2f}" for a, v in shape["chunk_shares"].items())
        s = shape["scores"]
        far = next(k for k in s if k.startswith("neighbour_"))
        lines += ["", f"Embedding of {space}: share of the squared norm per chunk {shares}; median cosine to the "
                      f"1st / {far.split('_')[1]}th neighbour {s['first_neighbour']:.3f} / {s[far]:.3f}, random pairs "
                      f"{s['random_pair']:.3f}."]
    g = report["guard"]
    lines += ["", "Guard (test split): " + ("passed" if g["passed"] else "FAILED"), ""]
    lines += [f"- {r['attribute']}: accuracy {100 * r['accuracy']:.1f}% vs majority {100 * r['majority']:.1f}%"
              for r in g["attributes"]]
    lines += [f"- WARNING: {w}" for w in g["warnings"]]
    for space, cond in report["conditional_similarity"].items():
        lines += ["", f"Conditional similarity, embedding of {space} (k-NN in one attribute's subspace vs the "
                      "full embedding):", "",
                  "| attribute | precision@10 subspace | precision@10 full | triplet acc subspace | triplet acc full | chance |",
                  "|---|---|---|---|---|---|"]
        for a, r in cond.items():
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
        for m in report["rows"]:
            ax.plot(list(DEFAULT_KS), [block[m][str(k)] for k in DEFAULT_KS], marker="o", label=m)
        ax.set_title(f"{title} manipulation")
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Top-k accuracy")
    axes[0].legend()
    fig.tight_layout()
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
    p.add_argument("--bundle", type=Path, action="append", required=True,
                   help="a bundle to evaluate; repeat to compare families on the same queries")
    add_data_args(p)
    p.add_argument("--index", type=Path, help="a saved index of the test split for the first bundle (else encoded now)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--max-queries", type=int, default=20000, help="single-attribute query sample size")
    p.add_argument("--pair-queries", type=int, default=10000, help="two-attribute query sample size")
    p.add_argument("--per-attribute-queries", type=int, default=3000,
                   help="single-attribute queries per changed attribute for the per-attribute Top-30 (0: none)")
    p.add_argument("--means-per-value", type=int, default=100, help="training images per value for mean_swap")
    p.add_argument("--mean-swap-from", type=Path, help="a chunk_replace bundle over the first bundle's model whose "
                                                         "value means make the mean_swap row (instead of encoding "
                                                         "--means-per-value training images per value)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--strict", action="store_true", help="exit 3 when the guard finds the model not clearly better "
                                                         "than its baselines")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    retrievers = [Retriever(b, backend=args.backend) for b in args.bundle]
    first = retrievers[0]
    schema = first.schema
    if any(r.schema != schema for r in retrievers):
        raise SystemExit("the bundles have different attribute schemas, so they cannot answer the same queries")
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, schema.names, schema=schema)
    test = catalog.split("test")
    names = row_names(retrievers)
    spaces: dict[str, tuple[str, Gallery, Retriever]] = {}  # embedding sha256 -> (first row, gallery, retriever)
    galleries: dict[str, Gallery] = {}
    approximate: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {}
    for name, retriever in zip(names, retrievers):
        space = retriever.bundle.embedding_sha256()
        if space not in spaces:
            gallery = build_gallery(retriever, test, images, args.index if retriever is first else None)
            spaces[space] = (name, gallery, retriever)
        galleries[name] = spaces[space][1]
        approximate[name] = _through_index(spaces[space][2].index, galleries[name])  # type: ignore[arg-type]
    families: dict[str, Family] = {name: r.family for name, r in zip(names, retrievers)}
    if args.mean_swap_from:
        families["mean_swap"], mean_swap_source = mean_swap_from(first, args.mean_swap_from)
    else:
        families["mean_swap"], n_ref = mean_swap(first, catalog.split("train"), images, args.means_per_value, args.seed)
        mean_swap_source = f"{n_ref} training images"
    galleries["mean_swap"], approximate["mean_swap"] = galleries[names[0]], approximate[names[0]]

    gallery = galleries[names[0]]
    rerankers = {name: r.rerank for name, r in zip(names, retrievers) if r.rerank is not None}
    served = names[0] + RERANKED if names[0] in rerankers else names[0]  # the row of what the first bundle serves
    print(f"evaluating {len(gallery.ids)} gallery items ...", file=sys.stderr, flush=True)
    single_q = manipulation_queries(gallery.codes, schema.sizes, max_queries=args.max_queries, seed=args.seed)
    single = evaluate_methods(galleries, families, schema, single_q, approximate=approximate, rerankers=rerankers)
    pair_q = manipulation_queries(gallery.codes, schema.sizes, changes=2, max_queries=args.pair_queries, seed=args.seed)
    pair = evaluate_methods(galleries, families, schema, pair_q, rerankers=rerankers)
    by_attribute = {}
    if args.per_attribute_queries > 0:
        each_q = per_attribute_queries(gallery.codes, schema.sizes, args.per_attribute_queries, seed=args.seed)
        each = evaluate_methods(galleries, families, schema, each_q, rerankers=rerankers)
        counts = {n: int((each_q.attrs[:, 0] == a).sum()) for a, n in enumerate(schema.names)}
        by_attribute = {"queries": counts, "per_attribute": each["per_attribute"]}
    cond = {row: conditional_similarity(g, schema, list(r.bundle.layout.values()), seed=args.seed)
            for row, g, r in spaces.values() if r.bundle.attribute_subspaces}
    shape = {row: {"chunk_shares": chunk_shares(g.vectors, list(r.bundle.layout.values()), schema.names),
                   "scores": score_spread(g.vectors, seed=args.seed)} for row, g, r in spaces.values()}
    train_codes = catalog.split("train").codes
    verdict = check(schema, gallery.predicted, gallery.codes, train_codes,
                    {m: single["top_k"][m][30] for m in (served, *BASELINES)}, served)
    report = _str_keys({
        "bundles": [{"path": str(r.bundle.directory), "family": r.family.name, "sha256": r.bundle.sha256()}
                    for r in retrievers],
        "machine": machine(), "backend": first.backend_name, "gallery": len(gallery.ids), "attributes": schema.names,
        "seed": args.seed, "rows": list(single["top_k"]), "mean_swap_means": mean_swap_source, **single,
        "two_attribute": {k: pair[k] for k in ("queries", "valid_queries", "top_k", "ndcg", "per_attribute")},
        "per_attribute_queries": by_attribute, "conditional_similarity": cond, "embedding": shape,
        "guard": verdict.to_json(),
        "seconds": round(time.perf_counter() - t0, 1),
    })
    atomic_write_json(args.json, report)
    table = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table.encode())
    plot(report, args.json.with_suffix(".png"))
    print(table)
    print(f"wrote {args.json}, {args.json.with_suffix('.md')}, {args.json.with_suffix('.png')} "
          f"in {report['seconds']} s", file=sys.stderr)
    print("guard (test split): " + verdict.format(), file=sys.stderr)
    if args.strict and not verdict.passed:
        print("error: --strict and the model is not clearly better than its baselines", file=sys.stderr)
        return 3
    return 0


def _through_index(index: CatalogIndex, gallery: Gallery) -> Callable[[np.ndarray, int], np.ndarray]:
    row_of = {i: n for n, i in enumerate(gallery.ids)}

    def approximate(q: np.ndarray, k: int) -> np.ndarray:
        """Gallery rows found by the production index (a short row repeats its last hit)."""
        found, _ = index.search(q, k)
        rows = [[row_of[i] for i in r] for r in found]
        return np.array([r + r[-1:] * (k - len(r)) for r in rows])

    return approximate


if __name__ == "__main__":
    sys.exit(main())
