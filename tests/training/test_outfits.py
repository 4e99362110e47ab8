"""python -m export outfits: outfits derived from the real catalog's labels follow the rule,
never mix splits, come with fill-in-the-blank questions whose answer is the blanked item, are
the same for the same seed, and the rule is configurable (with clear errors when it is wrong)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
from realdata import require_data

from export.outfit_rules import OutfitRules
from export.outfits import write_outfits

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, str]]:
    with open(require_data() / "styles.csv", newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("outfits")
    write_outfits(require_data() / "styles.csv", out, OutfitRules(), 300, 120, seed=3)
    return out


def load(folder: Path, name: str) -> list:
    return json.loads((folder / name).read_text())


def test_outfits_follow_the_rule_and_keep_their_split(derived: Path, rows) -> None:
    rules = OutfitRules()
    for split, count in (("train", 300), ("test", 120)):
        outfits = load(derived, f"{split}.json")
        assert len(outfits) == count and all(o["derived"] for o in outfits)
        for outfit in outfits:
            items = [rows[i["item_id"]] for i in outfit["items"]]
            assert all(r["split"] == split for r in items)
            assert len({r["id"] for r in items}) == len(items) >= 2
            slots = [rules.slot_of(r["subCategory"]) for r in items]
            template = next(t for t in rules.templates if list(t.slots) == outfit["template"])
            assert slots[:template.required] == list(template.slots[:template.required])
            assert all(rules.compatible(a, b) for a, b in combinations(items, 2))
    assert {tuple(o["template"]) for o in load(derived, "train.json")} == {t.slots for t in rules.templates}


def test_fill_in_the_blank_answer_is_the_blanked_item(derived: Path, rows) -> None:
    rules = OutfitRules()
    outfits = {o["set_id"]: o for o in load(derived, "test.json")}
    questions = load(derived, "fill_in_blank_test.json")
    assert {q["negatives"] for q in questions} == {"random", "hard"}
    for q in questions:
        outfit = [i["item_id"] for i in outfits[q["set_id"]]["items"]]
        blanked = outfit[q["blank_position"] - 1]
        assert len(set(q["answers"])) == 4 and q["answers"][q["answer_index"]] == blanked
        assert set(q["question"]) == set(outfit) - {blanked}
        slot = rules.slot_of(rows[blanked]["subCategory"])
        assert all(rules.slot_of(rows[a]["subCategory"]) == slot for a in q["answers"])
        negatives = [a for a in q["answers"] if a != blanked]
        assert all(rows[a]["split"] == "test" for a in negatives)
        if q["negatives"] == "hard":  # each hard negative breaks the rule with the rest of the outfit
            assert all(any(not rules.compatible(rows[a], rows[o]) for o in q["question"]) for a in negatives)
    labels = {c["label"] for c in load(derived, "compatibility_test.json")}
    assert labels == {0, 1}


def test_the_same_seed_gives_the_same_outfits_and_another_seed_others(derived: Path, tmp_path: Path) -> None:
    write_outfits(require_data() / "styles.csv", tmp_path / "again", OutfitRules(), 300, 120, seed=3)
    write_outfits(require_data() / "styles.csv", tmp_path / "other", OutfitRules(), 300, 120, seed=4)
    assert load(tmp_path / "again", "test.json") == load(derived, "test.json")
    assert load(tmp_path / "other", "test.json") != load(derived, "test.json")


def test_rules_are_configurable_and_checked(tmp_path: Path, rows) -> None:
    custom = {"category_column": "masterCategory", "slots": {"wear": ["Apparel"], "feet": ["Footwear"]},
              "templates": [{"slots": ["wear", "feet"], "required": 2}], "season_groups": []}
    (tmp_path / "rules.json").write_text(json.dumps(custom))
    rules = OutfitRules.load(tmp_path / "rules.json")
    write_outfits(require_data() / "styles.csv", tmp_path / "o", rules, 50, 20, seed=0)
    for outfit in load(tmp_path / "o", "test.json"):
        kinds = [rows[i["item_id"]]["masterCategory"] for i in outfit["items"]]
        assert kinds == ["Apparel", "Footwear"]
        a, b = (rows[i["item_id"]] for i in outfit["items"])
        assert not a["season"] or not b["season"] or a["season"] == b["season"]  # no groups: equal seasons only
    with pytest.raises(ValueError, match="unknown outfit rule fields"):
        OutfitRules.from_json({"colour_groups": []})
    with pytest.raises(ValueError, match="unknown slots"):
        OutfitRules.from_json({"templates": [{"slots": ["top", "cape"], "required": 2}]})


def test_cli_writes_the_files_and_names_a_missing_catalog(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "export", "outfits", "--data", str(require_data()), "--out",
                          str(tmp_path / "o"), "--train-outfits", "40", "--test-outfits", "20"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["test_outfits"] == 20
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"train.json", "test.json", "fill_in_blank_test.json",
                                                             "compatibility_test.json", "rules.json", "summary.json"}
    bad = subprocess.run([sys.executable, "-m", "export", "outfits", "--data", str(tmp_path / "nowhere"), "--out",
                          str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no labels CSV" in bad.stderr


def test_an_id_column_of_another_name_gives_the_same_outfits(derived: Path, tmp_path: Path) -> None:
    text = (require_data() / "styles.csv").read_text()
    renamed = tmp_path / "shop.csv"
    renamed.write_text("sku" + text[len("id"):])
    write_outfits(renamed, tmp_path / "o", OutfitRules(), 300, 120, seed=3, id_column="sku")
    assert load(tmp_path / "o", "test.json") == load(derived, "test.json")
    with pytest.raises(ValueError, match="no id column 'code'"):
        write_outfits(renamed, tmp_path / "x", OutfitRules(), 10, 10, seed=3, id_column="code")
