"""Typed errors: every failure a user can cause names the problem and the fix."""
from __future__ import annotations

import difflib
from typing import Iterable


class FashsdkError(Exception):
    """Base class for every error fashsdk raises on purpose."""


class BundleError(FashsdkError):
    """A bundle (model, prototypes, manifest) is missing, corrupt, tampered or too new."""


class IndexFileError(FashsdkError):
    """A persisted index or its sidecar is missing, corrupt, tampered or too new."""


class ImageError(FashsdkError, ValueError):
    """An image could not be decoded or is not usable as model input."""


class QueryError(FashsdkError, ValueError):
    """A search or predict call has bad arguments (unknown names, bad k, unknown id)."""


class CatalogError(FashsdkError, ValueError):
    """A labels table or image source is malformed."""


def closest_match(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name, for 'did you mean' hints (case-insensitive first)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not found:
        found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.5)
        found = [lowered[f] for f in found]
    return found[0] if found else None


def unknown_name_message(kind: str, name: object, choices: Iterable[str]) -> str:
    """'unknown attribute 'colour'; did you mean 'baseColour'? valid: ...'."""
    choices = list(choices)
    hint = closest_match(str(name), choices)
    text = f"unknown {kind} {name!r}"
    if hint is not None:
        text += f"; did you mean {hint!r}?"
    shown = ", ".join(repr(c) for c in choices[:60])
    more = f" (and {len(choices) - 60} more)" if len(choices) > 60 else ""
    return f"{text} Valid choices: {shown}{more}."
