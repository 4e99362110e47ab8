"""The HTTP API and the shop page: ``create_app(retriever)`` returns a FastAPI app.

One process, one index in memory, requests computed in a bounded pool of threads (ONNX
Runtime and hnswlib release the GIL). JSON in and out under /v1 (OpenAPI at /docs), uploads
as multipart form data, /livez, /readyz and /metrics beside it, and the shop page at /.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, Optional, Sequence, TypeVar
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError

from ..retriever import Retriever
from ..tasks import Prediction
from .fast_path import FastQueries, search_payload
from .errors import ERROR_RESPONSES, RequestTimeout, Unprocessable, UnsupportedImage, install_handlers
from .images import MAGIC, CatalogImages, content_type
from .limits import BodyLimit, RequestMetrics, ServeLimits
from .metrics import Metrics
from .schemas import (
    MAX_K,
    MAX_TOP,
    Attribute,
    BrowseRequest,
    BrowseResponse,
    EmbedRequest,
    EmbedResponse,
    Health,
    Item,
    PredictRequest,
    PredictResponse,
    SchemaResponse,
    SearchRequest,
    SearchResponse,
    SimilarRequest,
    Timings,
    ValuePrediction,
    Where,
)
from .service import Query, Service, Timer
from .state import Readiness

STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")
ImageSources = str | os.PathLike | Sequence[str | os.PathLike] | CatalogImages | None

_CHANGE = TypeAdapter(dict[str, str])
_WHERE = TypeAdapter(Where)
# multipart form fields of the upload endpoints (change and where are JSON objects in a text field)
Photo = Annotated[UploadFile, File(description="the photo: JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF")]
ChangeField = Annotated[Optional[str], Form(description='JSON object: attribute -> value, e.g. {"baseColour": "Red"}')]
WhereField = Annotated[Optional[str], Form(description='JSON object, e.g. {"gender": "Women", "usage": ["Casual"]}')]
KField = Annotated[int, Form(ge=1, le=MAX_K, description="number of results")]
AttributeField = Annotated[str, Form(min_length=1, max_length=200, description="the attribute to be similar on")]
TopField = Annotated[int, Form(ge=1, le=MAX_TOP, description="values per attribute")]


def create_app(retriever: Retriever | Callable[[], Retriever], *, images: ImageSources = None,
               limits: ServeLimits | None = None, prepare_filters: bool = False,
               on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The API over one retriever (with its index).

    retriever: a ``Retriever`` with an index (the app is ready at once), or a function that
        makes one, run in a background thread when the app starts (/readyz says when it is done).
    images: the catalog's image folders or tar shards, for item photos on the shop page.
    limits: upload size, request timeout and worker threads (``ServeLimits``).
    prepare_filters: build every ``where`` graph before turning ready (else each is built by the
        first filtered search on its value).
    on_load_failure: called with the exception when a background load fails.
    """
    limits = limits or ServeLimits()
    metrics, readiness = Metrics(), Readiness()
    limiter: list[anyio.CapacityLimiter] = []

    def prepare(r: Retriever) -> Service:
        store = images if isinstance(images, CatalogImages) or images is None else CatalogImages(images)
        service = Service(r, store, image_url=lambda item_id: "/v1/images/" + quote(item_id, safe=""))
        service.warm_up(filters=prepare_filters)
        return service

    if isinstance(retriever, Retriever):
        start = time.perf_counter()
        readiness.set_ready(prepare(retriever), time.perf_counter() - start)
    elif not callable(retriever):
        raise TypeError(f"create_app takes a Retriever or a function returning one, got {type(retriever).__name__}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if readiness.service is None:
            readiness.load_in_background(lambda: prepare(retriever()), on_load_failure)  # type: ignore[operator]
        yield
        if readiness.service is not None and readiness.service.images is not None:
            readiness.service.images.close()

    app = FastAPI(title="fashsdk", version=_version(), lifespan=lifespan,
                  description="Fashion retrieval with attribute manipulation: search a catalog with an item or a "
                              "photo, changing some of its attributes (\"this shirt, but in red\").")
    app.state.readiness, app.state.metrics, app.state.limits = readiness, metrics, limits
    install_handlers(app)
    metrics.gauge("fashsdk_ready", "1 once the bundle is verified, the index loaded and the engine warm.",
                  lambda: float(readiness.service is not None))
    metrics.gauge("fashsdk_catalog_items", "Items in the catalog index.",
                  lambda: float(len(readiness.service.index)) if readiness.service else 0.0)

    async def run(request: Request, job: Callable[[Service, Timer], T]) -> tuple[T, Timings]:
        """``job`` in a worker thread under the request timeout; its stages timed into /metrics."""
        service = readiness.require()
        if not limiter:
            limiter.append(anyio.CapacityLimiter(limits.workers))
        timer = Timer()

        def work() -> T:
            timer.started = time.perf_counter()
            try:
                return job(service, timer)
            finally:
                timer.finished = time.perf_counter()  # in the thread: the hop back to the loop is not search

        try:
            with anyio.fail_after(limits.request_timeout_s):
                result = await anyio.to_thread.run_sync(work, limiter=limiter[0], abandon_on_cancel=True)
        except TimeoutError:
            raise RequestTimeout(f"the request took longer than the server's {limits.request_timeout_s:g} s "
                                 "limit; ask for fewer results (k) or retry") from None
        total = timer.finished - timer.started
        endpoint = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.stage(endpoint, "search", max(0.0, total - timer.encode))
        if timer.encode:
            metrics.stage(endpoint, "encode", timer.encode)
        return result, Timings(encode_ms=round(1000 * timer.encode, 3),
                               search_ms=round(1000 * max(0.0, total - timer.encode), 3))

    v1: dict[str, Any] = {"responses": ERROR_RESPONSES}

    # ---- search ------------------------------------------------------------------------
    @app.post("/v1/search", response_model=SearchResponse, tags=["search"], **v1)
    async def search_by_id(body: SearchRequest, request: Request) -> Response:
        """Catalog items like the indexed item ``id`` after ``change``: "this one, but in red"."""
        found, timings = await run(request, lambda s, t: s.search(body.id, body.change, body.k, body.where,
                                                                  body.include_query, t))
        return _found(body.id, body.change, None, found, timings)

    @app.post("/v1/search/image", response_model=SearchResponse, tags=["search"], **v1)
    async def search_by_image(request: Request, image: Photo, change: ChangeField = None, k: KField = 10,
                              where: WhereField = None) -> Response:
        """Catalog items like an uploaded photo after ``change``."""
        data = await _upload(image)
        wanted, only = _form_json("change", change, _CHANGE), _form_json("where", where, _WHERE)
        found, timings = await run(request, lambda s, t: s.search(data, wanted, k, only, False, t))
        return _found(None, wanted, None, found, timings)

    @app.post("/v1/similar", response_model=SearchResponse, tags=["search"], **v1)
    async def similar_by_id(body: SimilarRequest, request: Request) -> Response:
        """Items similar to ``id`` with respect to one attribute only (the same colour, whatever the garment)."""
        found, timings = await run(request, lambda s, t: s.similar(body.id, body.attribute, body.k, body.where, t))
        return _found(body.id, None, body.attribute, found, timings)

    @app.post("/v1/similar/image", response_model=SearchResponse, tags=["search"], **v1)
    async def similar_by_image(request: Request, image: Photo, attribute: AttributeField, k: KField = 10,
                               where: WhereField = None) -> Response:
        """Items similar to an uploaded photo with respect to one attribute only."""
        data, only = await _upload(image), _form_json("where", where, _WHERE)
        found, timings = await run(request, lambda s, t: s.similar(data, attribute, k, only, t))
        return _found(None, None, attribute, found, timings)

    # ---- predict and embed -------------------------------------------------------------
    @app.post("/v1/predict", response_model=PredictResponse, tags=["attributes"], **v1)
    async def predict_by_id(body: PredictRequest, request: Request) -> PredictResponse:
        """An indexed item's values: its stored label, else the prediction made when it was indexed."""
        found, timings = await run(request, lambda s, t: s.predict(body.id, body.top, t))
        return PredictResponse(id=body.id, attributes=_predictions(found), timings=timings)

    @app.post("/v1/predict/image", response_model=PredictResponse, tags=["attributes"], **v1)
    async def predict_by_image(request: Request, image: Photo, top: TopField = 3) -> PredictResponse:
        """Each attribute's ``top`` most likely values for an uploaded photo, with probabilities."""
        data = await _upload(image)
        found, timings = await run(request, lambda s, t: s.predict(data, top, t))
        return PredictResponse(id=None, attributes=_predictions(found), timings=timings)

    @app.post("/v1/embed", response_model=EmbedResponse, tags=["attributes"], **v1)
    async def embed_by_id(body: EmbedRequest, request: Request) -> EmbedResponse:
        """An indexed item's stored embedding (L2-normalised; attribute chunks side by side)."""
        vector, timings = await run(request, lambda s, t: s.embed(body.id, t))
        return _embedding(readiness.require(), body.id, vector, timings)

    @app.post("/v1/embed/image", response_model=EmbedResponse, tags=["attributes"], **v1)
    async def embed_by_image(request: Request, image: Photo) -> EmbedResponse:
        """The embedding of an uploaded photo."""
        data = await _upload(image)
        vector, timings = await run(request, lambda s, t: s.embed(data, t))
        return _embedding(readiness.require(), None, vector, timings)

    # ---- catalog -----------------------------------------------------------------------
    @app.get("/v1/schema", response_model=SchemaResponse, tags=["catalog"], **v1)
    async def schema() -> SchemaResponse:
        """The attributes and their values (what ``change`` and ``where`` accept), the engine and catalog size."""
        s = readiness.require()
        r = s.retriever
        return SchemaResponse(family=r.family.name, backend=r.backend_name, dim=r.bundle.dim,
                              catalog_items=len(s.index), images=s.images is not None,
                              attributes=[Attribute(name=a.name, values=list(a.values)) for a in r.schema.attributes])

    @app.post("/v1/browse", response_model=BrowseResponse, tags=["catalog"], **v1)
    async def browse(body: BrowseRequest, request: Request) -> BrowseResponse:
        """A page of the catalog in index order, optionally only items matching ``where``."""
        (total, page), _ = await run(request, lambda s, t: s.browse(body.offset, body.limit, body.where))
        return BrowseResponse(total=total, offset=body.offset, items=page)

    @app.get("/v1/items/{item_id:path}", response_model=Item, tags=["catalog"], **v1)
    async def item(item_id: str, request: Request) -> Any:
        """An item's values and the URL of its photo (when the server has the catalog's images)."""
        found, _ = await run(request, lambda s, t: s.item(item_id))
        return found

    image_types = sorted({kind for _, _, kind in MAGIC} | {"application/octet-stream"})

    @app.get("/v1/images/{item_id:path}", tags=["catalog"], response_class=Response,
             responses={**ERROR_RESPONSES, 200: {"description": "the item's photo, as stored",
                                                 "content": {kind: {} for kind in image_types}}})
    async def item_image(item_id: str, request: Request) -> Response:
        """An item's photo from the catalog's image folders or tar shards."""
        data, _ = await run(request, lambda s, t: s.image(item_id))
        return Response(data, media_type=content_type(data),
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})

    # ---- operations --------------------------------------------------------------------
    @app.get("/livez", response_model=Health, tags=["operations"])
    async def livez() -> Health:
        """The process answers (it may still be loading)."""
        return Health(status="alive")

    @app.get("/readyz", response_model=Health, tags=["operations"],
             responses={503: {"model": Health, "description": "loading, or the load failed (detail says why)"}})
    async def readyz() -> Any:
        """Ready once the bundle is verified, the index loaded and the engine has run once."""
        if readiness.service is None:
            return JSONResponse(Health(status=readiness.status, detail=readiness.detail).model_dump(), status_code=503)
        return Health(status="ready", detail=readiness.detail)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"],
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def prometheus() -> PlainTextResponse:
        """Request counts and latency histograms per endpoint; encode and search time apart."""
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    async def shop_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(FastQueries, readiness=readiness, metrics=metrics,
                       routes={route.path: route for route in app.routes if isinstance(getattr(route, "path", None), str)})
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, timeout_s=limits.request_timeout_s)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: refused requests are counted too
    return app


def _found(query: str | None, change: dict[str, str] | None, attribute: str | None, results: list[dict[str, Any]],
           timings: Timings) -> Response:
    """A ``SearchResponse`` serialised once (as a model, FastAPI would validate every result again)."""
    return Response(search_payload(query, change, attribute, results, timings.encode_ms, timings.search_ms),
                    media_type="application/json")


async def _upload(image: UploadFile) -> bytes:
    """The uploaded bytes; a part declared as something other than an image is a 415."""
    declared = (image.content_type or "").split(";")[0].strip().lower()
    if declared and not declared.startswith("image/") and declared != "application/octet-stream":
        raise UnsupportedImage(f"the upload {image.filename or ''!r} is {declared}, not an image; upload a photo "
                               "(JPEG, PNG, WebP, AVIF, GIF, BMP or TIFF)")
    data = await image.read()
    if not data:
        raise Unprocessable("the uploaded image is empty; upload a photo file")
    return data


def _form_json(name: str, text: str | None, shape: TypeAdapter) -> Any:
    """A form field holding JSON (``change``, ``where``), checked against its shape."""
    if text is None or not text.strip():
        return None
    try:
        return shape.validate_python(json.loads(text))
    except (ValueError, ValidationError) as exc:
        example = '{"baseColour": "Red"}' if name == "change" else '{"gender": ["Women"]}'
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise Unprocessable(f"form field {name!r} must be a JSON object such as {example}: {first}") from None


def _predictions(found: Prediction) -> dict[str, list[ValuePrediction]]:
    return {name: [ValuePrediction(value=p.value, probability=p.probability, source=p.source) for p in values]
            for name, values in found.items()}


def _embedding(service: Service, item_id: Query | None, vector: Any, timings: Timings) -> EmbedResponse:
    layout = {name: [int(a), int(b)] for name, (a, b) in service.retriever.bundle.layout.items()}
    return EmbedResponse(id=item_id if isinstance(item_id, str) else None, dim=len(vector),
                         embedding=[float(v) for v in vector], layout=layout, timings=timings)


def _version() -> str:
    from .. import __version__

    return __version__
