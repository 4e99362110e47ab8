"""python -m export outfit-head: train the outfit head (psi_a, kappa) on a frozen bundle's embeddings
and write a copy of the bundle that carries it (checksummed like every bundle file).

Training follows the ADDE supplementary: for an outfit O and a held-out item x+ of category t,
a negative x- of the same category t, L = max(0, m + D(O, x+) - D(O, x-)) with m = 0.3 and
D as in fashsdk/tasks/outfit_head.py (the same formula the runtime reduces to one inner
product). The embedding is frozen: only psi (one linear map per attribute chunk, to
``--projection-dim`` dimensions) and kappa (one-hot source ++ one-hot target category -> 32
hidden -> softmax over the attributes) learn, in minutes on 2 cores from precomputed shards.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fashsdk.bundle import Bundle
from fashsdk.tasks.shards import read_shards

from .outfit_bundle import write_head_bundle
from .outfit_rules import OutfitRules
from .outfits import read_rows


class OutfitModel(nn.Module):
    def __init__(self, spans: list[tuple[int, int]], categories: int, projection: int, hidden: int = 32) -> None:
        super().__init__()
        self.spans, self.categories = spans, categories
        self.psi = nn.ModuleList(nn.Linear(e - s, projection, bias=False) for s, e in spans)
        self.kappa = nn.Sequential(nn.Linear(2 * categories, hidden), nn.ReLU(), nn.Linear(hidden, len(spans)))

    def distance(self, outfit: torch.Tensor, sources: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                 candidate: torch.Tensor) -> torch.Tensor:
        """D(O, x): outfit (B, I, D) with mask (B, I), sources (B, I), target (B,), candidate (B, D)."""
        onehot = torch.cat([nn.functional.one_hot(sources.clamp(min=0), self.categories),
                            nn.functional.one_hot(target, self.categories)[:, None, :].expand(-1, sources.shape[1], -1)],
                           dim=2).float()
        w = torch.softmax(self.kappa(onehot), dim=2)  # (B, I, A)
        total = torch.zeros(outfit.shape[:2])
        for a, ((s, e), psi) in enumerate(zip(self.spans, self.psi)):
            gap = psi(outfit[:, :, s:e]) - psi(candidate[:, None, s:e])
            total = total + w[:, :, a] * (gap ** 2).sum(dim=2)
        return (total * mask).sum(dim=1) / mask.sum(dim=1)


def train(vectors: np.ndarray, item_category: np.ndarray, outfits: list[list[int]], spans: list[tuple[int, int]],
          categories: int, projection: int, steps: int, batch: int, margin: float, seed: int) -> OutfitModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = OutfitModel(spans, categories, projection)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    pools = [np.flatnonzero(item_category == c) for c in range(categories)]
    width = max(len(o) for o in outfits)
    table = np.full((len(outfits), width), -1, np.int64)
    for n, outfit in enumerate(outfits):
        table[n, :len(outfit)] = outfit
    sizes = (table >= 0).sum(axis=1)
    x = torch.from_numpy(vectors)
    for step in range(steps):
        rows = rng.integers(0, len(outfits), batch)
        held = (rng.random(batch) * sizes[rows]).astype(np.int64)
        positive = table[rows, held]
        members = table[rows].copy()
        members[np.arange(batch), held] = -1
        target = item_category[positive]
        negative = np.array([rng.choice(pools[t]) for t in target])
        mask = torch.from_numpy((members >= 0).astype(np.float32))
        safe = np.where(members >= 0, members, 0)
        sources = torch.from_numpy(np.where(members >= 0, item_category[safe], 0))
        outfit, t = x[safe], torch.from_numpy(target)
        d_pos = model.distance(outfit, sources, mask, t, x[positive])
        d_neg = model.distance(outfit, sources, mask, t, x[negative])
        loss = torch.relu(margin + d_pos - d_neg).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % max(steps // 10, 1) == 0 or step == steps - 1:
            print(f"  outfit head step {step + 1}/{steps}: loss {loss.item():.4f}  "
                  f"held-out closer than negative {float((d_pos < d_neg).float().mean()):.3f}", flush=True)
    return model


def head_arrays(model: OutfitModel) -> dict[str, np.ndarray]:
    """The head's weights in the runtime's layout (fashsdk/tasks/outfit_head.py)."""
    arrays = {f"psi_{a}": psi.weight.detach().numpy() for a, psi in enumerate(model.psi)}
    arrays.update({"kappa_w1": model.kappa[0].weight.detach().numpy().T, "kappa_b1": model.kappa[0].bias.detach().numpy(),
                   "kappa_w2": model.kappa[2].weight.detach().numpy().T, "kappa_b2": model.kappa[2].bias.detach().numpy()})
    return arrays


def run(args: argparse.Namespace) -> int:
    bundle = Bundle.load(args.bundle)
    derived = args.outfits / "rules.json"  # absent for outfits a user brings: then --category-column names it
    column = (OutfitRules.from_json(json.loads(derived.read_text())).category_column if derived.is_file()
              else args.category_column)
    rows = {r["id"]: r for r in read_rows(args.labels, args.id_column)}
    ids, vectors = [], []
    for shard_ids, embedded, *_ in read_shards(args.embeddings, bundle.schema, bundle.embedding_sha256(), bundle.dim):
        ids += shard_ids
        vectors.append(embedded)
    if args.out.exists() and args.overwrite:
        shutil.rmtree(args.out)
    meta = fit_head_bundle(args.bundle, args.out, ids, np.concatenate(vectors), rows,
                           json.loads((args.outfits / "train.json").read_text()), column, args.category_attribute,
                           args, derived=derived.is_file(), source=str(args.outfits))
    print(json.dumps({"bundle": str(args.out), **{k: v for k, v in meta.items() if k != "value_category"}}))
    return 0


def fit_head_bundle(bundle_dir: Path, out: Path, ids: list[str], vectors: np.ndarray, rows: dict[str, dict[str, str]],
                    outfits_json: list[dict[str, Any]], column: str, category_attribute: str, options: Any, *,
                    derived: bool, source: str) -> dict[str, Any]:
    """Train the head on the train-split items among ``ids`` (their embeddings ``vectors``; categories
    from the labels' ``column``) and write ``bundle_dir`` plus the head to ``out``; returns its description.
    ``options`` carries projection_dim, steps, batch, margin, seed and split_column."""
    start = time.perf_counter()
    bundle = Bundle.load(bundle_dir)
    names = bundle.schema.names
    if category_attribute not in names:
        raise ValueError(f"--category-attribute {category_attribute!r} is not an attribute of the bundle "
                         f"({', '.join(names)})")
    categories = sorted({i["category"] for o in outfits_json for i in o["items"]})
    keep = [n for n, i in enumerate(ids) if i in rows and rows[i].get(options.split_column) == "train"
            and rows[i].get(column) in categories]
    ids = [ids[n] for n in keep]
    row_of = {i: n for n, i in enumerate(ids)}
    item_category = np.array([categories.index(rows[i][column]) for i in ids], np.int64)
    outfits = [[row_of[i["item_id"]] for i in o["items"] if i["item_id"] in row_of] for o in outfits_json]
    outfits = [o for o in outfits if len(o) >= 2]
    if not outfits:
        raise ValueError(f"none of the outfits of {source} has two train items with embeddings; embed the train "
                         "split with this bundle first")
    value_category = _value_category(rows, category_attribute, column, categories, options.split_column)
    print(f"outfit head: {len(outfits)} train outfits over {len(ids)} items, categories {categories}", flush=True)
    spans = [tuple(bundle.layout[n]) for n in names]
    model = train(np.asarray(vectors, np.float32)[keep], item_category, outfits, spans,  # type: ignore[arg-type]
                  len(categories), options.projection_dim, options.steps, options.batch, options.margin, options.seed)
    meta = {"categories": categories, "category_attribute": category_attribute, "value_category": value_category,
            "margin": options.margin, "trained_on": source, "derived_outfits": derived,
            "train_outfits": len(outfits), "seconds": round(time.perf_counter() - start, 1)}
    write_head_bundle(bundle_dir, out, head_arrays(model), meta)
    return meta


def _value_category(rows: dict[str, dict[str, str]], attribute: str, column: str, categories: list[str],
                    split_column: str) -> dict[str, str]:
    """Each value of the category attribute -> the outfit category most of its train items have."""
    counts: dict[str, dict[str, int]] = {}
    for row in rows.values():
        if row.get(split_column) == "train" and row.get(column) in categories and row.get(attribute):
            per = counts.setdefault(row[attribute], {})
            per[row[column]] = per.get(row[column], 0) + 1
    return {value: max(per, key=per.__getitem__) for value, per in sorted(counts.items())}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="the bundle whose embedding the head sits on")
    p.add_argument("--embeddings", type=Path, required=True, help="Parquet shards of fashsdk embed with that bundle")
    p.add_argument("--outfits", type=Path, required=True, help="folder of python -m export outfits (or your own)")
    p.add_argument("--labels", type=Path, required=True, help="labels CSV (categories and the split)")
    p.add_argument("--category-column", default="subCategory",
                   help="labels CSV column of the outfit categories, for outfits without rules.json (your own)")
    p.add_argument("--category-attribute", default="articleType",
                   help="the bundle attribute whose value tells an item's outfit category at query time")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder: the bundle plus the outfit head")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--projection-dim", type=int, default=32)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--margin", type=float, default=0.3)
    p.add_argument("--split-column", default="split")
    p.add_argument("--id-column", default="id")
    p.add_argument("--seed", type=int, default=0)
