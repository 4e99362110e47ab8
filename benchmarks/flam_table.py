"""python -m benchmarks.flam_table --run NAME=DIR [...] --out OUT.md: FLAM's runs side by side.

Each DIR is the output of ``python -m export flam`` (report.json, quality.json). One row per run:
its settings (label fraction, feature, adversarial weight, sampling of x-), FLAM's Top-10/30/50
beside mean_swap and no_manipulation on the same feature and the same queries, two-attribute
Top-30, Top-30 per changed attribute, and the classifier check and cycle (export/flam_checks.py).
The paper's Table 3 (T@50, other datasets, other attributes) is printed under it for reference.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PAPER_T50 = [  # FLAM paper, Table 3: Top-50, DARN / Shopping100k (3 attributes each; not comparable data)
    ("FLAM (M/OS/Adv): full", 0.822, 0.691),
    ("FLAM (M/-Adv): random x-", 0.802, 0.685),
    ("FLAM (M/-): random x-, no adversarial loss", 0.730, 0.573),
]


def load_run(directory: Path) -> dict[str, Any]:
    for name in ("report.json", "quality.json"):
        if not (directory / name).exists():
            raise SystemExit(f"{directory / name} is missing: pass the --out folder of a finished "
                             "`python -m export flam` run (with evaluation)")
    report = json.loads((directory / "report.json").read_text())
    quality = json.loads((directory / "quality.json").read_text())
    return {"report": report, "quality": quality}


def row(name: str, run: dict[str, Any]) -> dict[str, Any]:
    report, quality = run["report"], run["quality"]
    config, top = report["config"], quality["top_k"]
    checks = report.get("manipulation_checks", {})
    return {
        "run": name, "label_fraction": config["label_fraction"], "feature": report.get("feature", "pca"),
        "w_adv": config["w_adv"], "online_sampling": config["online_sampling"],
        "flam": {k: top["flam"][k] for k in ("10", "30", "50")},
        "mean_swap_30": top["mean_swap"]["30"], "no_manipulation_30": top["no_manipulation"]["30"],
        "two_attribute_30": quality["two_attribute"]["top_k"]["flam"]["30"],
        "per_attribute_30": {a: v["30"] for a, v in quality["per_attribute"]["flam"].items()},
        "checks": checks,
    }


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    attributes = list(rows[0]["per_attribute_30"]) if rows else []
    lines = [f"# FLAM runs ({machine})", "",
             "Same 20,000 single-attribute and 10,000 two-attribute test queries (seed 0) as every family; mean_swap "
             "and no_manipulation on each run's own retrieval feature. Classifier check: an independent softmax "
             "classifier reads the wanted value before -> after G; kept: the other attributes' predictions unchanged; "
             "cycle: cosine of G(G(x, v), v0) to x.", "",
             "| run | labels | feature | adv | x- | Top-10 | Top-30 | Top-50 | mean_swap Top-30 | no change Top-30 | "
             "two-attr Top-30 | " + " | ".join(f"{a} Top-30" for a in attributes)
             + " | wanted before -> after | kept | cycle cos |",
             "|---" * (14 + len(attributes)) + "|"]
    for r in rows:
        c = r["checks"]
        check = (f"{c['wanted_before']:.3f} -> {c['wanted_after']:.3f} | {c['kept_after']:.3f} | "
                 f"{c['cycle_cosine']:.3f}") if c else "- | - | -"
        lines.append(f"| {r['run']} | {r['label_fraction']:.0%} | {r['feature']} | {r['w_adv']:g} | "
                     f"{'online' if r['online_sampling'] else 'random'} | {r['flam']['10']:.3f} | "
                     f"{r['flam']['30']:.3f} | {r['flam']['50']:.3f} | {r['mean_swap_30']:.3f} | "
                     f"{r['no_manipulation_30']:.3f} | {r['two_attribute_30']:.3f} | "
                     + " | ".join(f"{r['per_attribute_30'][a]:.3f}" for a in attributes) + f" | {check} |")
    lines += ["", "The paper (Table 3, Top-50, DARN / Shopping100k: other datasets, three attributes, top-10 "
              "classes; for reference only):", "", "| model | DARN | Shopping100k |", "|---|---|---|"]
    lines += [f"| {name} | {darn:.3f} | {shop:.3f} |" for name, darn, shop in PAPER_T50]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flam_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                        help="a run's name and its `python -m export flam --out` folder (repeat)")
    parser.add_argument("--out", type=Path, required=True, help="markdown file (the JSON goes beside it)")
    args = parser.parse_args(argv)
    rows, machine = [], ""
    for spec in args.run:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--run {spec!r}: expected NAME=DIR, e.g. --run labels-10=runs/flam-10")
        run = load_run(Path(folder))
        rows.append(row(name, run))
        m = run["report"].get("machine", {})
        flags = [name for name, on in m.get("flags", {}).items() if on]
        machine = machine or f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {', '.join(flags)}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, machine))
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "paper_t50": PAPER_T50}, indent=1) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
