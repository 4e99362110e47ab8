"""Attribute schema: attribute names, their values, and the global value numbering.

The memory block of ADDE has one column per (attribute, value) pair; the global column of
value v of attribute a is ``offsets[a] + v``. The schema travels in the bundle manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import QueryError, unknown_name_message

UNKNOWN = -1


@dataclass(frozen=True)
class Attribute:
    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class AttributeSchema:
    attributes: tuple[Attribute, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> "AttributeSchema":
        return cls(tuple(Attribute(str(k), tuple(str(v) for v in vs)) for k, vs in data.items()))

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": a.name, "values": list(a.values)} for a in self.attributes]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> "AttributeSchema":
        attrs = []
        for item in data:
            values = tuple(str(v) for v in item["values"])
            if len(set(values)) != len(values) or not values:
                raise ValueError(f"attribute {item['name']!r} has empty or duplicate values")
            attrs.append(Attribute(str(item["name"]), values))
        if len({a.name for a in attrs}) != len(attrs) or not attrs:
            raise ValueError("schema has no attributes or duplicate attribute names")
        return cls(tuple(attrs))

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def sizes(self) -> list[int]:
        return [len(a.values) for a in self.attributes]

    @property
    def offsets(self) -> list[int]:
        return list(accumulate(self.sizes[:-1], initial=0))

    @property
    def total_values(self) -> int:
        return sum(self.sizes)

    def attribute_index(self, name: str) -> int:
        for i, a in enumerate(self.attributes):
            if a.name == name:
                return i
        raise QueryError(unknown_name_message("attribute", name, self.names))

    def value_index(self, attribute: int | str, value: str) -> int:
        a = self.attribute_index(attribute) if isinstance(attribute, str) else attribute
        values = self.attributes[a].values
        try:
            return values.index(value)
        except ValueError:
            raise QueryError(
                unknown_name_message(f"value for {self.attributes[a].name!r}", value, values)
            ) from None

    def decode(self, codes: np.ndarray) -> dict[str, str | None]:
        """Codes (A,) -> {attribute: value or None when unknown}."""
        return {
            a.name: (a.values[int(c)] if int(c) != UNKNOWN else None)
            for a, c in zip(self.attributes, codes)
        }

    def encode(self, labels: Mapping[str, str | None]) -> np.ndarray:
        """{attribute: value} -> codes (A,); missing or None means unknown."""
        for name in labels:
            self.attribute_index(name)
        codes = np.full(len(self.attributes), UNKNOWN, dtype=np.int16)
        for i, a in enumerate(self.attributes):
            value = labels.get(a.name)
            if value is not None:
                codes[i] = self.value_index(i, value)
        return codes
