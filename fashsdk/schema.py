"""Attribute schema: attribute names, their values, and the global value numbering.

Value v of attribute a has the global column ``offsets[a] + v`` (ADDE's memory block, the
logits, chunk_replace's value table all use it). The schema travels in the bundle manifest,
and every name a user passes (a change, a ``where`` filter, labels) is checked here, with a
did-you-mean error for anything unknown.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import QueryError, unknown_name_message

UNKNOWN = -1
_SEPARATORS = str.maketrans("", "", " -_/.'")


def loose_key(text: str) -> str:
    """How a value is matched when not written exactly: case and separators ignored ("t-shirt" ~ "T Shirt")."""
    return text.strip().lower().translate(_SEPARATORS)

Change = Mapping[str, str]
Where = Mapping[str, "str | Sequence[str]"]


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

    @cached_property
    def loose_values(self) -> list[dict[str, int]]:
        """Per attribute, loose key -> value index (keys two values share are left out: ambiguous)."""
        out = []
        for a in self.attributes:
            keys = [loose_key(v) for v in a.values]
            out.append({k: i for i, k in enumerate(keys) if keys.count(k) == 1})
        return out

    @cached_property
    def value_tables(self) -> list[dict[int, str | None]]:
        """Per attribute, code -> value name (UNKNOWN -> None): decoding without numpy calls."""
        return [{UNKNOWN: None, **dict(enumerate(a.values))} for a in self.attributes]

    def attribute_index(self, name: str) -> int:
        for i, a in enumerate(self.attributes):
            if a.name == name:
                return i
        raise QueryError(unknown_name_message("attribute", name, self.names))

    def value_index(self, attribute: int | str, value: str) -> int:
        found = self.find_value(attribute, value)
        if found is None:
            a = self.attribute_index(attribute) if isinstance(attribute, str) else attribute
            raise QueryError(unknown_name_message(f"value for {self.attributes[a].name!r}", value,
                                                  self.attributes[a].values))
        return found

    def find_value(self, attribute: int | str, value: str) -> int | None:
        """The value's index: exact, else ignoring case and separators ("red" -> "Red"); None if neither."""
        a = self.attribute_index(attribute) if isinstance(attribute, str) else attribute
        values = self.attributes[a].values
        if value in values:
            return values.index(value)
        return self.loose_values[a].get(loose_key(value))

    def decode(self, codes: Sequence[int] | np.ndarray) -> dict[str, str | None]:
        """Codes (A,) -> {attribute: value or None when unknown}; a code outside the schema is an error."""
        try:
            return {a.name: table[int(c)] for a, table, c in zip(self.attributes, self.value_tables, codes)}
        except KeyError:
            raise QueryError(f"attribute codes {list(np.asarray(codes).tolist())} lie outside the schema "
                             f"(value counts {self.sizes})") from None

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

    def parse_change(self, change: Change | None) -> dict[int, int]:
        """{"baseColour": "Red"} -> {attribute index: value index}, with helpful errors."""
        if change is None:
            return {}
        if not isinstance(change, Mapping):
            raise QueryError(f"change must be a mapping such as {{'baseColour': 'Red'}}, got {type(change).__name__}")
        parsed: dict[int, int] = {}
        for name, value in change.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise QueryError(f"change entries must be attribute name -> value name strings, got {name!r}: {value!r}")
            a = self.attribute_index(name)
            parsed[a] = self.value_index(a, value)
        return parsed

    def parse_where(self, where: Where | None) -> dict[int, frozenset[int]]:
        """{"gender": "Women", "usage": ["Casual", "Sports"]} -> {attribute index: allowed value indices}.

        Attributes are ANDed, the values listed for one attribute are ORed.
        """
        if where is None:
            return {}
        if not isinstance(where, Mapping):
            raise QueryError(f"where must be a mapping such as {{'gender': 'Women'}}, got {type(where).__name__}")
        parsed: dict[int, frozenset[int]] = {}
        for name, wanted in where.items():
            if not isinstance(name, str):
                raise QueryError(f"where keys must be attribute names, got {name!r}")
            a = self.attribute_index(name)
            values = [wanted] if isinstance(wanted, str) else wanted
            if isinstance(values, (bytes, Mapping)) or not isinstance(values, Sequence) or not values:
                raise QueryError(f"where[{name!r}] must be a value name or a non-empty list of them, got {wanted!r}")
            if not all(isinstance(v, str) for v in values):
                raise QueryError(f"where[{name!r}] must hold value name strings, got {wanted!r}")
            parsed[a] = frozenset(self.value_index(a, v) for v in values)
        return parsed

    def predicted_codes(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Argmax value and its softmax probability per attribute: (N, A) codes and probs."""
        logits = np.atleast_2d(logits)
        codes = np.zeros((logits.shape[0], len(self.attributes)), dtype=np.int16)
        probs = np.zeros(codes.shape, dtype=np.float32)
        for a, (offset, size) in enumerate(zip(self.offsets, self.sizes)):
            block = logits[:, offset:offset + size].astype(np.float64)
            block = np.exp(block - block.max(axis=1, keepdims=True))
            block /= block.sum(axis=1, keepdims=True)
            codes[:, a] = block.argmax(axis=1)
            probs[:, a] = block.max(axis=1)
        return codes, probs
