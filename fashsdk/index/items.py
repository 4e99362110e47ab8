"""The item table: which ids the index holds, in which slots, with which attribute values.

A slot is a row of the vector store and a label in the graphs. Per slot the table keeps the
stored label codes (-1 = unknown) and the model's predicted codes, and it is the one owner
of the rule "an item's current value is its stored label, else the model's prediction"
(``current_codes``), which manipulation, graph layout and ``where`` filters all follow.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..errors import QueryError
from ..schema import UNKNOWN


def normalize_id(item_id: object) -> str:
    """Catalog ids are strings; ints (not bools) are accepted and stringified."""
    if type(item_id) is str and 0 < len(item_id) <= 512 and "\x00" not in item_id:
        return item_id  # the common case, checked in one line (a search pays this per excluded id)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
        raise QueryError(f"item id {item_id!r} has type {type(item_id).__name__}; ids must be str or int")
    text = str(item_id)
    if not text or len(text) > 512 or "\x00" in text:
        raise QueryError(f"item id {item_id!r} must be a non-empty string of at most 512 characters without NUL")
    return text


def id_list(ids: object) -> list[str]:
    """A sequence of ids (not one bare string, which would otherwise iterate as characters)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise QueryError(f"ids must be a list of ids, got {type(ids).__name__} {ids!r:.60}; wrap one id in a list")
    return [normalize_id(i) for i in ids]


class ItemTable:
    def __init__(self, num_attributes: int, capacity: int = 1) -> None:
        capacity = max(int(capacity), 1)
        self.num_attributes = num_attributes
        self.codes = np.full((capacity, num_attributes), UNKNOWN, np.int16)
        self.predicted = np.full((capacity, num_attributes), UNKNOWN, np.int16)
        self.current = np.full((capacity, num_attributes), UNKNOWN, np.int16)  # label, else predicted
        self.confidence = np.full((capacity, num_attributes), np.nan, np.float16)  # the prediction's probability
        self.alive = np.zeros(capacity, bool)
        self.ids: list[str | None] = []  # per used slot; None = free
        self.slot: dict[str, int] = {}
        self.free: list[int] = []  # freed slots, reused last-freed first
        self.counts = np.zeros((num_attributes, 1), np.int64)  # live items per (attribute, current code + 1)

    @classmethod
    def adopt(cls, ids: list[str | None], codes: np.ndarray, predicted: np.ndarray,
              confidence: np.ndarray | None = None) -> "ItemTable":
        """A table over loaded arrays (no copies); ``ids[s] is None`` marks a free slot."""
        table = cls(codes.shape[1], 1)
        if len(ids):
            table.codes, table.predicted = np.ascontiguousarray(codes), np.ascontiguousarray(predicted)
            table.confidence = (np.full(codes.shape, np.nan, np.float16) if confidence is None
                                else np.ascontiguousarray(confidence, np.float16))
            table.current = np.where(table.codes >= 0, table.codes, table.predicted).astype(np.int16)
            table.alive = np.array([i is not None for i in ids], bool)
        table.ids = list(ids)
        table.slot = {i: s for s, i in enumerate(ids) if i is not None}
        table.free = [s for s in range(len(ids) - 1, -1, -1) if ids[s] is None]
        table._count(table.live_slots(), 1)
        return table

    def __len__(self) -> int:
        return len(self.slot)

    def __contains__(self, key: str) -> bool:
        return key in self.slot

    @property
    def used(self) -> int:
        """Slots ever handed out (live or free); arrays are valid up to here."""
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return int(self.codes.shape[0])

    def slot_of(self, key: str) -> int:
        slot = self.slot.get(key)
        if slot is None:
            raise QueryError(f"id {key!r} is not in the index ({len(self)} items); add it first or query by image")
        return slot

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.alive[:self.used])

    def reserve(self, needed: int) -> None:
        """Grow the per-slot arrays to at least ``needed`` slots (doubling)."""
        capacity = self.capacity
        if needed <= capacity:
            return
        grown = max(needed, 2 * capacity)
        for name, fill in (("codes", UNKNOWN), ("predicted", UNKNOWN), ("current", UNKNOWN), ("confidence", np.nan)):
            array = np.full((grown, self.num_attributes), fill, getattr(self, name).dtype)
            array[:capacity] = getattr(self, name)
            setattr(self, name, array)
        alive = np.zeros(grown, bool)
        alive[:capacity] = self.alive
        self.alive = alive

    def slots_for(self, count: int) -> np.ndarray:
        """Slots for ``count`` new items: freed ones first, then new ones (call ``reserve`` for them)."""
        reuse = [self.free.pop() for _ in range(min(len(self.free), count))]
        start = len(self.ids)
        return np.array(reuse + list(range(start, start + count - len(reuse))), np.int64)

    def put(self, keys: Sequence[str], slots: np.ndarray, codes: np.ndarray, predicted: np.ndarray,
            confidence: np.ndarray | None = None) -> None:
        self.codes[slots] = codes
        self.predicted[slots] = predicted
        self.confidence[slots] = np.nan if confidence is None else confidence
        self.current[slots] = np.where(self.codes[slots] >= 0, self.codes[slots], self.predicted[slots])
        self.alive[slots] = True
        self._count(slots, 1)
        grow = int(slots.max()) + 1 - len(self.ids) if len(slots) else 0
        self.ids.extend([None] * max(grow, 0))
        for key, slot in zip(keys, slots.tolist()):
            self.ids[slot] = key
            self.slot[key] = slot

    def release(self, keys: Sequence[str]) -> np.ndarray:
        slots = np.array([self.slot.pop(k) for k in keys], np.int64)
        self._count(slots, -1)
        self.alive[slots] = False
        for s in slots.tolist():
            self.ids[s] = None
        self.free.extend(slots.tolist()[::-1])
        return slots

    def set_codes(self, slots: np.ndarray, codes: np.ndarray) -> None:
        """Replace stored labels (-1 = unknown) of live slots."""
        self._count(slots, -1)
        self.codes[slots] = codes
        self.current[slots] = np.where(self.codes[slots] >= 0, self.codes[slots], self.predicted[slots])
        self._count(slots, 1)

    def _count(self, slots: np.ndarray, sign: int) -> None:
        if not len(slots):
            return
        current = self.current_codes(slots).astype(np.int64) + 1  # unknown (-1) counts in column 0
        width = int(current.max()) + 1
        if width > self.counts.shape[1]:
            self.counts = np.pad(self.counts, ((0, 0), (0, width - self.counts.shape[1])))
        for a in range(self.num_attributes):
            np.add.at(self.counts[a], current[:, a], sign)

    def count_of(self, attribute: int, values: frozenset[int]) -> int:
        """Live items whose current value of ``attribute`` is one of ``values``."""
        row = self.counts[attribute]
        return int(sum(row[v + 1] for v in values if v + 1 < len(row)))

    def current_codes(self, slots: np.ndarray) -> np.ndarray:
        """Each item's attribute values: its stored label, else the model's prediction."""
        return self.current[slots]

    def matching(self, where: dict[int, frozenset[int]]) -> np.ndarray:
        """Bool mask over the used slots: live items whose current values pass ``where``."""
        mask = self.alive[:self.used].copy()
        for a, allowed in where.items():
            column = self.current[:self.used, a]
            if len(allowed) == 1:
                mask &= column == next(iter(allowed))
            else:
                mask &= np.isin(column, np.fromiter(allowed, np.int16, len(allowed)))
        return mask
