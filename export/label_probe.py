"""The label rerank's parts, made at export: a linear probe per attribute on the served embedding,
its weights chosen on the validation split, and the bundle that carries them.

The probe is a softmax regression per attribute on the L2-normalised embedding (the vector the
index stores), fitted in numpy on the training split's embeddings with their labels, so it reads
attributes from any family's vectors, DAtRNet's and FashionSearchNet's included. Training items'
embeddings are fitted closely, so the probe's confidence on them is not its confidence on new items:
each attribute's logits are then divided by a temperature that minimises the validation items'
log loss (folded into the weights, so the runtime is unchanged; docs/quality.md). The rerank's
weights (``kept`` for the attributes a query keeps, ``changed`` for those it changes) are the pair
of ``KEPT_GRID`` x ``CHANGED_SHARE`` with the most validation Top-30 hits over the pool the SDK
serves (CANDIDATES nearest plus VALUE_CANDIDATES carrying the wanted values); when no pair beats
the plain ranking, the bundle gets no rerank. Runtime side: fashsdk/tasks/label_rerank.py.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fashsdk.bundle import MANIFEST, Bundle
from fashsdk.eval.methods import rerank_pool, value_candidates as value_candidate_rows
from fashsdk.eval.protocol import QuerySet, exact_topk, paired_lead, query_hits
from fashsdk.families import NO_CHANGE, Family
from fashsdk.files import atomic_save_npy, atomic_write_json, seal, sha256_file
from fashsdk.tasks.label_rerank import MANIFEST_KEY, LabelRerank, wanted_values

KEPT_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15)  # weight of log p per kept attribute
CHANGED_SHARE = (0.0, 0.5, 1.0, 2.0)  # the changed attributes' weight as a share of the kept one
# the pool reordered: the changed query's nearest neighbours and its nearest among the items that carry
# the wanted values; with the second, more of the first gain little and cost time (docs/quality.md)
CANDIDATES = 200
VALUE_CANDIDATES = 50
TOP_K = 30
PROBE_MAX_ROWS = 50_000  # training rows the probe is fitted on (a uniform sample above this)
TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 81)).astype(np.float32)  # searched per attribute
CALIBRATION_MIN_ITEMS = 30  # labelled validation items an attribute needs before its temperature is fitted
FILES = {"weights": "label_probe_weights.npy", "bias": "label_probe_bias.npy"}


def probe_rows(count: int, seed: int = 0) -> np.ndarray:
    """The training rows the probe is fitted on: all of them, or a seeded uniform sample of
    PROBE_MAX_ROWS (callers that must encode the images first ask before encoding)."""
    if count <= PROBE_MAX_ROWS:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, PROBE_MAX_ROWS, replace=False))


def fit_probe(vectors: np.ndarray, codes: np.ndarray, sizes: Sequence[int], steps: int = 300, lr: float = 0.05,
              l2: float = 1e-4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(weights (D, J), bias (J,)): softmax regression per attribute by full-batch Adam; labels < 0
    (unknown) are left out of their attribute's loss."""
    vectors, codes = np.asarray(vectors, np.float32), np.asarray(codes)
    if len(vectors) != len(codes) or codes.shape[1:] != (len(sizes),):
        raise ValueError(f"probe data: {len(vectors)} vectors, codes of shape {codes.shape}, {len(sizes)} attributes")
    rows = probe_rows(len(vectors), seed)
    vectors, codes = vectors[rows], codes[rows]
    offsets = np.cumsum((0, *sizes[:-1]))
    weights = np.zeros((vectors.shape[1], sum(sizes)), np.float32)
    bias = np.zeros(sum(sizes), np.float32)
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in (weights, bias)]
    known = [np.flatnonzero(codes[:, a] >= 0) for a in range(len(sizes))]
    unknown = [codes[:, a] < 0 for a in range(len(sizes))]
    for step in range(1, steps + 1):
        grad = vectors @ weights + bias  # logits, turned into d loss / d logits in place
        for a, (offset, size) in enumerate(zip(offsets, sizes)):
            block = grad[:, offset:offset + size]
            block -= block.max(axis=1, keepdims=True)
            np.exp(block, out=block)
            block /= block.sum(axis=1, keepdims=True)
            block[known[a], codes[known[a], a]] -= 1.0
            block[unknown[a]] = 0.0
            block /= max(len(known[a]), 1)
        for param, g, (m, v) in ((weights, vectors.T @ grad + l2 * weights, moments[0]),
                                 (bias, grad.sum(axis=0), moments[1])):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            param -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return weights, bias


def calibrate(weights: np.ndarray, bias: np.ndarray, sizes: Sequence[int], vectors: np.ndarray,
              codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, bias, temperatures (A,)): each attribute's logits divided by the temperature of
    TEMPERATURES with the lowest log loss on ``vectors`` (held-out items) and their labels; 1 for an
    attribute with fewer than CALIBRATION_MIN_ITEMS labelled items there (too few to say).
    Dividing the weights and bias gives the same logits."""
    logits = np.asarray(vectors, np.float32) @ weights + bias
    offsets = np.cumsum((0, *sizes[:-1]))
    temperatures = np.ones(len(sizes), np.float32)
    for a, (offset, size) in enumerate(zip(offsets, sizes)):
        known = np.flatnonzero(codes[:, a] >= 0)
        if len(known) < CALIBRATION_MIN_ITEMS:
            continue
        block = logits[known, offset:offset + size]
        block = block - block.max(axis=1, keepdims=True)
        true = block[np.arange(len(known)), codes[known, a]]
        loss = [float(np.mean(np.log(np.exp(block / t).sum(axis=1)) - true / t)) for t in TEMPERATURES]
        temperatures[a] = TEMPERATURES[int(np.argmin(loss))]
    per_value = np.repeat(1.0 / temperatures, sizes).astype(np.float32)
    return (weights * per_value).astype(np.float32), (bias * per_value).astype(np.float32), temperatures


@dataclass
class RerankChoice:
    """The chosen rerank (None: none beat the plain ranking) and every grid pair's validation Top-30."""

    rerank: LabelRerank | None
    plain: np.ndarray  # per validation query: hit at 30 without rerank
    grid: dict[tuple[float, float], np.ndarray]
    probe_accuracy: dict[str, float]
    probe_temperatures: dict[str, float] = field(default_factory=dict)  # per attribute, chosen on validation

    def to_json(self) -> dict[str, Any]:
        best = self.plain if self.rerank is None else self.grid[(self.rerank.kept, self.rerank.changed)]
        lead, error = paired_lead(self.plain, best)
        return {"val_top30_plain": round(float(self.plain.mean()), 4), "val_top30": round(float(best.mean()), 4),
                "val_lead": round(lead, 4), "val_lead_se": round(error, 4), "probe_accuracy": self.probe_accuracy,
                **({"probe_temperatures": self.probe_temperatures} if self.probe_temperatures else {}),
                "val_top30_by_weights": {f"kept {k:g} changed {c:g}": round(float(h.mean()), 4)
                                         for (k, c), h in self.grid.items()}}


def choose_rerank(weights: np.ndarray, bias: np.ndarray, sizes: Sequence[int], names: Sequence[str], family: Family,
                  vectors: np.ndarray, codes: np.ndarray, queries: QuerySet, candidates: int = CANDIDATES,
                  value_candidates: int = VALUE_CANDIDATES) -> RerankChoice:
    """Validation Top-30 of the family's queries over ``vectors`` (the validation gallery), reranked
    with each grid pair; the best pair (ties: the smaller weights), or none when none beats plain."""
    probe = LabelRerank(weights, bias, tuple(sizes), 0.0, 0.0, candidates, value_candidates)
    log_probs = probe.log_probs(vectors)
    predicted = np.stack([log_probs[:, o:o + s].argmax(1) for o, s in zip(probe.offsets, sizes)], axis=1)
    accuracy = {}
    for a, name in enumerate(names):
        ok = codes[:, a] >= 0
        accuracy[name] = round(float((predicted[ok, a] == codes[ok, a]).mean()), 4)
    moved = family.change_batch(vectors[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    top = exact_topk(moved, vectors, max(candidates, TOP_K))
    extra = (value_candidate_rows(vectors, predicted, moved, queries, value_candidates) if value_candidates > 0
             else None)
    rows, cosine = rerank_pool(vectors, moved, top, extra)  # value candidates by predictions, as the evaluation
    wanted, changed = wanted_values(codes[queries.rows], queries.attrs, queries.values, NO_CHANGE)
    plain = query_hits(top, codes, queries.targets, TOP_K)
    grid: dict[tuple[float, float], np.ndarray] = {}
    for kept in KEPT_GRID:
        for share in CHANGED_SHARE:
            if kept == 0.0 and share != CHANGED_SHARE[0]:
                continue
            pair = replace(probe, kept=kept, changed=kept * share)
            order, _ = pair.order(cosine, log_probs, rows, wanted, changed)
            grid[(pair.kept, pair.changed)] = query_hits(np.take_along_axis(rows, order, 1), codes, queries.targets,
                                                         TOP_K)
    kept, changed_weight = max(grid, key=lambda p: (int(grid[p].sum()), -p[0], -p[1]))
    chosen = None
    if grid[(kept, changed_weight)].sum() > plain.sum():
        chosen = replace(probe, kept=kept, changed=changed_weight)
    return RerankChoice(chosen, plain, grid, accuracy)


def attach_rerank(directory: Path, choice: RerankChoice) -> Bundle:
    """Write the probe beside the bundle's files and the rerank into its manifest (sealed, written
    atomically last, so a crash leaves the previous bundle loadable); without a chosen rerank,
    remove any earlier one."""
    if (directory / (MANIFEST + ".sig")).exists():
        raise ValueError(f"bundle {directory} is signed and adding a rerank changes its manifest: add the rerank to "
                         "the unsigned bundle, then sign it (fashsdk sign --key KEY BUNDLE)")
    manifest = dict(Bundle.load(directory).manifest)
    files = dict(manifest["files"])
    for name in FILES.values():
        files.pop(name, None)
    manifest.pop(MANIFEST_KEY, None)
    if choice.rerank is not None:
        atomic_save_npy(directory / FILES["weights"], choice.rerank.weights.astype(np.float32))
        atomic_save_npy(directory / FILES["bias"], choice.rerank.bias.astype(np.float32))
        for name in FILES.values():
            files[name] = {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
        manifest[MANIFEST_KEY] = choice.rerank.to_manifest(dict(FILES), {"validation": choice.to_json()})
    manifest["files"] = files
    atomic_write_json(directory / MANIFEST, seal(manifest))
    return Bundle.load(directory)


def add_rerank(directory: Path, train_vectors: np.ndarray, train_codes: np.ndarray, val_vectors: np.ndarray,
               val_codes: np.ndarray, queries: QuerySet, seed: int = 0,
               log: Callable[[str], None] = print) -> RerankChoice:
    """Fit the probe on the training items, calibrate it and choose the weights on validation, attach
    them to the bundle in ``directory``."""
    bundle = Bundle.load(directory)
    schema = bundle.schema
    t = time.perf_counter()
    weights, bias = fit_probe(train_vectors, train_codes, schema.sizes, seed=seed)
    weights, bias, temperatures = calibrate(weights, bias, schema.sizes, val_vectors, val_codes)
    choice = choose_rerank(weights, bias, schema.sizes, schema.names, bundle.family, val_vectors, val_codes, queries)
    choice = replace(choice, probe_temperatures={n: round(float(v), 3) for n, v in zip(schema.names, temperatures)})
    attach_rerank(directory, choice)
    report = choice.to_json()
    accuracy = ", ".join(f"{n} {100 * v:.1f}%" for n, v in choice.probe_accuracy.items())
    plain, chosen = report["val_top30_plain"], report["val_top30"]
    calibrated = ", ".join(f"{n} {v:g}" for n, v in choice.probe_temperatures.items())
    if choice.rerank is None:
        log(f"   label rerank: no weights beat the plain ranking on validation (Top-30 {plain:.3f}); "
            f"{directory} ranks by cosine alone (probe accuracy {accuracy})")
    else:
        rerank = choice.rerank
        log(f"   label rerank in {directory}: weights kept {rerank.kept:g}, changed {rerank.changed:g} over "
            f"{rerank.candidates} + {rerank.value_candidates} candidates; validation Top-30 {plain:.3f} -> "
            f"{chosen:.3f} (lead {100 * report['val_lead']:+.1f} points, standard error "
            f"{100 * report['val_lead_se']:.1f}); probe accuracy {accuracy}; temperatures {calibrated}; "
            f"{time.perf_counter() - t:.0f} s")
    return choice
