"""The HTTP API's JSON shapes (pydantic models): what /v1 takes and returns, and so its OpenAPI.

Requests forbid unknown fields, so a misspelt field ("chnage") is a 422 naming it rather than
a silently ignored option. Ids are strings; attribute and value names are checked by the SDK
(with its did-you-mean text), not here, so one schema serves every bundle.
"""
from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_K = 1000  # results per query: more is a scan of the catalog, not a search
MAX_TOP = 100  # values per attribute in a prediction
MAX_PAGE = 200  # items per browse page
MAX_ID = 512  # the SDK's own limit on an id's length

ItemId = Field(min_length=1, max_length=MAX_ID, description="an id of the catalog index", examples=["5992"])
Where = dict[str, Union[str, list[str]]]
WHERE_DOC = ('keep items whose values match: {"gender": "Women", "usage": ["Casual", "Sports"]} '
             "(values of one attribute ORed, attributes ANDed)")
CHANGE_DOC = 'attribute -> wanted value, e.g. {"baseColour": "Red"}; several attributes change together'


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Request):
    """Search with an indexed item as the query, after changing some of its attributes."""

    id: str = ItemId
    change: Optional[dict[str, str]] = Field(None, description=CHANGE_DOC)
    k: int = Field(10, ge=1, le=MAX_K, description="number of results")
    where: Optional[Where] = Field(None, description=WHERE_DOC)
    include_query: bool = Field(False, description="keep the query item in its own results")


class SimilarRequest(Request):
    """Items similar to an indexed item with respect to one attribute only."""

    id: str = ItemId
    attribute: str = Field(min_length=1, max_length=200, description="the attribute to be similar on",
                           examples=["baseColour"])
    k: int = Field(10, ge=1, le=MAX_K)
    where: Optional[Where] = Field(None, description=WHERE_DOC)


class PredictRequest(Request):
    """What the index knows of an item's attributes (its label, else the prediction made when indexed)."""

    id: str = ItemId
    top: int = Field(3, ge=1, le=MAX_TOP, description="values per attribute (images only; ids have one)")


class EmbedRequest(Request):
    """The stored embedding of an indexed item."""

    id: str = ItemId


class BrowseRequest(Request):
    """A page of the catalog in index order, optionally filtered."""

    offset: int = Field(0, ge=0, le=10_000_000)
    limit: int = Field(24, ge=1, le=MAX_PAGE)
    where: Optional[Where] = Field(None, description=WHERE_DOC)


class Item(BaseModel):
    """A catalog item: its values (stored label, else the model's) and, when a value is the
    model's, that prediction's probability in ``predicted``."""

    id: str
    score: Optional[float] = Field(None, description="cosine similarity to the (changed) query; None when browsing")
    attributes: dict[str, Optional[str]]
    predicted: dict[str, Optional[float]]
    image: Optional[str] = Field(None, description="URL of the item's photo, when the server has the catalog images")


class Timings(BaseModel):
    encode_ms: float = Field(description="decoding and encoding the uploaded image (0 for an id)")
    search_ms: float = Field(description="everything else: vector arithmetic, index search, labels")


class SearchResponse(BaseModel):
    query: Optional[str] = Field(description="the query's id; None for an uploaded image")
    change: dict[str, str]
    attribute: Optional[str] = Field(None, description="the attribute of a similar search")
    results: list[Item]
    timings: Timings


class ValuePrediction(BaseModel):
    value: str
    probability: Optional[float] = Field(description="None for a stored label")
    source: str = Field(description='"model" (just now), "label" (stored), "indexed" (predicted when indexed)')


class PredictResponse(BaseModel):
    id: Optional[str]
    attributes: dict[str, list[ValuePrediction]]
    timings: Timings


class EmbedResponse(BaseModel):
    id: Optional[str]
    dim: int
    embedding: list[float]
    layout: dict[str, list[int]] = Field(description="each attribute's [start, stop) slice of the embedding")
    timings: Timings


class Attribute(BaseModel):
    name: str
    values: list[str]


class SchemaResponse(BaseModel):
    family: str
    backend: str
    dim: int
    catalog_items: int
    images: bool = Field(description="whether the server can show item photos")
    attributes: list[Attribute]


class BrowseResponse(BaseModel):
    total: int = Field(description="items matching the filter")
    offset: int
    items: list[Item]


class Health(BaseModel):
    status: str
    detail: Optional[str] = None


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx: the problem and its fix in ``detail``, the error's kind in ``type``."""

    detail: str
    type: str
