"""ADDE stage 2 (manipulation): backbone frozen, learners, heads and the memory block trained
on precomputed backbone features, so an epoch costs a few small matrix products.

Each step samples manipulation queries among the training items (every item x every other
value whose target combination exists), their targets, and trains the manipulated query to
sit nearer items of the target combination than any other (the composition triplet), beside
the stage-1 losses at lower weight. Stops at ``stage2_epochs``, at its time budget, or after
``stage2_patience`` epochs without a better validation Top-30.
"""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from fashsdk.eval.protocol import combination_keys, manipulation_queries
from fashsdk.families import adde
from fashsdk.schema import AttributeSchema

from . import losses
from .models import ADDE

if TYPE_CHECKING:
    from .train import TrainConfig, TrainResult


def stage2(model: ADDE, schema: AttributeSchema, feats: torch.Tensor, codes: np.ndarray,
           validate: Callable[[], float], config: "TrainConfig", result: "TrainResult", best_state: dict,
           best_score: float, log: Callable[[str], None] = print) -> tuple[dict, float]:
    sizes = model.config.attribute_sizes
    queries = manipulation_queries(codes, sizes, max_queries=None)
    if not len(queries):
        log("  stage 2 skipped: no manipulation query has its target combination among the training items")
        return best_state, best_score
    keys = combination_keys(codes, sizes)
    order = np.argsort(keys, kind="stable")
    uniq, starts, counts = np.unique(keys[order], return_index=True, return_counts=True)
    target_keys = combination_keys(queries.targets, sizes)
    target_group = np.searchsorted(uniq, target_keys)
    rng = np.random.default_rng(config.seed + 1)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    head_params = ([model.memory] if config.stage2_memory_only
                   else [p for n, p in model.named_parameters() if not n.startswith("backbone.")])
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(head_params, lr=config.stage2_lr)
    steps = max(1, len(codes) // config.stage2_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.stage2_epochs * steps)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    keys_t = torch.from_numpy(keys)
    start, stale = time.perf_counter(), 0
    for epoch in range(config.stage2_epochs):
        model.train()
        for _ in range(steps):
            qi = rng.integers(0, len(queries), config.stage2_batch)
            anchors = queries.rows[qi]
            g = target_group[qi]
            pos = [order[starts[g] + rng.integers(0, counts[g])] for _ in range(2)]
            rows = torch.from_numpy(np.concatenate([anchors, pos[0], pos[1]]))
            emb, logits, _ = model.head_outputs(feats[rows])
            ind = torch.from_numpy(adde.indicator(schema, codes[anchors].astype(np.int64), queries.attrs[qi],
                                                  queries.values[qi]))
            q = adde.apply(emb[:len(qi)], ind, model.memory)
            loss = (config.w_stage2_cls * losses.classification(logits, codes_t[rows], sizes)
                    + config.w_label_triplet * losses.batch_hard_triplet(emb, emb, keys_t[rows], keys_t[rows],
                                                                          config.margin, True)
                    + config.w_comp_triplet * losses.batch_hard_triplet(q, emb, torch.from_numpy(target_keys[qi]),
                                                                         keys_t[rows], config.margin)
                    + config.w_offblock * losses.offblock_l1(model.memory, model.offblock_mask))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = validate()
        improved = score > best_score
        entry: dict[str, Any] = {"stage": 2, "epoch": epoch + 1, "loss": float(loss.item()), "val_top30": score,
                                 "elapsed_s": time.perf_counter() - start}
        result.history.append(entry)
        if improved:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        log(f"  stage 2 epoch {epoch + 1}/{config.stage2_epochs}: loss {loss.item():.3f}  "
            f"val Top-30 {score:.3f}{'  (best)' if improved else ''}")
        if stale >= config.stage2_patience:
            log(f"  stage 2 stopped early: no better validation Top-30 for {stale} epochs")
            break
        budget = config.stage2_time_budget_s
        if budget and time.perf_counter() - start > budget:
            log(f"  stage 2 time budget of {budget:.0f} s reached after epoch {epoch + 1}")
            break
    for name, p in model.named_parameters():
        p.requires_grad_(trainable[name])
    return best_state, best_score
