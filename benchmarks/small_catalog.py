"""python -m benchmarks.small_catalog --out DIR: does the documented recipe learn on another catalog?

Builds a second catalog from the shared data, smaller and labelled differently (by default
5,000 training and 2,000 test photos with the attributes subCategory, baseColour and season
instead of the demo's four), then runs the documented command on it unchanged but for the
data paths and attribute names:

    python -m export demo --labels DIR/labels.csv --images DATA --attributes ... --out DIR/run

and reads its quality report: Top-30 of the model against no_manipulation and attribute_based,
and every attribute's accuracy against its majority class (the guard). Writes DIR/small-catalog.json
and .md. Extra arguments after ``--`` go to ``python -m export demo``.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from export.catalog_args import DEFAULT_DATA
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import machine

ROOT = Path(__file__).resolve().parents[1]


def subset_csv(data: Path, out: Path, train: int, test: int, seed: int) -> dict[str, int]:
    with open(data / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    rng = np.random.default_rng(seed)
    picked = []
    for split, n in (("train", train), ("test", test)):
        pool = [r for r in rows if r["split"] == split]
        picked += [pool[i] for i in sorted(rng.choice(len(pool), min(n, len(pool)), replace=False))]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(picked)
    return {split: sum(r["split"] == split for r in picked) for split in ("train", "test")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.small_catalog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--attributes", nargs="+", default=["subCategory", "baseColour", "season"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    counts = subset_csv(args.data, args.out / "labels.csv", args.train_images, args.test_images, args.seed)
    command = [sys.executable, "-m", "export", "demo", "--labels", str((args.out / "labels.csv").resolve()),
               "--images", str(args.data.resolve()), "--attributes", *args.attributes,
               "--out", str((args.out / "run").resolve()), *extra]
    print("$ " + " ".join(command), flush=True)
    t0 = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    seconds = time.perf_counter() - t0
    quality = json.loads((args.out / "run" / "quality.json").read_text())
    training = json.loads((args.out / "run" / "checkpoint" / "config.json").read_text())
    model_row = quality["rows"][0]
    top30 = {m: quality["top_k"][m]["30"] for m in quality["rows"]}
    report: dict[str, Any] = {
        "machine": machine(), "command": command, "images": counts, "attributes": args.attributes,
        "seconds": round(seconds, 1), "training_seconds": training["seconds"], "model_row": model_row,
        "top30": top30, "lead_over_no_manipulation_points": round(100 * (top30[model_row] - top30["no_manipulation"]), 1),
        "guard_test": quality["guard"], "guard_validation": training.get("guard"),
        "preservation_at_10": quality["preservation_at_10"][model_row]["mean"],
        "chunk_shares": next(iter(quality["embedding"].values()))["chunk_shares"],
        "validation": training.get("best", {}),
    }
    atomic_write_json(args.out / "small-catalog.json", report)
    lines = [f"Second catalog: {counts['train']} training and {counts['test']} test photos of myntra-small, attributes "
             f"{', '.join(args.attributes)}; `{' '.join(command[2:])}`; {report['seconds'] / 60:.1f} min on "
             f"{report['machine']['cpu']}.", "",
             "| method | Top-30 |", "|---|---|"] + [f"| {m} | {v:.3f} |" for m, v in top30.items()]
    best = report["validation"]
    if "query_mix" in best:
        pairs = {(m["blend"], m["chunk_emphasis"]) for m in best["query_mix"].values()}
        chosen = ", ".join(f"b{b:g} x{c:g}" for b, c in sorted(pairs))
        lines += ["", f"Served {model_row}: validation Top-30 adde {best['val_top30']:.3f}, chunk_replace "
                      f"{best['val_top30_chunk_replace']:.3f}, blend ({chosen}) {best['val_top30_mix']:.3f}, lead "
                      f"over adde {100 * best['val_top30_mix_lead']:+.1f} points (standard error "
                      f"{100 * best['val_top30_mix_lead_se']:.1f} on the same queries)."]
    lines += ["", f"Lead of {model_row} over no_manipulation: {report['lead_over_no_manipulation_points']} points; "
                  f"top-10 keep the unchanged attributes {100 * report['preservation_at_10']:.1f}% of the time.", "",
              "| attribute | accuracy (test) | majority class |", "|---|---|---|"]
    lines += [f"| {r['attribute']} | {r['accuracy']:.3f} | {r['majority']:.3f} |" for r in quality["guard"]["attributes"]]
    lines += [""] + ([f"WARNING: {w}" for w in quality["guard"]["warnings"]] or ["Guard: passed."])
    atomic_write_bytes(args.out / "small-catalog.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
