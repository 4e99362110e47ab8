"""ADDE training: stage 1 (attribute learning), memory initialisation, stage 2 (manipulation).

Stage 2 freezes the backbone and trains learners, heads and the memory block on
precomputed backbone features: each step costs a few small matrix products instead of a
CNN pass, so many epochs fit in CPU minutes. Model selection uses a validation split
carved from train; the test split is never touched here.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fashsdk.eval.protocol import (combination_keys, exact_topk, hit_rates, manipulation_queries)
from fashsdk.families import adde
from fashsdk.families.chunk_replace import reference_rows
from fashsdk.files import atomic_write, atomic_write_json
from fashsdk.schema import AttributeSchema
from fashsdk.sources.preprocess import PreprocessSpec

from . import losses
from .data import CombinationSampler, ImageSet, to_tensor
from .models import ADDE, ModelConfig


@dataclass
class TrainConfig:
    stage1_epochs: int = 6
    stage2_epochs: int = 30
    batch_p: int = 16
    batch_k: int = 4
    batch_random: int = 64
    lr: float = 1e-3
    stage2_lr: float = 1e-3
    stage2_batch: int = 256
    margin: float = 0.3
    w_cls: float = 1.0  # the paper's 0.2 assumes an ImageNet-initialised backbone; from scratch
    # the classifiers are the main teacher and triplets are ramped in over the first epoch
    w_stage2_cls: float = 0.2
    w_attr_triplet: float = 0.2
    w_label_triplet: float = 1.0
    w_comp_triplet: float = 1.0
    w_consistency: float = 0.0  # the reference uses 1.0; on myntra-small it cost ~5 points (notes)
    w_offblock: float = 0.4
    weight_decay: float = 0.0  # AdamW's decoupled decay on conv/linear weights (not norms, biases)
    label_smoothing: float = 0.0  # stage-1 attribute classifiers; colour near-synonyms are label noise
    shift_per_sample: bool = False  # one random shift per image instead of per batch
    proto_per_value: int = 100
    val_queries: int = 3000
    stage1_time_budget_s: float | None = None
    seed: int = 0


@dataclass
class TrainResult:
    model: ADDE
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, flush=True)


@torch.no_grad()
def backbone_features(model: ADDE, images: ImageSet, spec: PreprocessSpec, batch: int = 256,
                      flip: bool = False, desc: str | None = None) -> torch.Tensor:
    model.eval()
    out = []
    rows = range(0, len(images.pixels), batch)
    for s in tqdm(rows, desc=desc, disable=desc is None, file=sys.stdout, mininterval=2, unit="batch"):
        x = to_tensor(images.pixels[s:s + batch], spec, augment=False)
        if flip:
            x = x.flip(3)
        out.append(model.backbone(x))
    return torch.cat(out)


@torch.no_grad()
def init_memory(model: ADDE, features: torch.Tensor, codes: np.ndarray, per_value: int, seed: int = 0) -> None:
    """Each value's prototype = mean chunk (of the normalised embedding) over <= per_value items."""
    model.eval()
    emb, _, _ = model.head_outputs(features)
    sizes, d = model.config.attribute_sizes, model.config.dim
    memory = torch.zeros_like(model.memory)
    rng = np.random.default_rng(seed)
    col = 0
    for a, n in enumerate(sizes):
        for v in range(n):
            rows = np.flatnonzero(codes[:, a] == v)
            if len(rows) > per_value:
                rows = rng.choice(rows, per_value, replace=False)
            if len(rows):
                memory[a * d:(a + 1) * d, col + v] = emb[torch.from_numpy(rows), a * d:(a + 1) * d].mean(0)
        col += n
    model.memory.copy_(memory)


@torch.no_grad()
def manipulation_top_k(model: ADDE, schema: AttributeSchema, features: torch.Tensor, codes: np.ndarray, queries: Any,
                       ks: tuple[int, ...] = (10, 30)) -> dict[int, float]:
    """Top-k of the memory-block manipulation with ``features``' items as the gallery
    (the runtime's own family arithmetic, fashsdk.families.adde)."""
    model.eval()
    emb = model.head_outputs(features)[0].numpy()
    family = adde.Adde(schema, model.memory.detach().numpy())
    q = family.change_batch(emb[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    return hit_rates(exact_topk(q, emb, max(ks)), codes, queries.targets, ks)


def attribute_accuracies(model: ADDE, features: torch.Tensor, codes: np.ndarray) -> list[float]:
    """Per attribute, the heads' accuracy on items whose label is known."""
    with torch.no_grad():
        _, logits, _ = model.head_outputs(features)
    accs, offset = [], 0
    for a, n in enumerate(model.config.attribute_sizes):
        known = codes[:, a] >= 0
        pred = logits[:, offset:offset + n].argmax(1).numpy()
        accs.append(float((pred[known] == codes[known, a]).mean()))
        offset += n
    return accs


def train_adde(schema: AttributeSchema, spec: PreprocessSpec, train: ImageSet, val: ImageSet,
               model_config: ModelConfig, config: TrainConfig) -> TrainResult:
    torch.manual_seed(config.seed)
    sizes = schema.sizes
    model = ADDE(model_config).to(memory_format=torch.channels_last)
    result = TrainResult(model)
    gen = torch.Generator().manual_seed(config.seed)
    train_codes, val_codes = train.catalog.codes, val.catalog.codes
    val_queries = manipulation_queries(val_codes, sizes, max_queries=config.val_queries, seed=config.seed)
    proto_rows = reference_rows(train_codes, sizes, config.proto_per_value, config.seed)
    proto_set = train.subset(proto_rows)
    _log(f"training ADDE/{model_config.backbone}: {len(train.pixels)} train, {len(val.pixels)} val images, "
         f"{len(val_queries)} val manipulation queries, {sum(p.numel() for p in model.parameters())/1e6:.2f} M params")

    # ---- stage 1: attribute learning -------------------------------------------------
    t0 = time.perf_counter()
    sampler = CombinationSampler(train_codes, sizes, config.batch_p, config.batch_k, config.seed,
                                 extra=config.batch_random)
    opt = torch.optim.AdamW(_decay_groups(model, config.weight_decay), lr=config.lr)
    total_steps = max(1, config.stage1_epochs * len(sampler))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps, pct_start=0.15)
    codes_t = torch.from_numpy(train_codes.astype(np.int64))
    combo = torch.from_numpy(combination_keys(train_codes, sizes))
    best_state, best_score = None, -1.0
    step = 0
    for epoch in range(config.stage1_epochs):
        model.train()
        bar = tqdm(sampler, desc=f"stage 1 epoch {epoch + 1}/{config.stage1_epochs}", file=sys.stdout,
                   mininterval=5, unit="batch")
        for rows in bar:
            x = to_tensor(train.pixels[rows], spec, augment=True, generator=gen,
                          shift_per_sample=config.shift_per_sample)
            emb, logits, _ = model.head_outputs(model.backbone(x))
            r = torch.from_numpy(rows)
            ramp = min(1.0, step / len(sampler))  # batch-hard triplets from a random start collapse
            step += 1
            loss = (config.w_cls * losses.classification(logits, codes_t[r], sizes, config.label_smoothing)
                    + ramp * config.w_attr_triplet * losses.attribute_triplets(emb, codes_t[r], model_config.dim, config.margin)
                    + ramp * config.w_label_triplet * losses.batch_hard_triplet(emb, emb, combo[r], combo[r], config.margin, True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        val_feats = backbone_features(model, val, spec)
        init_memory(model, backbone_features(model, proto_set, spec), proto_set.catalog.codes, config.proto_per_value)
        top = manipulation_top_k(model, schema, val_feats, val_codes, val_queries)
        acc = float(np.mean(attribute_accuracies(model, val_feats, val_codes)))
        entry = {"stage": 1, "epoch": epoch + 1, "loss": float(loss.item()), "val_top10": top[10],
                 "val_top30": top[30], "val_attr_acc": acc, "elapsed_s": time.perf_counter() - t0}
        result.history.append(entry)
        _log(f"  stage 1 epoch {epoch + 1}: val Top-30 {top[30]:.3f}  attribute accuracy {acc:.3f}")
        if top[30] > best_score:
            best_score, best_state = top[30], copy.deepcopy(model.state_dict())
        if config.stage1_time_budget_s and time.perf_counter() - t0 > config.stage1_time_budget_s:
            _log(f"  stage 1 time budget of {config.stage1_time_budget_s:.0f} s reached after epoch {epoch + 1}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds["stage1"] = time.perf_counter() - t0

    # ---- memory initialisation + stage 2: manipulation ----------------------------------
    t1 = time.perf_counter()
    train_feats = backbone_features(model, train, spec, desc="stage 2 features")
    val_feats = backbone_features(model, val, spec)
    init_memory(model, train_feats, train_codes, config.proto_per_value, config.seed)
    top = manipulation_top_k(model, schema, val_feats, val_codes, val_queries)
    _log(f"  memory initialised by averaging: val Top-30 {top[30]:.3f}")
    result.history.append({"stage": "memory_init", "val_top10": top[10], "val_top30": top[30]})
    best_state, best_score = copy.deepcopy(model.state_dict()), top[30]
    if config.stage2_epochs > 0:
        best_state, best_score = _stage2(model, schema, train_feats, train_codes, val_feats, val_codes, val_queries,
                                         config, result, best_state, best_score)
    model.load_state_dict(best_state)
    result.seconds["stage2"] = time.perf_counter() - t1
    result.best = {"val_top30": best_score}
    _log(f"best val Top-30 {best_score:.3f}; stage 1 {result.seconds['stage1']:.0f} s, "
         f"stage 2 {result.seconds['stage2']:.0f} s")
    return result


def _decay_groups(model: ADDE, weight_decay: float) -> list[dict[str, Any]]:
    """Stage-1 parameters (all but the memory) in two groups: matrices and kernels decay,
    norm scales and biases do not (decaying them only fights the normalisation)."""
    named = [(n, p) for n, p in model.named_parameters() if n != "memory"]
    return [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0}]


def _stage2(model: ADDE, schema: AttributeSchema, feats: torch.Tensor, codes: np.ndarray, val_feats: torch.Tensor,
            val_codes: np.ndarray, val_queries: Any, config: TrainConfig, result: TrainResult, best_state: dict,
            best_score: float):
    sizes, d = model.config.attribute_sizes, model.config.dim
    offsets = np.cumsum([0] + sizes[:-1])
    queries = manipulation_queries(codes, sizes, max_queries=None)
    keys = combination_keys(codes, sizes)
    order = np.argsort(keys, kind="stable")
    uniq, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    target_keys = combination_keys(queries.targets, sizes)
    target_group = np.searchsorted(uniq, target_keys)
    rng = np.random.default_rng(config.seed + 1)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(head_params, lr=config.stage2_lr)
    steps = max(1, len(codes) // config.stage2_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.stage2_epochs * steps)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    keys_t = torch.from_numpy(keys)
    mask = model.offblock_mask
    for epoch in range(config.stage2_epochs):
        model.train()
        for _ in range(steps):
            qi = rng.integers(0, len(queries), config.stage2_batch)
            anchors = queries.rows[qi]
            g = target_group[qi]
            pos = [order[starts[g] + rng.integers(0, counts[g])] for _ in range(2)]
            rows = torch.from_numpy(np.concatenate([anchors, pos[0], pos[1]]))
            emb, logits, chunks = model.head_outputs(feats[rows])
            B = len(qi)
            a = queries.attrs[qi, 0]
            ind = torch.from_numpy(adde.indicator(schema, codes[anchors].astype(np.int64), queries.attrs[qi],
                                                  queries.values[qi]))
            q = adde.apply(emb[:B], ind, model.memory)
            tk = torch.from_numpy(target_keys[qi])
            loss = (config.w_stage2_cls * losses.classification(logits, codes_t[rows], sizes)
                    + config.w_label_triplet * losses.batch_hard_triplet(emb, emb, keys_t[rows], keys_t[rows], config.margin, True)
                    + config.w_comp_triplet * losses.batch_hard_triplet(q, emb, tk, keys_t[rows], config.margin)
                    + config.w_offblock * losses.offblock_l1(model.memory, mask))
            if config.w_consistency:
                cols = torch.from_numpy(offsets[a] + queries.values[qi, 0])
                proto = model.memory.t()[cols]  # (B, A*d)
                block = torch.zeros_like(proto, dtype=torch.bool)
                for b, aa in enumerate(a):
                    block[b, aa * d:(aa + 1) * d] = True
                loss = loss + config.w_consistency * ((proto - emb[B:2 * B].detach()).abs() * block).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        top = manipulation_top_k(model, schema, val_feats, val_codes, val_queries)
        result.history.append({"stage": 2, "epoch": epoch + 1, "loss": float(loss.item()),
                               "val_top10": top[10], "val_top30": top[30]})
        improved = top[30] > best_score
        if improved:
            best_score, best_state = top[30], copy.deepcopy(model.state_dict())
        _log(f"  stage 2 epoch {epoch + 1}/{config.stage2_epochs}: loss {loss.item():.3f}  "
             f"val Top-30 {top[30]:.3f}{'  (best)' if improved else ''}")
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    return best_state, best_score


def save_checkpoint(directory: str | Path, result: TrainResult, schema: AttributeSchema, spec: PreprocessSpec,
                    train_config: TrainConfig) -> Path:
    """State dict (tensors only, loadable with weights_only=True) + a JSON config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in result.model.state_dict().items()}
    atomic_write(directory / "model.pt", lambda f: torch.save(state, f))
    atomic_write_json(directory / "config.json", {
        "model": result.model.config.to_json(), "schema": schema.to_json(), "preprocess": spec.to_json(),
        "train": asdict(train_config), "history": result.history, "seconds": result.seconds, "best": result.best,
    })
    return directory


def load_checkpoint(directory: str | Path) -> tuple[ADDE, AttributeSchema, PreprocessSpec, dict[str, Any]]:
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = ADDE(ModelConfig(**config["model"]))
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, AttributeSchema.from_json(config["schema"]), PreprocessSpec.from_json(config["preprocess"]), config
