"""``fashsdk`` command line: index a catalog, search with changes, find similar items, predict attributes."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import FashsdkError, QueryError
from .index import CatalogIndex
from .index.milvus_target import index_location
from .progress import progress_bar
from .retriever import Retriever
from .sources.images import iter_images
from .sources.labels import read_value_map
from .tasks.boxes import attribute_boxes, has_boxes
from .tasks.ingest import REPORT_NAME

log = logging.getLogger("fashsdk")


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


def _out(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _results(query: str, extra: dict, results: list, ms: float) -> None:
    _out({"query": query, **extra, "ms": round(ms, 3),
          "results": [{"id": r.id, "score": round(r.score, 5), "attributes": r.attributes, "predicted": r.predicted}
                      for r in results]})


def cmd_embed(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, threads=args.threads)
    bar, update = progress_bar(None, "embed")
    run = retriever.embed_shards(args.labels, args.images, args.out, id_column=args.id_column, split=args.split,
                                 split_column=args.split_column, progress=update, ray=args.ray, address=args.address,
                                 actors=args.actors)
    bar.close()
    extra = {"ray": args.address or "local"} if args.ray or args.address else {"backend": retriever.backend_name}
    _out({**run.to_json(), "out": str(args.out), **extra})
    return 0


def _target(args: argparse.Namespace) -> str | None:
    """The Milvus address writes go to, or None for an embedded index saved to the folder ``--out``."""
    return args.out if isinstance(args.out, str) else None


def _report_path(args: argparse.Namespace) -> Path | None:
    return args.report or (None if _target(args) else args.out / REPORT_NAME)


def _index_from_embeddings(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, _target(args), threads=args.threads)
    added = retriever.index_shards(args.from_embeddings)
    if not added:
        raise QueryError(f"the shards in {args.from_embeddings} hold no items; run fashsdk embed first")
    _save_built(retriever, args.out)
    _out({"indexed": added, "index": str(args.out), "from_embeddings": str(args.from_embeddings)})
    return 0


def _save_built(retriever: Retriever, out: str | Path) -> None:
    """A bulk build: lay the graph out for serving and build the similar graphs, then save (a
    Milvus index has stored every write already: this seals the last ones)."""
    if isinstance(retriever.index, CatalogIndex):
        retriever.index.optimize()
        retriever.index.prepare_similar(range(len(retriever.schema.attributes)))
    retriever.save_index(None if isinstance(out, str) else out)


def cmd_index(args: argparse.Namespace) -> int:
    if args.from_embeddings is not None:
        return _index_from_embeddings(args)
    if args.labels is None:
        raise QueryError("fashsdk index needs --labels CSV (with --images or --path-column), or --from-embeddings DIR")
    retriever = Retriever(args.bundle, _target(args), threads=args.threads)
    value_map = read_value_map(args.value_map or [], retriever.schema)
    bar, update = progress_bar(None, "index")
    report = retriever.index_catalog(args.labels, args.images, id_column=args.id_column, path_column=args.path_column,
                                     value_map=value_map, split=args.split, split_column=args.split_column,
                                     strict=args.strict, progress=update)
    bar.close()
    report_path = _report_path(args)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
    if retriever.index is None or not len(retriever.index):
        if report_path is not None:
            report.save(report_path)
        raise QueryError(f"nothing was indexed (report: {report_path}): " + report.summary())
    _save_built(retriever, args.out)
    if report_path is not None:
        report.save(report_path)
    print(report.summary(), file=sys.stderr)
    summary = {k: v for k, v in report.to_json().items() if k not in ("skipped_rows", "labels", "images")}
    _out({**summary, "backend": retriever.backend_name, "index": str(args.out),
          "report": None if report_path is None else str(report_path)})
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    change = _parse_changes(args.change or [])
    where = _parse_where(args.where or [])
    start = time.perf_counter()
    results = retriever.search(args.query, change=change or None, k=args.k, where=where or None, exact=args.exact)
    _results(args.query, {"change": change, "where": where}, results, 1000 * (time.perf_counter() - start))
    if args.sheet:
        if not args.images:
            raise QueryError("--sheet needs --images (a folder or tar shards) to draw the result thumbnails")
        from .eval.contact_sheet import render_sheet

        index = retriever.index
        assert index is not None
        wanted = [r.id for r in results] + ([args.query] if args.query in index else [])
        found = dict(iter_images(args.images, wanted))
        query_labels = retriever.schema.decode(index.get(args.query)[1]) if args.query in index else {}
        row = {"query": found.get(args.query, args.query), "query_labels": query_labels, "change": change,
               "results": [(found.get(r.id, b""), r.id, r.score, r.attributes) for r in results]}
        if has_boxes(retriever.bundle):  # FashionSearchNet: where it looked for each attribute
            from .eval.contact_sheet import boxed_thumb

            row["query_thumb"] = boxed_thumb(*attribute_boxes(retriever.bundle, row["query"]))
        render_sheet([row], args.sheet)
        print(f"contact sheet written to {args.sheet}", file=sys.stderr)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    where = _parse_where(args.where or [])
    start = time.perf_counter()
    results = retriever.similar(args.query, args.attribute, k=args.k, where=where or None, exact=args.exact)
    _results(args.query, {"attribute": args.attribute, "where": where}, results, 1000 * (time.perf_counter() - start))
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    where = _parse_where(args.where or [])
    start = time.perf_counter()
    results = retriever.complete(args.items, args.category, k=args.k, where=where or None)
    _results(" + ".join(args.items), {"category": args.category, "where": where}, results,
             1000 * (time.perf_counter() - start))
    if args.sheet:
        if not args.images:
            raise QueryError("--sheet needs --images (a folder or tar shards) to draw the outfit and its completions")
        from .eval.contact_sheet import render_sheet

        found = dict(iter_images(args.images, list(args.items) + [r.id for r in results]))
        index = retriever.index
        assert index is not None
        labels = {i: retriever.schema.decode(index.get(i)[1]) for i in args.items if i in index}
        outfit = [(found.get(i, b""), i, 0.0, labels.get(i, {})) for i in args.items[1:]]
        rows = [{"query": found.get(args.items[0], b""), "query_labels": labels.get(args.items[0], {}),
                 "change": {}, "results": outfit},
                {"query": b"", "query_labels": {}, "change": {},
                 "results": [(found.get(r.id, b""), r.id, r.score, r.attributes) for r in results]}]
        render_sheet(rows, args.sheet, title=f"outfit {' + '.join(args.items)} -> best {args.category}")
        print(f"contact sheet written to {args.sheet}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    predictions = retriever.predict_many(args.items, top=args.top)
    _out([{"item": item, "attributes": {name: [{"value": p.value, "probability": p.probability, "source": p.source}
                                               for p in values] for name, values in pred.items()}}
          for item, pred in zip(args.items, predictions)])
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    info = retriever.describe()
    info["versions"] = versions()
    info["attributes"] = {name: (values if args.values else f"{len(values)} values: {', '.join(values[:6])}"
                                 + (", ..." if len(values) > 6 else ""))
                          for name, values in info["attributes"].items()}
    if retriever.index is not None:
        stats = retriever.index.stats()
        info["index"] = {"location": str(args.index), "items": stats["count"], "dim": stats["dim"],
                         "mode": stats["mode"], "built_with_bundle": retriever.index.info.get("bundle_sha256"),
                         **{key: stats[key] for key in ("bytes", "subspace_graphs", "address") if key in stats}}
    _out(info)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from .trust import keygen

    private, public = keygen(args.out)
    _out({"private_key": str(private), "public_key": str(public),
          "next": f"fashsdk sign --key {private} BUNDLE_OR_INDEX; load with FASHSDK_TRUSTED_KEYS={public}"})
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from .trust import sign

    _out({"signed": [str(sign(folder, args.key)) for folder in args.folders]})
    return 0


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("fashsdk", "numpy", "onnxruntime", "hnswlib", "pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="fashsdk", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fashsdk {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: in detail)")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", required=True, type=Path, help="bundle directory (made by python -m export onnx)")
    common.add_argument("--threads", type=_positive_int, default=None, help="inference threads (default: all usable cores)")

    p = sub.add_parser("index", parents=[common], help="index a catalog (labels CSV + images) and save the index",
                       description="Every row of the CSV is indexed or reported with its reason in OUT/"
                                   f"{REPORT_NAME}. An image belongs to the row whose id equals its file name "
                                   "without the extension (15970.jpg -> 15970), or is named by --path-column.")
    p.add_argument("--labels", type=Path, help="labels CSV: an id column and attribute columns")
    p.add_argument("--images", nargs="+", help="image folders or tar shards (not needed with --path-column)")
    p.add_argument("--path-column", help="CSV column holding each row's image file (relative to the CSV's folder)")
    p.add_argument("--from-embeddings", type=Path, metavar="DIR",
                   help="build the index from the Parquet shards of fashsdk embed (no labels, no images, no model)")
    p.add_argument("--out", required=True, type=index_location,
                   help="index directory to write, or a milvus:// address (milvus://FILE.db for Milvus Lite, "
                        "milvus://HOST:PORT for a server; pip install 'fashsdk[milvus]')")
    p.add_argument("--report", type=Path, default=None,
                   help=f"where to write the ingest report (default: OUT/{REPORT_NAME}; none for a Milvus index)")
    p.add_argument("--split", default=None, help="index only rows of this split (e.g. test)")
    p.add_argument("--split-column", default="split")
    p.add_argument("--id-column", default="id")
    p.add_argument("--value-map", action="append", metavar="ATTR:RAW=VALUE|FILE.json",
                   help="map a label spelling to a schema value, e.g. articleType:T-Shirt=Tshirts; repeatable")
    p.add_argument("--strict", action="store_true", help="fail on any row that would be skipped or cell that "
                                                         "matches no value, instead of reporting it")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("embed", parents=[common], help="embed a catalog into Parquet shards, one per image source",
                       description="Each image source (a tar shard or a folder) becomes one Parquet shard of ids, "
                                   "embeddings, labels and predictions under OUT, recorded in OUT/shards.json; a "
                                   "re-run skips recorded shards. fashsdk index --from-embeddings OUT builds the "
                                   "index from them. Needs pyarrow (pip install 'fashsdk[shards]').")
    p.add_argument("--labels", required=True, type=Path, help="labels CSV: an id column and attribute columns")
    p.add_argument("--images", required=True, nargs="+", help="image tar shards or folders, one shard each")
    p.add_argument("--out", required=True, type=Path, help="folder for the shards")
    p.add_argument("--split", default=None, help="embed only rows of this split (e.g. test)")
    p.add_argument("--split-column", default="split")
    p.add_argument("--id-column", default="id")
    p.add_argument("--ray", action="store_true", help="run on Ray Data (a local instance sized to this machine, or "
                                                      "--address); pip install 'fashsdk[distributed]'")
    p.add_argument("--address", help="with --ray: join this Ray cluster (e.g. ray://head:10001)")
    p.add_argument("--actors", type=_positive_int, default=None, help="with --ray: model actors (default: CPUs)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("search", parents=[common], help="search the index, optionally changing attributes")
    p.add_argument("--index", required=True, type=index_location, help="index folder or milvus:// address")
    p.add_argument("--query", required=True, help="an indexed id or an image path")
    p.add_argument("--change", action="append", metavar="ATTR=VALUE", help="repeat for several attributes")
    p.add_argument("--where", action="append", metavar="ATTR=V1[,V2]", help="keep only items with these values")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exact", action="store_true", help="exact search instead of the hnswlib graph")
    p.add_argument("--sheet", type=Path, help="write a PNG contact sheet here")
    p.add_argument("--images", nargs="+", help="image folder or tar shards, for --sheet")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("similar", parents=[common], help="items similar with respect to one attribute only")
    p.add_argument("--index", required=True, type=index_location, help="index folder or milvus:// address")
    p.add_argument("--query", required=True, help="an indexed id or an image path")
    p.add_argument("--attribute", required=True, help="the attribute to be similar on, e.g. baseColour")
    p.add_argument("--where", action="append", metavar="ATTR=V1[,V2]", help="keep only items with these values")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--exact", action="store_true", help="exact search instead of the attribute's graph")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("complete", parents=[common], help="the items of a category that best complete an outfit",
                       description="Needs a bundle with an outfit head (python -m export outfit-head).")
    p.add_argument("--index", required=True, type=index_location, help="index folder or milvus:// address")
    p.add_argument("--items", required=True, nargs="+", help="the outfit: indexed ids or image paths")
    p.add_argument("--category", required=True, help="the wanted outfit category, e.g. Shoes")
    p.add_argument("--where", action="append", metavar="ATTR=V1[,V2]", help="keep only items with these values")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--sheet", type=Path, help="write a PNG: the outfit, then its completions")
    p.add_argument("--images", nargs="+", help="image folders or tar shards, for --sheet")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("predict", parents=[common], help="each attribute's most likely values for images or ids")
    p.add_argument("items", nargs="+", help="image paths, or ids of an --index")
    p.add_argument("--index", type=index_location, default=None, help="an index, so that its ids can be given")
    p.add_argument("--top", type=_positive_int, default=3, help="values per attribute (default 3)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("keygen", help="make an ed25519 key pair for signing bundles and indexes")
    p.add_argument("--out", required=True, type=Path, help="folder for signing.key (private) and signing.pub")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign bundle or index folders (their manifest, which pins every file)")
    p.add_argument("--key", required=True, type=Path, help="a private key made by fashsdk keygen")
    p.add_argument("folders", nargs="+", type=Path, help="bundle or index folders")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("info", parents=[common], help="versions, engine, schema and index statistics")
    p.add_argument("--index", type=index_location, default=None)
    p.add_argument("--values", action="store_true", help="list every attribute's values in full")
    p.set_defaults(func=cmd_info)

    from .serve.command import add_serve_parser  # FastAPI and uvicorn are imported only when `serve` runs

    add_serve_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success; 2 with a one-line 'fashsdk: error: ...' for bad arguments, inputs or files."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args))
    except FashsdkError as exc:
        print(f"fashsdk: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fashsdk info | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # unwritable output, full disk, unreadable input: the OS names the file
        print(f"fashsdk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fashsdk: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
