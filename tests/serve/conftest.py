"""The serve layer: the HTTP API and shop page over the real test bundle and index.

Skipped, with the reason, where the ``serve`` extra is not installed. Like the runtime layer,
torch is unimportable inside every test: the server is runtime code.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="the serve tests need httpx (the dev extra)")

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    # starlette's TestClient prefers httpx2 now; httpx (what schemathesis and these tests use) still works
    config.addinivalue_line("filterwarnings", "ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(autouse=True)
def torch_unimportable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "torch", None)
    yield


@pytest.fixture(scope="session")
def catalog_images_dir(tmp_path_factory: pytest.TempPathFactory, real_subset_data) -> Path:
    """The real subset's photos as a folder of <id>.jpg: the server's catalog image source."""
    folder = tmp_path_factory.mktemp("serve_images")
    for item_id, data in real_subset_data.images.items():
        (folder / f"{item_id}.jpg").write_bytes(data)
    return folder


@pytest.fixture(scope="session")
def serve_app(real_retriever, catalog_images_dir: Path):
    from fashsdk.serve import create_app

    return create_app(real_retriever, images=catalog_images_dir)


@pytest.fixture(scope="session")
def client(serve_app):
    from fastapi.testclient import TestClient

    with TestClient(serve_app) as c:
        yield c
