"""Model families: one file each behind the ``Family`` protocol (base.py).

The bundle manifest names its family; ``load_family`` imports that family's module and
builds it from the bundle's checksummed files. Adding a family is one file here plus its
name in FAMILIES.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import BundleError
from .base import NO_CHANGE, Family

if TYPE_CHECKING:
    from ..bundle import Bundle

# name -> "module:Class" (imported lazily: a family's dependencies load only when it is used)
FAMILIES = {
    "adde": ".adde:Adde",
    "chunk_replace": ".chunk_replace:ChunkReplace",
    "fsn": ".fsn:FashionSearchNetFamily",
    "generator": ".generator:Generator",
    "blend": ".blend:Blend",
}


def load_family(bundle: "Bundle") -> Family:
    """The bundle's family, built from its verified files."""
    name = bundle.family_name
    if name not in FAMILIES:
        raise BundleError(f"bundle {str(bundle.directory)!r} is of model family {name!r}, which this fashsdk does "
                          f"not know (known: {sorted(FAMILIES)}); upgrade fashsdk")
    module_name, class_name = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module_name, __package__), class_name).from_bundle(bundle)


__all__ = ["FAMILIES", "NO_CHANGE", "Family", "load_family"]
