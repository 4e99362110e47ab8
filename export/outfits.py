"""python -m export outfits --data D --out O: outfits derived from catalog labels, in the field's format.

Writes, from train-split rows only ``train.json`` and from test-split rows only ``test.json``
(Polyvore-style outfits: ``set_id`` and ``items`` of ``item_id``, ``index``, ``category``),
``fill_in_blank_test.json`` (a test outfit with one item blanked, 4 candidates of the blank's
slot: the item and 3 negatives, ``random`` ones or ``hard`` ones that break the rule),
``compatibility_test.json`` (each test outfit, label 1, beside one of the same template with
items drawn ignoring the rule, label 0), ``rules.json`` (the rule used) and ``summary.json``.
The rule is outfit_rules.py's; every file says ``"derived": true`` because these are not real
outfits. A user with real outfits writes them in the same format and skips this step.
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path
from typing import Any, Sequence

from fashsdk.files import atomic_write_json

from .outfit_rules import OutfitRules, Template

ATTEMPTS = 50  # candidates tried per slot before an outfit is abandoned


class Catalog:
    """One split's rows, pooled by outfit slot."""

    def __init__(self, rows: Sequence[dict[str, str]], rules: OutfitRules) -> None:
        self.rows, self.rules = list(rows), rules
        self.pools: dict[str, list[int]] = {slot: [] for slot in rules.slots}
        for i, row in enumerate(self.rows):
            slot = rules.slot_of(row.get(rules.category_column, ""))
            if slot is not None:
                self.pools[slot].append(i)

    def fits(self, candidate: int, chosen: Sequence[int]) -> bool:
        return all(self.rules.compatible(self.rows[candidate], self.rows[c]) for c in chosen)

    def pick(self, slot: str, chosen: list[int], rng: random.Random, *, compatible: bool = True) -> int | None:
        pool = self.pools[slot]
        for _ in range(min(ATTEMPTS, len(pool))):
            candidate = pool[rng.randrange(len(pool))]
            if candidate not in chosen and (not compatible or self.fits(candidate, chosen)):
                return candidate
        return None


def derive(catalog: Catalog, count: int, rng: random.Random, prefix: str) -> list[dict[str, Any]]:
    """``count`` distinct outfits (fewer when the catalog cannot fill them), each following a template."""
    rules, usable = catalog.rules, [t for t in catalog.rules.templates
                                    if all(catalog.pools[s] for s in t.slots[:t.required])]
    if not usable:
        raise ValueError(f"no template can be filled: the {rules.category_column!r} column has no items of "
                         f"{[t.slots[:t.required] for t in rules.templates]}; pass --rules with your categories")
    outfits: list[dict[str, Any]] = []
    seen: set[frozenset[int]] = set()
    for _ in range(count * 20):
        if len(outfits) == count:
            break
        template = rng.choices(usable, [t.weight for t in usable])[0]
        chosen = _fill(catalog, template, rng)
        if chosen is None or frozenset(chosen) in seen:
            continue
        seen.add(frozenset(chosen))
        outfits.append(_outfit(catalog, f"{prefix}-{len(outfits) + 1:06d}", chosen, template))
    return outfits


def _fill(catalog: Catalog, template: Template, rng: random.Random) -> list[int] | None:
    chosen: list[int] = []
    for position, slot in enumerate(template.slots):
        if position >= template.required and (not catalog.pools[slot] or rng.random() > template.optional_rate):
            continue
        item = catalog.pick(slot, chosen, rng)
        if item is None:
            if position < template.required:
                return None
            continue
        chosen.append(item)
    return chosen


def _outfit(catalog: Catalog, set_id: str, chosen: list[int], template: Template) -> dict[str, Any]:
    column = catalog.rules.category_column
    return {"set_id": set_id, "derived": True, "template": list(template.slots),
            "items": [{"item_id": catalog.rows[i]["id"], "index": n + 1, "category": catalog.rows[i][column]}
                      for n, i in enumerate(chosen)]}


def fill_in_the_blank(catalog: Catalog, outfits: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Per outfit and negative kind: one blanked item among 4 candidates of its slot."""
    row_of = {row["id"]: i for i, row in enumerate(catalog.rows)}
    questions = []
    for outfit in outfits:
        members = [row_of[item["item_id"]] for item in outfit["items"]]
        blank = rng.randrange(len(members))
        rest = members[:blank] + members[blank + 1:]
        slot = catalog.rules.slot_of(outfit["items"][blank]["category"])
        assert slot is not None
        for kind in ("random", "hard"):
            negatives = _negatives(catalog, slot, members, rest, kind, rng)
            if negatives is None:
                continue
            answers = [members[blank], *negatives]
            rng.shuffle(answers)
            questions.append({"set_id": outfit["set_id"], "derived": True, "negatives": kind,
                              "question": [catalog.rows[i]["id"] for i in rest], "blank_position": blank + 1,
                              "category": outfit["items"][blank]["category"],
                              "answers": [catalog.rows[i]["id"] for i in answers],
                              "answer_index": answers.index(members[blank])})
    return questions


def _negatives(catalog: Catalog, slot: str, members: list[int], rest: list[int], kind: str,
               rng: random.Random) -> list[int] | None:
    found: list[int] = []
    pool = catalog.pools[slot]
    for _ in range(ATTEMPTS * 4):
        candidate = pool[rng.randrange(len(pool))]
        if candidate in members or candidate in found:
            continue
        if kind == "hard" and catalog.fits(candidate, rest):
            continue  # hard negatives break the rule with the rest of the outfit
        found.append(candidate)
        if len(found) == 3:
            return found
    return None


def compatibility(catalog: Catalog, outfits: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Each outfit (label 1) and a same-template outfit drawn ignoring the rule (label 0)."""
    out = []
    for outfit in outfits:
        out.append({"set_id": outfit["set_id"], "label": 1, "items": [i["item_id"] for i in outfit["items"]]})
        drawn: list[int] = []
        for item in outfit["items"]:
            slot = catalog.rules.slot_of(item["category"])
            pick = catalog.pick(slot, drawn, rng, compatible=False) if slot else None
            if pick is not None:
                drawn.append(pick)
        out.append({"set_id": outfit["set_id"] + "-neg", "label": 0, "items": [catalog.rows[i]["id"] for i in drawn]})
    return out


def read_rows(labels: Path, id_column: str = "id") -> list[dict[str, str]]:
    """The labels CSV's rows, each with its id under "id" whatever the id column is called."""
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and id_column not in rows[0]:
        raise ValueError(f"{labels} has no id column {id_column!r} (pass --id-column)")
    return [row | {"id": row[id_column]} for row in rows]


def write_outfits(labels: Path, out: Path, rules: OutfitRules, train_count: int, test_count: int, seed: int,
                  split_column: str = "split", id_column: str = "id") -> dict[str, Any]:
    rows = read_rows(labels, id_column)
    if not rows or split_column not in rows[0] or rules.category_column not in rows[0]:
        raise ValueError(f"{labels} needs a {split_column!r} column and a {rules.category_column!r} "
                         "column (set category_column in --rules)")
    rng = random.Random(seed)
    summary: dict[str, Any] = {"derived": True, "labels": str(labels), "seed": seed}
    for split, count in (("train", train_count), ("test", test_count)):
        catalog = Catalog([r for r in rows if r[split_column] == split], rules)
        outfits = derive(catalog, count, rng, split)
        atomic_write_json(out / f"{split}.json", outfits)
        summary[f"{split}_outfits"] = len(outfits)
        if split == "test":
            questions = fill_in_the_blank(catalog, outfits, rng)
            atomic_write_json(out / "fill_in_blank_test.json", questions)
            atomic_write_json(out / "compatibility_test.json", compatibility(catalog, outfits, rng))
            summary["fill_in_blank_questions"] = len(questions)
    atomic_write_json(out / "rules.json", rules.to_json())
    atomic_write_json(out / "summary.json", summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="catalog folder holding styles.csv (or give --labels)")
    p.add_argument("--labels", type=Path, help="labels CSV (default DATA/styles.csv)")
    p.add_argument("--out", type=Path, required=True, help="folder for the outfit files")
    p.add_argument("--rules", type=Path, help="JSON file of outfit rule fields (default: export/outfit_rules.py)")
    p.add_argument("--train-outfits", type=int, default=20000)
    p.add_argument("--test-outfits", type=int, default=2000)
    p.add_argument("--split-column", default="split")
    p.add_argument("--id-column", default="id")
    p.add_argument("--seed", type=int, default=0)
