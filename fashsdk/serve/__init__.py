"""fashsdk's HTTP API and shop page (the ``serve`` extra: FastAPI, uvicorn, python-multipart).

    from fashsdk import Retriever
    from fashsdk.serve import create_app
    app = create_app(Retriever("runs/demo/bundle", "runs/demo/index"), images="../shared/data/myntra-small")
    # mount `app` in your own ASGI app, or run it: uvicorn.run(app)

or from the shell: ``fashsdk serve --bundle B --index I [--images DIR_OR_TARS] [--port 8000]``.
Importing this package does not import FastAPI (so the command line can register ``serve``
without it); ``create_app`` and ``ServeLimits`` do, on first use.
"""
from __future__ import annotations

from typing import Any

from .command import add_serve_parser, main

__all__ = ["ServeLimits", "add_serve_parser", "create_app", "main"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServeLimits":
        from .limits import ServeLimits

        return ServeLimits
    raise AttributeError(f"module 'fashsdk.serve' has no attribute {name!r}")
