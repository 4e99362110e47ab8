"""The rule that derives outfits from catalog labels (no outfit data with images is reachable).

An outfit follows a template of slots (top + bottom + footwear, optionally an accessory; or
dress + footwear, optionally a bag); a slot is a set of catalog categories. Items of one outfit
must agree on gender (unisex items go with either), have compatible usage (same group, e.g.
Casual with Smart Casual) and compatible season (same group: Spring/Summer, Fall/Winter);
an unknown value matches anything. Every part is configurable through a JSON file with the
fields of ``OutfitRules``; ``DEFAULT_RULES`` fits myntra-small's columns and values.

Outfits derived this way measure whether a model recovers this rule from images, not real
styling taste: every figure computed on them says "derived outfits".
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

UNKNOWN_CELLS = ("", "NA", "N/A", "null", "None")


@dataclass(frozen=True)
class Template:
    """Slots in order; the first ``required`` slots are always filled, the others with ``optional_rate``."""

    slots: tuple[str, ...]
    required: int
    weight: float = 1.0
    optional_rate: float = 0.5


@dataclass(frozen=True)
class OutfitRules:
    category_column: str = "subCategory"
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: {
        "top": ("Topwear",), "bottom": ("Bottomwear",), "footwear": ("Shoes", "Sandal", "Flip Flops"),
        "accessory": ("Watches", "Belts", "Eyewear", "Jewellery", "Headwear", "Ties", "Scarves", "Wallets"),
        "dress": ("Dress",), "bag": ("Bags",)})
    templates: tuple[Template, ...] = (Template(("top", "bottom", "footwear", "accessory"), 3, 3.0),
                                       Template(("dress", "footwear", "bag"), 2, 1.0))
    gender_column: str = "gender"
    wildcard_genders: tuple[str, ...] = ("Unisex",)
    usage_column: str = "usage"
    usage_groups: tuple[tuple[str, ...], ...] = (("Casual", "Smart Casual", "Travel", "Home"),
                                                 ("Formal", "Smart Casual", "Party"), ("Sports", "Casual"),
                                                 ("Ethnic", "Party"))
    season_column: str = "season"
    season_groups: tuple[tuple[str, ...], ...] = (("Spring", "Summer"), ("Fall", "Winter"))

    def slot_of(self, category: str) -> str | None:
        return next((slot for slot, members in self.slots.items() if category in members), None)

    def compatible(self, a: Mapping[str, str], b: Mapping[str, str]) -> bool:
        """Whether two label rows may share an outfit."""
        ga, gb = (_known(a.get(self.gender_column)), _known(b.get(self.gender_column)))
        if ga and gb and ga != gb and ga not in self.wildcard_genders and gb not in self.wildcard_genders:
            return False
        return (_grouped(a.get(self.usage_column), b.get(self.usage_column), self.usage_groups)
                and _grouped(a.get(self.season_column), b.get(self.season_column), self.season_groups))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "OutfitRules":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown outfit rule fields {unknown}; the fields are {sorted(known)}")
        values = dict(data)
        if "templates" in values:
            values["templates"] = tuple(Template(tuple(t["slots"]), int(t["required"]), float(t.get("weight", 1.0)),
                                                 float(t.get("optional_rate", 0.5))) for t in values["templates"])
        for key in ("usage_groups", "season_groups"):
            if key in values:
                values[key] = tuple(tuple(g) for g in values[key])
        if "slots" in values:
            values["slots"] = {k: tuple(v) for k, v in values["slots"].items()}
        if "wildcard_genders" in values:
            values["wildcard_genders"] = tuple(values["wildcard_genders"])
        rules = cls(**values)
        for template in rules.templates:
            missing = [s for s in template.slots if s not in rules.slots]
            if missing or not 1 <= template.required <= len(template.slots):
                raise ValueError(f"template {template.slots} names unknown slots {missing} or has required="
                                 f"{template.required} outside 1..{len(template.slots)}")
        return rules

    @classmethod
    def load(cls, path: Path | None) -> "OutfitRules":
        return cls() if path is None else cls.from_json(json.loads(Path(path).read_text()))


def _known(value: str | None) -> str | None:
    return None if value is None or value.strip() in UNKNOWN_CELLS else value.strip()


def _grouped(a: str | None, b: str | None, groups: tuple[tuple[str, ...], ...]) -> bool:
    a, b = _known(a), _known(b)
    return a is None or b is None or a == b or any(a in g and b in g for g in groups)


DEFAULT_RULES = OutfitRules()
