"""Per-request limits that protect a process serving untrusted callers: how large an image, how
many pixels, how many queries in a batch, how many results, changes and filter values.

Images are limited for every caller where they are decoded: at most ``MAX_FILE_BYTES`` (100 MiB)
encoded and ``MAX_PIXELS`` (64 M) decoded pixels, an ImageError beyond (fashsdk.sources.preprocess;
the HTTP server caps uploads lower, ``--max-upload-mb``). The rest is per ``Retriever``
(``Retriever(limits=Limits(...))``); anything over one is a ``LimitError`` naming the limit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import QueryError


class LimitError(QueryError):
    """A request is over one of the retriever's limits."""


@dataclass(frozen=True)
class Limits:
    max_k: int = 1000  # results per query
    max_batch: int = 1024  # queries in one search_batch, items in one predict_many
    max_changes: int = 16  # attributes changed in one query
    max_where_values: int = 256  # values listed for the attributes of one where filter, in all

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")

    def check(self, *, k: int | None = None, batch: int | None = None, change: Mapping | None = None,
              where: Mapping | None = None) -> None:
        if isinstance(k, int) and not isinstance(k, bool) and k > self.max_k:
            raise LimitError(f"k={k} is over this retriever's limit of {self.max_k} results "
                             "(Retriever(limits=Limits(max_k=...)) raises it)")
        if batch is not None and batch > self.max_batch:
            raise LimitError(f"{batch} queries in one call are over the limit of {self.max_batch}; split the batch "
                             "or raise Limits.max_batch")
        if isinstance(change, Mapping) and len(change) > self.max_changes:
            raise LimitError(f"{len(change)} changed attributes are over the limit of {self.max_changes}")
        if isinstance(where, Mapping):
            values = sum(1 if isinstance(v, str) else len(v) if isinstance(v, Sequence) else 1 for v in where.values())
            if values > self.max_where_values:
                raise LimitError(f"a where filter listing {values} values is over the limit of "
                                 f"{self.max_where_values}")
