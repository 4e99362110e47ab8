"""Training: stage 1 (attribute learning), memory initialisation, stage 2 (manipulation).

One loop for every architecture (export/models.py): ADDE runs all three; DAtRNet's and
FashionSearchNet's memory is only the value means (their chunk_replace table), so they have no
stage 2 (``stage2_epochs=0``); FashionSearchNet then fits its attribute weights (fsn_weights.py).

Training length is a number of optimisation steps or a wall-clock budget, whichever ends
first, with early stopping on the validation split: not epoch counts tuned to one catalog.
With a budget, the planned steps are set from the measured cost of a step and of an
evaluation, and the learning-rate schedule (warm-up, then cosine) follows the plan. A
pretrained backbone's frozen trunk runs once over every image (features.py); stage 2 trains
on precomputed backbone features (stage2.py). Model selection uses a validation split carved
from train; the test split is never touched here. The guard (fashsdk.eval.guard) reports at
the end whether the model clearly beats its baselines.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fashsdk.eval.protocol import combination_keys, manipulation_queries
from fashsdk.families.chunk_replace import reference_rows, value_means
from fashsdk.files import atomic_write, atomic_write_json
from fashsdk.schema import AttributeSchema
from fashsdk.sources.preprocess import PreprocessSpec

from . import losses
from .data import CombinationSampler, ImageSet
from .features import TrainingFeatures, features_for
from .models import ADDE, ModelConfig, build_model
from .query_mix import choose_query_mix
from .stage2 import stage2
from .validation import attribute_accuracies, guard, init_memory, manipulation_top_k


@dataclass
class TrainConfig:
    stage1_steps: int = 4000  # planned stage-1 steps when neither a time budget nor epochs cap them
    stage1_epochs: int | None = None  # optional cap in passes over the training images
    stage1_time_budget_s: float | None = None  # wall clock for stage 1 (trunk caching included)
    stage2_epochs: int = 30
    stage2_time_budget_s: float | None = None
    stage2_patience: int = 6  # epochs without a better validation Top-30 before stage 2 stops
    stage2_memory_only: bool = False  # stage 2 trains the memory block alone; learners and heads stay as stage 1 left them
    stage2_holdout: float = 0.0  # share of the training items kept out of stage 1 and given to stage 2 alone
    patience: int = 2  # stage-1 evaluations (about 6 over the plan) without a better validation Top-30 before it stops
    eval_every: int | None = None  # stage-1 steps between evaluations (default: about 1/10 of the plan)
    batch_p: int = 16
    batch_k: int = 4
    batch_random: int = 64
    lr: float = 1e-3
    stage2_lr: float = 1e-3
    stage2_batch: int = 256
    margin: float = 0.3
    w_cls: float = 1.0  # from scratch the classifiers are the main teacher; triplets ramp in
    w_stage2_cls: float = 0.2
    w_attr_triplet: float = 0.2
    w_label_triplet: float = 1.0
    w_comp_triplet: float = 1.0
    w_offblock: float = 0.4
    weight_decay: float = 0.0  # AdamW's decoupled decay on conv/linear weights (not norms, biases)
    label_smoothing: float = 0.0  # stage-1 attribute classifiers; colour near-synonyms are label noise
    shift_per_sample: bool = False  # one random shift per image instead of per batch (pixel backbones)
    trunk_variants: int = 3  # pretrained trunk: cached variants per image (plain, flipped, shifted)
    proto_per_value: int = 100
    val_queries: int = 3000
    strict: bool = False  # a failed guard is an error instead of a warning
    seed: int = 0


@dataclass
class TrainResult:
    model: ADDE
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    # the final model's embeddings of the train and val images (row order of each ImageSet), when training
    # already held their backbone features; None otherwise (encode the images instead)
    embeddings: tuple[np.ndarray, np.ndarray] | None = None


CALIBRATE_SHARE = 0.1  # with a time budget, the plan is set after this share of the training time
EVALUATIONS = 6  # stage-1 evaluations over the plan (each costs a pass over the validation split)
# stage-1 evaluations set the memory from at most this many training items per value: each evaluation
# encodes them again, and at proto_per_value (100) those rows are most of an evaluation's cost
EVAL_PROTO_PER_VALUE = 30


class GuardFailed(RuntimeError):
    """--strict and the model is not clearly better than its baselines."""


def _log(msg: str) -> None:
    print(msg, flush=True)


def train_adde(schema: AttributeSchema, spec: PreprocessSpec, train: ImageSet, val: ImageSet,
               model_config: ModelConfig, config: TrainConfig) -> TrainResult:
    torch.manual_seed(config.seed)
    sizes = schema.sizes
    model = build_model(model_config).to(memory_format=torch.channels_last)
    result = TrainResult(model)
    train_codes, val_codes = train.catalog.codes, val.catalog.codes
    val_queries = manipulation_queries(val_codes, sizes, max_queries=config.val_queries, seed=config.seed)
    proto_rows = reference_rows(train_codes, sizes, config.proto_per_value, config.seed)
    eval_per_value = min(config.proto_per_value, EVAL_PROTO_PER_VALUE)
    eval_proto_rows = reference_rows(train_codes, sizes, eval_per_value, config.seed)
    fit_rows, held_rows = holdout_split(len(train_codes), config.stage2_holdout, config.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    _log(f"training {model_config.architecture}/{model_config.backbone}: {len(train.pixels)} train, {len(val.pixels)} val images, "
         f"{len(val_queries)} val manipulation queries, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
         f"params ({trainable / 1e6:.2f} M trained)")
    if len(held_rows):
        _log(f"  stage 1 learns from {len(fit_rows)} training items; {len(held_rows)} are kept for stage 2")
    t0 = time.perf_counter()
    train_src = features_for(model, train, spec, config.trunk_variants, config.seed, config.shift_per_sample,
                             "trunk activations, train")
    val_src = features_for(model, val, spec, 1, config.seed, False, "trunk activations, val")
    result.seconds["features"] = time.perf_counter() - t0

    def validate() -> float:
        feats = val_src.features(model)
        return manipulation_top_k(model, schema, feats, val_codes, val_queries)[30]

    still_improving, steps = _stage1(model, schema, train_src, val_src, train_codes, val_codes, val_queries,
                                     eval_proto_rows, eval_per_value, config, result, t0, fit_rows)
    result.seconds["stage1"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if config.stage2_epochs > 0:
        train_feats = train_src.features(model, desc="stage 2 features")
        init_memory(model, train_feats, train_codes, config.proto_per_value, config.seed)
    else:  # only the reference rows' features: the value means
        init_memory(model, train_src.features(model, proto_rows), train_codes[proto_rows], config.proto_per_value,
                    config.seed)
    score = validate()
    _log(f"  memory initialised by averaging: val Top-30 {score:.3f}")
    result.history.append({"stage": "memory_init", "val_top30": score})
    if model.config.architecture == "fsn":  # lambda of Eq. 6 by the global ranking loss (Eq. 7)
        from .fsn_weights import fit_attribute_weights

        uniform, fitted = fit_attribute_weights(model, schema, train_src.features(model, proto_rows),
                                                train_codes[proto_rows], validate, _log, seed=config.seed)
        score = max(uniform, fitted)
        result.history.append({"stage": "attribute_weights", "val_top30_uniform": uniform, "val_top30_fitted": fitted})
    best_state, best_score = copy.deepcopy(model.state_dict()), score
    if config.stage2_epochs > 0:
        s2_feats, s2_codes = ((train_feats[torch.from_numpy(held_rows)], train_codes[held_rows]) if len(held_rows)
                              else (train_feats, train_codes))
        best_state, best_score = stage2(model, schema, s2_feats, s2_codes, validate, config, result, best_state,
                                        best_score, _log)
    model.load_state_dict(best_state)
    result.seconds["stage2"] = time.perf_counter() - t1
    result.best = {"val_top30": best_score}
    val_feats = val_src.features(model)
    if config.stage2_epochs > 0:  # stage 2 froze the backbone, so its features are the final model's
        result.embeddings = (_embed(model, train_feats), _embed(model, val_feats))
    if model.config.architecture == "adde":  # the other family the same model can serve, on the same queries
        ref = (result.embeddings[0][proto_rows] if result.embeddings is not None
               else _embed(model, train_src.features(model, proto_rows)))
        val_emb = result.embeddings[1] if result.embeddings is not None else _embed(model, val_feats)
        layout = model.chunk_layout()
        table, _ = value_means(ref, train_codes[proto_rows], schema, layout)
        prototypes = model.memory.detach().cpu().numpy().astype(np.float32)
        mix = choose_query_mix(schema, layout, prototypes, table, val_emb, val_codes, val_queries)
        result.best.update(mix.to_json(schema.names))
        lead, lead_se = mix.lead_over_adde()
        _log(f"  val Top-30 adde {mix.top30((0.0, 1.0)):.3f}, chunk_replace over the same model "
             f"{mix.top30((1.0, 1.0)):.3f}, blend b{mix.pair[0]:g} of adde and chunk_replace with the changed chunk "
             f"weighted x{mix.pair[1]:g} {mix.top30():.3f} "
             f"(lead over adde {100 * lead:+.1f} points, standard error {100 * lead_se:.1f} on the same queries)")
    report = guard(model, schema, val_feats, val_codes, train_codes, val_queries, still_improving, steps)
    result.guard = report.to_json()
    _log(f"best val Top-30 {best_score:.3f}; features {result.seconds['features']:.0f} s, stage 1 "
         f"{result.seconds['stage1']:.0f} s (features included), stage 2 {result.seconds['stage2']:.0f} s")
    _log("guard (validation split): " + report.format())
    if config.strict and not report.passed:
        raise GuardFailed("the model is not clearly better than its baselines (--strict): "
                          + "; ".join(report.warnings))
    return result


@torch.no_grad()
def _embed(model: ADDE, features: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """The served embedding (the ONNX model's first output) of backbone ``features``."""
    model.eval()
    parts = [model.head_outputs(features[s:s + batch])[0] for s in range(0, len(features), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.config.dim * len(model.config.attribute_sizes)),
                                                           np.float32)


def _stage1(model: ADDE, schema: AttributeSchema, train_src: TrainingFeatures, val_src: TrainingFeatures, train_codes: np.ndarray,
            val_codes: np.ndarray, val_queries: Any, proto_rows: np.ndarray, per_value: int, config: TrainConfig,
            result: TrainResult, t0: float, fit_rows: np.ndarray) -> tuple[bool, int]:
    """Attribute learning on the training items ``fit_rows``; returns (validation still improving
    when it stopped, steps taken).

    Each evaluation sets the memory from ``proto_rows`` (up to ``per_value`` items per value)."""
    sizes = schema.sizes
    sampler = CombinationSampler(train_codes[fit_rows], sizes, config.batch_p, config.batch_k, config.seed,
                                 extra=config.batch_random)
    plan = {"steps": config.stage1_steps if config.stage1_epochs is None else config.stage1_epochs * len(sampler)}
    opt = torch.optim.AdamW(_decay_groups(model, config.weight_decay), lr=config.lr)
    warm = 0.1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, plan["steps"], warm))
    eval_every = config.eval_every or max(50, plan["steps"] // EVALUATIONS)
    codes_t = torch.from_numpy(train_codes.astype(np.int64))
    combo = torch.from_numpy(combination_keys(train_codes, sizes))
    gen = torch.Generator().manual_seed(config.seed)
    best_state, stale, history = None, 0, []
    best_score: tuple[float, ...] = (-1.0,)
    budget = config.stage1_time_budget_s
    step, calibrated, loss = 0, False, torch.zeros(())
    cap, trained_s, eval_costs = plan["steps"], 0.0, []
    batches = iter(sampler)
    step_start = loop_start = time.perf_counter()
    while step < plan["steps"]:
        model.train()
        rows = next(batches, None)
        if rows is None:
            batches = iter(sampler)
            continue
        rows = fit_rows[rows]
        emb, logits, _ = model.head_outputs(train_src.batch(model, rows, gen))
        r = torch.from_numpy(rows)
        ramp = min(1.0, step / max(1, min(len(sampler), plan["steps"] // 10)))  # batch-hard triplets ramp in
        loss = (config.w_cls * losses.classification(logits, codes_t[r], sizes, config.label_smoothing)
                + ramp * config.w_attr_triplet * model.attribute_ranking_loss(emb, codes_t[r], config.margin, gen)
                + ramp * config.w_label_triplet * losses.batch_hard_triplet(emb, emb, combo[r], combo[r],
                                                                             config.margin, True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        now = time.perf_counter()
        out_of_time = bool(budget) and now - t0 > budget  # type: ignore[operator]
        calibrate = bool(budget) and not calibrated and step >= 20 and \
            now - loop_start > CALIBRATE_SHARE * (budget - (loop_start - t0))  # type: ignore[operator]
        if step % eval_every and step != plan["steps"] and not calibrate and not out_of_time:
            continue
        t_eval = time.perf_counter()
        train_time = t_eval - step_start
        init_memory(model, train_src.features(model, proto_rows), train_codes[proto_rows], per_value)
        val_feats = val_src.features(model)
        top = manipulation_top_k(model, schema, val_feats, val_codes, val_queries)
        acc = float(np.mean(attribute_accuracies(model, val_feats, val_codes)))
        trained_s += train_time
        eval_costs.append(time.perf_counter() - t_eval)
        if budget:  # (re)plan the remaining steps from what steps and evaluations have cost so far
            evals_left = EVALUATIONS if not calibrated else -(-(plan["steps"] - step) // eval_every)
            plan["steps"] = planned_steps(step, cap, budget - (time.perf_counter() - t0), trained_s / step,
                                          float(np.mean(eval_costs)), evals_left)
            if not calibrated:
                calibrated = True
                eval_every = config.eval_every or max(50, plan["steps"] // EVALUATIONS)
        history.append(top[30])
        # Top-30 first; Top-10, then attribute accuracy break its ties (a small validation split
        # saturates Top-30 from the first evaluation, and the first state is not the best one)
        score = (top[30], top[10], acc)
        improved = score > best_score
        if improved:
            best_score, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        result.history.append({"stage": 1, "step": step, "loss": float(loss.item()), "val_top10": top[10],
                               "val_top30": top[30], "val_attr_acc": acc, "elapsed_s": time.perf_counter() - t0})
        _log(f"  stage 1 step {step}/{plan['steps']}: loss {loss.item():.3f}  val Top-30 {top[30]:.3f}  "
             f"attribute accuracy {acc:.3f}{'  (best)' if improved else ''}")
        step_start = time.perf_counter()
        if stale >= config.patience:
            _log(f"  stage 1 stopped early: no better validation Top-30 for {stale} evaluations")
            break
        if out_of_time:
            _log(f"  stage 1 time budget of {budget:.0f} s reached after {step} of {plan['steps']} planned steps")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    still_improving = len(history) >= 2 and history[-1] >= max(history[:-1]) and stale == 0
    return still_improving, step


def check_holdout_share(share: float) -> None:
    """--stage2-holdout's range, checked before any data is read."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"--stage2-holdout must be in [0, 1), got {share}: it is the share of training items "
                         "kept out of stage 1 for stage 2 (0 = none)")


def holdout_split(n_items: int, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(stage-1 rows, stage-2 rows): ``share`` of the items, drawn at random, left out of stage 1.

    Items stage 1 never fitted look to stage 2 as new catalog items will; on myntra-small the
    smaller stage-1 set cost more than that gained (docs/quality.md), so the default is 0, which
    keeps every item in both stages."""
    check_holdout_share(share)
    rows = np.arange(n_items)
    held = int(round(share * n_items))
    if held == 0:
        return rows, rows[:0]
    order = np.random.default_rng(seed + 7).permutation(n_items)
    return np.sort(order[held:]), np.sort(order[:held])


def planned_steps(step: int, cap: int, time_left: float, per_step: float, per_eval: float, evals_left: int) -> int:
    """Stage-1 steps in all that the time left affords after the evaluations still to come, at the
    cost per step measured so far (never fewer than taken, never more than ``cap``). Training
    re-plans at every evaluation, so a machine that slows down or speeds up mid-run still ends
    its learning-rate schedule on the budget."""
    affordable = step + int(max(0.0, time_left - evals_left * per_eval) / per_step)
    return max(step, min(cap, affordable))


def _lr_factor(step: int, total: int, warm: float) -> float:
    """Linear warm-up over the first ``warm`` share of the plan, then a cosine to zero."""
    w = max(1, int(total * warm))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def _decay_groups(model: ADDE, weight_decay: float) -> list[dict[str, Any]]:
    """Stage-1 parameters (all trainable but the memory) in two groups: matrices and kernels decay,
    norm scales and biases do not (decaying them only fights the normalisation)."""
    named = [(n, p) for n, p in model.named_parameters() if n != "memory" and p.requires_grad]
    return [{"params": [p for _, p in named if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.ndim <= 1], "weight_decay": 0.0}]


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
        "guard": result.guard,
    })
    return directory


def load_checkpoint(directory: str | Path) -> tuple[ADDE, AttributeSchema, PreprocessSpec, dict[str, Any]]:
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    # the weights come from the checkpoint; checkpoints from before chunk_norm normalised the whole vector
    model = build_model(ModelConfig(**{"chunk_norm": False, **config["model"], "pretrained": False}))
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, AttributeSchema.from_json(config["schema"]), PreprocessSpec.from_json(config["preprocess"]), config


