"""``fashsdk serve``: the HTTP API and shop page on one port, with uvicorn.

Importing this module needs neither FastAPI nor uvicorn (the command line registers the
subcommand through ``add_serve_parser``); running it does, and says how to install them.
The port opens at once; /readyz turns ready when the bundle and index are loaded, and a load
that fails stops the server with the error (exit 2). SIGTERM or Ctrl-C stops accepting
connections and lets requests in flight finish (up to ``--grace-s``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import FashsdkError
from ..index.milvus_target import index_location

log = logging.getLogger("fashsdk.serve")
DESCRIPTION = ("Serve the HTTP API (/v1; OpenAPI at /docs; /livez, /readyz, /metrics) and the shop page (/) on one "
               "port. SIGTERM lets requests in flight finish.")
INSTALL_HINT = "fashsdk serve needs the serve extra: pip install 'fashsdk[serve]' (fastapi, uvicorn, python-multipart)"


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve options (beside --bundle and --threads, which the CLI's common parent gives)."""
    p.add_argument("--index", required=True, type=index_location,
                   help="the catalog index: a directory (fashsdk index --out) or a milvus:// address")
    p.add_argument("--images", nargs="+", help="the catalog's image folders or tar shards, for item photos")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=_positive(int), default=None,
                   help="requests computed at once, in threads (default: twice the usable cores)")
    p.add_argument("--max-upload-mb", type=_positive(float), default=10.0, help="largest request body (default 10)")
    p.add_argument("--timeout-s", type=_positive(float), default=30.0, help="answer 504 after this (default 30)")
    p.add_argument("--grace-s", type=_positive(float), default=30.0,
                   help="on SIGTERM, how long requests in flight may take to finish (default 30)")
    p.add_argument("--prepare-filters", action="store_true",
                   help="build every where-filter graph before turning ready (slower start, more memory; else the "
                        "first filtered search on each value builds its own)")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


def add_serve_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``fashsdk serve`` on the CLI's subparsers (``common`` gives --bundle and --threads)."""
    p = subparsers.add_parser("serve", parents=[common], help="serve the HTTP API and the shop page",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=cmd_serve)
    return p


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401 - present, or say how to install it before anything loads

        from .app import create_app
        from .limits import ServeLimits
    except ImportError as exc:
        raise FashsdkError(f"{INSTALL_HINT}; missing: {exc.name}") from None
    from ..retriever import Retriever

    defaults = ServeLimits()
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), request_timeout_s=args.timeout_s,
                         workers=args.workers or defaults.workers)
    failures: list[BaseException] = []
    server: list[Any] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)
        if server:
            server[0].should_exit = True  # what SIGTERM does: stop, and say why below

    app = create_app(lambda: Retriever(args.bundle, args.index, threads=args.threads), images=args.images,
                     limits=limits, prepare_filters=args.prepare_filters, on_load_failure=failed)
    print(f"fashsdk: serving on http://{args.host}:{args.port}/ (API docs at /docs); loading {args.bundle} and "
          f"{args.index}", file=sys.stderr, flush=True)
    run_server(app, args.host, args.port, grace_s=args.grace_s, access_log=args.access_log, started=server.append)
    if failures:
        exc = failures[0]
        raise exc if isinstance(exc, (FashsdkError, OSError)) else FashsdkError(f"{type(exc).__name__}: {exc}")
    return 0


def run_server(app: Any, host: str, port: int, *, grace_s: float = 30.0, access_log: bool = False,
               started: Callable[[Any], None] | None = None) -> None:
    """Run ``app`` with uvicorn until SIGTERM/SIGINT (or ``server.should_exit``); requests in flight
    then get ``grace_s`` seconds to finish while new connections are refused."""
    import uvicorn

    level = logging.getLevelName(logging.getLogger("fashsdk").getEffectiveLevel()).lower()
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log, timeout_graceful_shutdown=grace_s,
                            log_level=level if level in uvicorn.config.LOG_LEVELS else "info", lifespan="on")
    server = uvicorn.Server(config)
    if started is not None:
        started(server)
    server.run()


def build_parser() -> argparse.ArgumentParser:
    """``python -m fashsdk.serve``: the same options as ``fashsdk serve``."""
    p = argparse.ArgumentParser(prog="python -m fashsdk.serve", description=DESCRIPTION)
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory (made by python -m export onnx)")
    p.add_argument("--threads", type=_positive(int), default=None, help="inference threads per request")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: in detail)")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 after a clean shutdown; 2 with 'fashsdk: error: ...' when the bundle or index cannot be served."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return cmd_serve(args)
    except (FashsdkError, OSError) as exc:
        print(f"fashsdk: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
