"""python -m benchmarks.outfits --json OUT: fill-in-the-blank accuracy and compatibility AUC on
DERIVED outfits (python -m export outfits), for the baselines an outfit model must beat:

- random: a candidate drawn at random (chance is 1 in 4);
- embedding distance: the bundle's whole embedding, no outfit head; a candidate scores the mean
  squared distance to the outfit's items (the papers' D(O, x) with identity projections and
  equal weights), an outfit the mean over its pairs;
- label oracle: the derivation rule itself applied to the labels (how many of the outfit's
  items a candidate may be worn with): the ceiling on derived outfits, not a model;
- with a bundle that carries an outfit head (python -m export outfit-head): the learned model,
  and ``Retriever.complete`` served over an index of every embedded item: its latency and its
  top-50 against a brute-force ranking by the head's own distance.

The embeddings come from the Parquet shards of ``fashsdk embed`` with the same bundle.

    python -m benchmarks.outfits --bundle runs/demo/bundle --embeddings runs/scale/catalog-shards \\
        --outfits runs/outfits --labels ../shared/data/myntra-small/styles.csv --json OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.outfit_rules import OutfitRules
from export.outfits import read_rows
from fashsdk import Retriever
from fashsdk.bundle import Bundle
from fashsdk.errors import QueryError
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import machine
from fashsdk.tasks.outfit_head import OutfitHead
from fashsdk.tasks.shards import read_shards

Score = Callable[[list[str], str], float]  # (outfit item ids, candidate id) -> higher is a better fit


def auc(positive: list[float], negative: list[float]) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def evaluate(questions: list[dict[str, Any]], pairs: list[dict[str, Any]], score: Score,
             rng: np.random.Generator) -> dict[str, Any]:
    """FITB accuracy per negative kind (ties broken at random) and compatibility AUC."""
    right: dict[str, list[bool]] = {}
    for q in questions:
        scores = np.array([score(q["question"], a) for a in q["answers"]])
        best = np.flatnonzero(scores == scores.max())
        right.setdefault(q["negatives"], []).append(int(rng.choice(best)) == q["answer_index"])
    outfit_scores: dict[int, list[float]] = {0: [], 1: []}
    for pair in pairs:
        items = pair["items"]
        fits = [score([a], b) for a, b in combinations(items, 2)]
        outfit_scores[pair["label"]].append(float(np.mean(fits)) if fits else 0.0)
    return {**{f"fitb_{kind}": round(float(np.mean(v)), 4) for kind, v in sorted(right.items())},
            "compatibility_auc": round(auc(outfit_scores[1], outfit_scores[0]), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True, help="Parquet shards of fashsdk embed (this bundle)")
    p.add_argument("--outfits", type=Path, required=True, help="folder of python -m export outfits")
    p.add_argument("--labels", type=Path, required=True, help="the labels CSV the outfits were derived from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-column", default="id")
    p.add_argument("--served-queries", type=int, default=1000,
                   help="with an outfit head: outfits completed through Retriever.complete (timed, checked exact)")
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    vectors: dict[str, np.ndarray] = {}
    for ids, embedded, *_ in read_shards(args.embeddings, bundle.schema, bundle.embedding_sha256(), bundle.dim):
        vectors.update(zip(ids, embedded))
    questions = json.loads((args.outfits / "fill_in_blank_test.json").read_text())
    pairs = json.loads((args.outfits / "compatibility_test.json").read_text())
    rules = OutfitRules.from_json(json.loads((args.outfits / "rules.json").read_text()))
    rows = {r["id"]: r for r in read_rows(args.labels, args.id_column)}
    wanted = {i for q in questions for i in q["question"] + q["answers"]} | {i for pr in pairs for i in pr["items"]}
    missing = sorted(wanted - set(vectors))
    if missing:
        p.error(f"{len(missing)} outfit items have no embedding in {args.embeddings} (first: {missing[:3]}); "
                "embed the split the outfits came from")
    rng = np.random.default_rng(args.seed)
    head = OutfitHead.from_bundle(bundle) if bundle.outfit else None
    methods: dict[str, Score] = {
        "random": lambda outfit, candidate: float(rng.random()),
        "embedding distance (no outfit head)": lambda outfit, candidate: -float(np.mean(
            [np.sum((vectors[candidate] - vectors[o]) ** 2) for o in outfit])),
        "label oracle (the derivation rule)": lambda outfit, candidate: float(sum(
            rules.compatible(rows[candidate], rows[o]) for o in outfit)),
    }
    if head is not None:
        column = json.loads((args.outfits / "rules.json").read_text())["category_column"]

        def learned(outfit: list[str], candidate: str) -> float:
            sources = np.array([head.categories.index(rows[o][column]) for o in outfit])
            target = head.categories.index(rows[candidate][column])
            return -float(head.distance(np.stack([vectors[o] for o in outfit]), sources, target,
                                        vectors[candidate][None])[0])

        methods["outfit head (learned psi, kappa)"] = learned
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "bundle": str(args.bundle),
                              "outfits": str(args.outfits), "derived": True, "questions": len(questions),
                              "compatibility_outfits": len(pairs),
                              "methods": {name: evaluate(questions, pairs, fn, rng) for name, fn in methods.items()}}
    if head is not None:
        result["category_pair_weights"] = pair_weights(head, json.loads((args.outfits / "test.json").read_text()),
                                                       bundle.schema.names, args.json.with_suffix(".png"))
    if head is not None and args.served_queries:
        result["served"] = served(args, head, questions)
    atomic_write_json(args.json, result)
    md = markdown(result)
    atomic_write_bytes(args.json.with_suffix(".md"), md.encode())
    print(md)
    return 0


def pair_weights(head: OutfitHead, outfits: list[dict[str, Any]], names: list[str], png: Path) -> list[dict[str, Any]]:
    """kappa's attention over the attribute subspaces for the 12 commonest (item, wanted) category
    pairs of the test outfits, and a PNG of every pair's weights, one panel per attribute."""
    counts: dict[tuple[str, str], int] = {}
    for outfit in outfits:
        for a, b in ((x["category"], y["category"]) for x in outfit["items"] for y in outfit["items"] if x is not y):
            if a in head.categories and b in head.categories:
                counts[(a, b)] = counts.get((a, b), 0) + 1
    rows = []
    for (source, target), n in sorted(counts.items(), key=lambda kv: -kv[1])[:12]:
        w = head.weights(np.array([head.categories.index(source)]), head.categories.index(target))[0]
        rows.append({"item": source, "wanted": target, "outfits": n, **{a: round(float(x), 3) for a, x in zip(names, w)}})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(head.categories)
    grid = np.stack([head.weights(np.arange(c), t) for t in range(c)], axis=1)  # (source, target, attribute)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.4))
    for a, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(grid[:, :, a], vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"weight of {names[a]}")
        ax.set_xticks(range(c), head.categories, rotation=90, fontsize=6)
        ax.set_yticks(range(c), head.categories, fontsize=6)
        ax.set_xlabel("wanted category")
        ax.set_ylabel("outfit item's category")
    fig.suptitle("kappa: attention over attribute subspaces per category pair (trained on derived outfits)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return rows


def served(args: argparse.Namespace, head: OutfitHead, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """``Retriever.complete`` over an index of every embedded item: k=10 latency, and its top-50
    against a brute-force ranking by the head's own outfit distance over the target category
    (equal when the served items' brute-force distances are the 50 smallest, in order; items
    at exactly tied distances, such as duplicate photos, may come in either order)."""
    retriever = Retriever(args.bundle, threads=1)
    retriever.index_shards(args.embeddings)
    index = retriever.index
    assert index is not None
    ids = index.ids
    vectors, labels, predicted = index.get_many(ids)
    categories = head.categories_of(np.where(labels >= 0, labels, predicted))
    position = {item: n for n, item in enumerate(ids)}
    asked = [q for q in questions if q["negatives"] == "random"][:args.served_queries]
    times, same_ids, exact, refused = [], 0, 0, 0
    for q in asked:
        try:
            retriever.complete(q["question"], q["category"], k=10)
        except QueryError:  # an item whose indexed value maps to no outfit category
            refused += 1
            continue
        start = time.perf_counter()
        retriever.complete(q["question"], q["category"], k=10)
        times.append(time.perf_counter() - start)
        got = [r.id for r in retriever.complete(q["question"], q["category"], k=50)]
        outfit_vectors, outfit_labels, outfit_predicted = index.get_many(q["question"])
        sources = head.categories_of(np.where(outfit_labels >= 0, outfit_labels, outfit_predicted))
        target = head.category_index(q["category"])
        outfit = set(q["question"])
        rows = [r for r in np.flatnonzero(categories == target) if ids[r] not in outfit]
        distance = head.distance(outfit_vectors, sources, target, vectors[rows])
        best = np.argsort(distance, kind="stable")[:50]
        same_ids += got == [ids[rows[i]] for i in best]
        of_got = head.distance(outfit_vectors, sources, target, vectors[[position[g] for g in got]])
        exact += len(got) == len(best) and bool(np.allclose(of_got, distance[best], rtol=1e-6, atol=1e-9))
    ms = 1000 * np.asarray(times)
    return {"catalog_items": len(ids), "queries": len(times), "refused": refused, "latency_k": 10,
            "p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "top50_exact": exact, "top50_identical_ids": same_ids}


def markdown(result: dict[str, Any]) -> str:
    kinds = sorted({k for m in result["methods"].values() for k in m})
    lines = [f"# Outfit baselines on DERIVED outfits ({result['date']})", "",
             f"Outfits: `{result['outfits']}` (derived from catalog labels by `python -m export outfits`: they "
             "show whether a method recovers that rule, not styling taste). Bundle `"
             f"{result['bundle']}`; {result['questions']} fill-in-the-blank questions (4 candidates), "
             f"{result['compatibility_outfits']} outfits for compatibility.", "",
             "| method | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    lines += [f"| {name} | " + " | ".join(str(m.get(k, "")) for k in kinds) + " |"
              for name, m in result["methods"].items()]
    if result.get("category_pair_weights"):
        pairs = result["category_pair_weights"]
        names = [k for k in pairs[0] if k not in ("item", "wanted", "outfits")]
        lines += ["", "Learned attention over the attribute subspaces, commonest category pairs of the test outfits "
                  "(all pairs: the PNG beside this file):", "",
                  "| outfit item | wanted | outfits | " + " | ".join(names) + " |", "| --- " * (3 + len(names)) + "|"]
        lines += [f"| {r['item']} | {r['wanted']} | {r['outfits']} | " + " | ".join(str(r[n]) for n in names) + " |"
                  for r in pairs]
    if "served" in result:
        sv = result["served"]
        lines += ["", f"`Retriever.complete` over {sv['catalog_items']} indexed items, {sv['queries']} outfits, one at a "
                  f"time on {result['machine']['cpu']}: k={sv['latency_k']} p50 {sv['p50_ms']} ms, p99 {sv['p99_ms']} ms. "
                  f"Top-50 equal to a brute-force ranking by the head's outfit distance for {sv['top50_exact']} of "
                  f"{sv['queries']} (the same ids in the same order for {sv['top50_identical_ids']}; the rest differ only "
                  f"in the order of exactly tied items, e.g. duplicate photos); {sv['refused']} outfits refused because "
                  "an item's indexed value maps to no outfit category."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
