"""``fashsdk`` command line: index a catalog, search with changes, find similar items, predict attributes."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import FashsdkError, QueryError
from .progress import progress_bar
from .retriever import Retriever
from .sources.catalog import read_catalog
from .sources.images import iter_images


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _pairs(items: Sequence[str], flag: str, example: str) -> dict[str, str]:
    """ATTR=VALUE strings -> {attr: value}; an attribute given twice is refused, not last-wins."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise QueryError(f"{flag} {item!r} must look like attribute=value, e.g. {example}")
        if name in out:
            raise QueryError(f"{flag} names attribute {name!r} twice; give each attribute once")
        out[name] = value
    return out


def _parse_changes(items: Sequence[str]) -> dict[str, str]:
    return _pairs(items, "--change", "baseColour=Red")


def _parse_where(items: Sequence[str]) -> dict[str, list[str]]:
    """ATTR=V1,V2 -> {attr: [values]} (values of one attribute ORed, attributes ANDed)."""
    return {name: [v for v in values.split(",") if v] for name, values in
            _pairs(items, "--where", "gender=Women or usage=Casual,Sports").items()}


def _print_results(query: str, extra: dict, results: list, ms: float) -> None:
    print(json.dumps({"query": query, **extra, "ms": round(ms, 3),
                      "results": [{"id": r.id, "score": round(r.score, 5), "attributes": r.attributes}
                                  for r in results]}, indent=2))


def cmd_index(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, threads=args.threads)
    catalog, _ = read_catalog(args.labels, retriever.schema.names, id_column=args.id_column,
                              split_column=args.split_column, schema=retriever.schema)
    if args.split:
        catalog = catalog.split(args.split)
    labels = {i: retriever.schema.decode(c) for i, c in zip(catalog.ids, catalog.codes)}
    bar, update = progress_bar(len(catalog), "index")
    start = time.perf_counter()
    failures = retriever.add(iter_images(args.images, catalog.ids), labels, skip_errors=args.skip_bad_images,
                             progress=update)
    bar.close()
    seconds = time.perf_counter() - start
    indexed = len(retriever.index) if retriever.index else 0
    missing = len(catalog) - indexed - len(failures)
    if retriever.index is not None:
        retriever.index.optimize()  # a bulk build: lay the graph out for serving before it is saved
        retriever.index.prepare_similar(range(len(retriever.schema.attributes)))  # saved with the index
    retriever.save_index(args.out)
    print(json.dumps({"indexed": indexed, "skipped_bad_images": len(failures), "missing_images": missing,
                      "seconds": round(seconds, 2), "ms_per_image": round(1000 * seconds / max(indexed, 1), 3),
                      "backend": retriever.backend_name, "index": str(args.out)}))
    for item_id, reason in failures[:20]:
        print(f"skipped {item_id}: {reason}", file=sys.stderr)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    change = _parse_changes(args.change or [])
    where = _parse_where(args.where or [])
    start = time.perf_counter()
    results = retriever.search(args.query, change=change or None, k=args.k, where=where or None, exact=args.exact)
    _print_results(args.query, {"change": change, "where": where}, results, 1000 * (time.perf_counter() - start))
    if args.sheet:
        if not args.images:
            raise QueryError("--sheet needs --images (a folder or tar shards) to draw the result thumbnails")
        from .eval.contact_sheet import render_sheet

        wanted = [r.id for r in results] + ([args.query] if args.query in retriever.index else [])
        found = dict(iter_images(args.images, wanted))
        query_image = found.get(args.query, args.query)
        query_labels = (retriever.schema.decode(retriever.index.get(args.query)[1])
                        if args.query in retriever.index else {})
        row = {"query": query_image, "query_labels": query_labels, "change": change,
               "results": [(found.get(r.id, b""), r.id, r.score, r.attributes) for r in results]}
        render_sheet([row], args.sheet)
        print(f"contact sheet written to {args.sheet}", file=sys.stderr)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    where = _parse_where(args.where or [])
    start = time.perf_counter()
    results = retriever.similar(args.query, args.attribute, k=args.k, where=where or None, exact=args.exact)
    _print_results(args.query, {"attribute": args.attribute, "where": where}, results,
                   1000 * (time.perf_counter() - start))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, threads=args.threads)
    pred = retriever.predict(args.image)
    print(json.dumps({name: {"value": p.value, "probability": round(p.probability, 4)} for name, p in pred.items()},
                     indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index)
    print(json.dumps(retriever.describe(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashsdk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", required=True, help="bundle directory (manifest.json, model.onnx, prototypes.npy)")
    common.add_argument("--threads", type=_positive_int, default=None, help="inference threads (default: all usable cores)")

    p = sub.add_parser("index", parents=[common], help="encode catalog images and save an index")
    p.add_argument("--labels", required=True, help="labels CSV with an id column and attribute columns")
    p.add_argument("--images", required=True, nargs="+", help="image folder or tar shards")
    p.add_argument("--out", required=True, type=Path, help="index directory to write")
    p.add_argument("--split", default=None, help="index only rows of this split (e.g. test)")
    p.add_argument("--split-column", default="split")
    p.add_argument("--id-column", default="id")
    p.add_argument("--skip-bad-images", action="store_true", help="skip undecodable images instead of failing")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common], help="search the index, optionally changing attributes")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--query", required=True, help="an indexed id or an image path")
    p.add_argument("--change", action="append", metavar="ATTR=VALUE", help="repeat for several attributes")
    p.add_argument("--where", action="append", metavar="ATTR=V1[,V2]", help="keep only items with these values")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exact", action="store_true", help="exact search instead of the hnswlib graph")
    p.add_argument("--sheet", type=Path, help="write a PNG contact sheet here")
    p.add_argument("--images", nargs="+", help="image folder or tar shards, for --sheet")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", parents=[common], help="items similar with respect to one attribute only")
    p.add_argument("--index", required=True, type=Path)
    p.add_argument("--query", required=True, help="an indexed id or an image path")
    p.add_argument("--attribute", required=True, help="the attribute to be similar on, e.g. baseColour")
    p.add_argument("--where", action="append", metavar="ATTR=V1[,V2]", help="keep only items with these values")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exact", action="store_true", help="exact search instead of the attribute's graph")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("predict", parents=[common], help="predict each attribute of an image")
    p.add_argument("image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", parents=[common], help="describe a bundle (and index)")
    p.add_argument("--index", type=Path, default=None)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success; 2 with a one-line 'fashsdk: error: ...' for bad arguments, inputs or files."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FashsdkError as exc:
        print(f"fashsdk: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output, full disk, unreadable input: the OS names the file
        print(f"fashsdk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashsdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
