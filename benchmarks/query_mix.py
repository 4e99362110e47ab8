"""python -m benchmarks.query_mix --run RUN --json OUT: adde, chunk_replace with the changed chunk
weighted by each emphasis c, blends (1 - b) adde + b weighted chunk_replace over a grid, and the
blend training chose (export/query_mix.py), on the test split.

RUN is what ``python -m export demo`` wrote: its chunk_replace bundle's value table (bundle or
bundle-chunk-replace), its adde bundle, and the saved index of the test split. Rows are ranked on
the same queries as ``benchmarks.quality`` (20,000 single-attribute and 10,000 two-attribute
queries, seed 0): Top-30, Top-30 per changed attribute, and the share of the top-10 that keep the
unchanged attributes, the price of a larger emphasis. Training chooses the mix on the validation
split; this shows what each choice does on the test split.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from export.catalog_args import add_data_args, data_paths
from export.query_mix import EMPHASIS_GRID, emphasis_family, emphasis_weights, mix_arrays
from fashsdk import Bundle, Retriever
from fashsdk.eval.methods import Gallery, evaluate_methods
from fashsdk.eval.protocol import manipulation_queries
from fashsdk.families import Family
from fashsdk.families.blend import Blend
from fashsdk.families.chunk_replace import checked_value_table
from fashsdk.families.fsn import FashionSearchNetFamily
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.sources.catalog import read_catalog
from fashsdk.system import machine

from .quality import build_gallery


def bundle_of(run: Path, family: str) -> Path:
    """RUN's bundle of ``family``: the served one (RUN/bundle) or the one beside it."""
    for path in (run / "bundle", run / f"bundle-{family.replace('_', '-')}"):
        if (path / "manifest.json").is_file() and Bundle.load(path).family_name == family:
            return path
    raise SystemExit(f"{run} holds no {family} bundle (looked in bundle and bundle-{family.replace('_', '-')}); "
                     f"run python -m export demo --out {run} first")


def markdown(report: dict) -> str:
    names = report["attributes"]
    lines = [f"Query mix on the test split ({report['gallery']} items) of `{report['run']}`; "
             f"{report['machine']['cpu']}. Single-attribute Top-30 ({report['queries']} queries), per changed "
             f"attribute, two-attribute Top-30 ({report['pair_queries']} queries), and the share of the top-10 "
             "keeping the unchanged attributes (preservation) and carrying the requested value (requested).", "",
             "| method | Top-30 | " + " | ".join(names) + " | two-attribute Top-30 | preservation | requested |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for row, r in report["rows"].items():
        lines.append(f"| {row} | {r['top30']:.3f} | " + " | ".join(f"{r['per_attribute'][n]:.3f}" for n in names)
                     + f" | {r['two_attribute_top30']:.3f} | {r['preservation']:.3f} | {r['requested']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.query_mix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a python -m export demo output folder")
    add_data_args(p)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--grid", type=float, nargs="+", default=list(EMPHASIS_GRID), help="emphases c")
    p.add_argument("--blends", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                   help="blends b shown beside adde and chunk_replace, each with the emphases of --blend-emphases")
    p.add_argument("--blend-emphases", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    p.add_argument("--max-queries", type=int, default=20000)
    p.add_argument("--pair-queries", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    replace = Retriever(bundle_of(args.run, "chunk_replace"))
    adde = Retriever(bundle_of(args.run, "adde"))
    schema = replace.schema
    labels, images = data_paths(args)
    catalog, _ = read_catalog(labels, schema.names, schema=schema)
    gallery: Gallery = build_gallery(replace, catalog.split("test"), images, args.run / "index")
    layout = list(replace.bundle.layout.values())
    table = checked_value_table(replace.bundle)
    families: dict[str, Family] = {"adde": adde.family}
    families.update({f"chunk_replace x{c:g}": emphasis_family(schema, layout, table, c) for c in sorted(args.grid)})
    count = len(schema.sizes)

    def blend(b: float | np.ndarray, c: float | np.ndarray) -> Blend:
        fsn = FashionSearchNetFamily(schema, layout, table, emphasis_weights(count, c))
        return Blend(adde.family, fsn, np.broadcast_to(np.asarray(b, np.float32), (count,)))

    families.update({f"blend b{b:g} x{c:g}": blend(b, c)
                     for b in sorted(args.blends) for c in sorted(args.blend_emphases)})
    mix = mix_arrays(adde.bundle.manifest["model"].get("training", {}), schema.names)
    if mix is not None:  # the blend training chose
        families["blend chosen on validation"] = blend(*mix)
    galleries = {name: gallery for name in families}
    single_q = manipulation_queries(gallery.codes, schema.sizes, max_queries=args.max_queries, seed=args.seed)
    single = evaluate_methods(galleries, families, schema, single_q)
    pair_q = manipulation_queries(gallery.codes, schema.sizes, changes=2, max_queries=args.pair_queries, seed=args.seed)
    pair = evaluate_methods(galleries, families, schema, pair_q)
    rows = {name: {"top30": single["top_k"][name][30], "two_attribute_top30": pair["top_k"][name][30],
                   "per_attribute": {n: single["per_attribute"][name].get(n, {}).get(30, float("nan"))
                                     for n in schema.names},
                   "preservation": single["preservation_at_10"][name]["mean"],
                   "requested": single["requested_at_10"][name]["mean"]}
            for name in [*families, "attribute_based", "no_manipulation"]}
    report = {"run": str(args.run), "machine": machine(), "gallery": len(gallery.ids), "attributes": schema.names,
              "queries": single["queries"], "pair_queries": pair["queries"], "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_json(args.json, report)
    table_md = markdown(report)
    atomic_write_bytes(args.json.with_suffix(".md"), table_md.encode())
    print(table_md)
    print(f"wrote {args.json} and {args.json.with_suffix('.md')} in {report['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
