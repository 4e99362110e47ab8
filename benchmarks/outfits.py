"""python -m benchmarks.outfits --json OUT: fill-in-the-blank accuracy and compatibility AUC on
DERIVED outfits (python -m export outfits), for the baselines an outfit model must beat:

- random: a candidate drawn at random (chance is 1 in 4);
- embedding distance: the bundle's whole embedding, no outfit head; a candidate scores the mean
  squared distance to the outfit's items (the papers' D(O, x) with identity projections and
  equal weights), an outfit the mean over its pairs;
- label oracle: the derivation rule itself applied to the labels (how many of the outfit's
  items a candidate may be worn with): the ceiling on derived outfits, not a model.

The embeddings come from the Parquet shards of ``fashsdk embed`` with the same bundle.

    python -m benchmarks.outfits --bundle runs/demo/bundle --embeddings runs/scale/catalog-shards \\
        --outfits runs/outfits --labels ../shared/data/myntra-small/styles.csv --json OUT
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.outfit_rules import OutfitRules
from fashsdk.bundle import Bundle
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import machine
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
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    vectors: dict[str, np.ndarray] = {}
    for ids, embedded, *_ in read_shards(args.embeddings, bundle.schema, bundle.embedding_sha256(), bundle.dim):
        vectors.update(zip(ids, embedded))
    questions = json.loads((args.outfits / "fill_in_blank_test.json").read_text())
    pairs = json.loads((args.outfits / "compatibility_test.json").read_text())
    rules = OutfitRules.from_json(json.loads((args.outfits / "rules.json").read_text()))
    with open(args.labels, newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    wanted = {i for q in questions for i in q["question"] + q["answers"]} | {i for pr in pairs for i in pr["items"]}
    missing = sorted(wanted - set(vectors))
    if missing:
        p.error(f"{len(missing)} outfit items have no embedding in {args.embeddings} (first: {missing[:3]}); "
                "embed the split the outfits came from")
    rng = np.random.default_rng(args.seed)
    methods: dict[str, Score] = {
        "random": lambda outfit, candidate: float(rng.random()),
        "embedding distance (no outfit head)": lambda outfit, candidate: -float(np.mean(
            [np.sum((vectors[candidate] - vectors[o]) ** 2) for o in outfit])),
        "label oracle (the derivation rule)": lambda outfit, candidate: float(sum(
            rules.compatible(rows[candidate], rows[o]) for o in outfit)),
    }
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "bundle": str(args.bundle),
                              "outfits": str(args.outfits), "derived": True, "questions": len(questions),
                              "compatibility_outfits": len(pairs),
                              "methods": {name: evaluate(questions, pairs, fn, rng) for name, fn in methods.items()}}
    atomic_write_json(args.json, result)
    md = markdown(result)
    atomic_write_bytes(args.json.with_suffix(".md"), md.encode())
    print(md)
    return 0


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
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
