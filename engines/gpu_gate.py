"""Accuracy gate for reduced-precision engines: a candidate backend against CPU fp32.

Run at build time on real catalog images (500 by default). An engine passes when
- the mean cosine between its embeddings and the fp32 ones is >= 0.999,
- each image's top-10 neighbours (within the sample) overlap the fp32 ones by >= 0.98 on
  average (ties within 1e-4 of reference similarity count as shared; see neighbour_overlap),
- Top-30 manipulation accuracy (the papers' protocol on the sample as gallery) moves by
  at most 0.5 points.

The gate only sees ``EmbeddingBackend.run``, so the same code checks TensorRT plans, ONNX
Runtime CUDA, or (for tests and machines without a GPU) the fp16 model on ONNX Runtime CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fashsdk.encoding.backends.base import EmbeddingBackend, ModelOutputs
from fashsdk.eval.protocol import exact_topk, hit_rates, manipulation_queries
from fashsdk.families import Family
from fashsdk.schema import AttributeSchema


class GateError(RuntimeError):
    """The candidate engine is not accurate enough to ship; the report says where."""


@dataclass(frozen=True)
class GateThresholds:
    min_mean_cosine: float = 0.999
    min_neighbour_overlap: float = 0.98
    max_top30_change_points: float = 0.5
    neighbours: int = 10
    tie_tolerance: float = 1e-4  # reference-similarity gap below which neighbours count as tied
    top_k: int = 30
    max_queries: int = 20000
    seed: int = 0


@dataclass
class GateReport:
    reference: str
    candidate: str
    images: int
    mean_cosine: float
    min_cosine: float
    neighbour_overlap: float  # tie-aware (gated)
    neighbour_overlap_strict: float  # plain set overlap (reported)
    queries: int
    top_k_reference: float
    top_k_candidate: float
    top_k_change_points: float
    max_logit_diff: float
    thresholds: GateThresholds
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def summary(self) -> str:
        t = self.thresholds
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return (f"accuracy gate {self.candidate} vs {self.reference} on {self.images} images: mean cosine "
                f"{self.mean_cosine:.6f} (>= {t.min_mean_cosine}), top-{t.neighbours} neighbour overlap "
                f"{self.neighbour_overlap:.4f} (>= {t.min_neighbour_overlap}; strict "
                f"{self.neighbour_overlap_strict:.4f}), Top-{t.top_k} "
                f"{100 * self.top_k_reference:.2f} -> {100 * self.top_k_candidate:.2f} "
                f"({self.top_k_change_points:+.2f} points, |change| <= {t.max_top30_change_points}) over "
                f"{self.queries} queries: {verdict}")


def embed(backend: EmbeddingBackend, images: np.ndarray, batch_size: int = 64) -> ModelOutputs:
    """Run a backend over normalised float32 images (N, 3, H, W) in batches."""
    embeddings, logits = [], []
    for s in range(0, len(images), batch_size):
        out = backend.run(np.ascontiguousarray(images[s:s + batch_size], dtype=np.float32))
        embeddings.append(np.asarray(out.embedding, np.float32))
        logits.append(np.asarray(out.logits, np.float32))
    return ModelOutputs(np.concatenate(embeddings), np.concatenate(logits))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (robust to rows that are not exactly unit length)."""
    na = np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    return (a * b).sum(1) / (na * nb)


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, k: int = 10,
                      tie_tolerance: float = 1e-4) -> tuple[float, float]:
    """(tie-aware, strict) mean top-k neighbour overlap; each image's own row excluded.

    Strict: |kNN_ref(i) & kNN_cand(i)| / k. Tie-aware: a candidate neighbour also counts when
    its *reference* similarity is within ``tie_tolerance`` of the reference k-th neighbour's,
    because trained embeddings put many same-label photos within 1e-5 of each other (duplicate
    shots, tight label clusters), where the reference order itself is decided by rounding
    below fp16's resolution (~5e-4). The gate uses the tie-aware figure; both are reported.
    """
    n = len(reference)
    if n < 2:
        raise ValueError("neighbour overlap needs at least two images")
    k = min(k, n - 1)
    tie_aware, strict = np.empty(n), np.empty(n)
    for s in range(0, n, 1024):
        rows = np.arange(s, min(n, s + 1024))
        local = np.arange(len(rows))
        ref_sims = reference[rows] @ reference.T
        cand_sims = candidate[rows] @ candidate.T
        ref_sims[local, rows] = -np.inf  # never your own neighbour
        cand_sims[local, rows] = -np.inf
        ref_top = np.argpartition(-ref_sims, k - 1, axis=1)[:, :k]
        cand_top = np.argpartition(-cand_sims, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(ref_sims, ref_top, 1).min(axis=1)
        tie_aware[rows] = (np.take_along_axis(ref_sims, cand_top, 1) >= kth[:, None] - tie_tolerance).mean(axis=1)
        for j in local:
            strict[rows[j]] = len(np.intersect1d(ref_top[j], cand_top[j], assume_unique=True)) / k
    return float(tie_aware.mean()), float(strict.mean())


def manipulation_top_k(vectors: np.ndarray, codes: np.ndarray, family: Family, schema: AttributeSchema,
                       k: int = 30, max_queries: int | None = 20000, seed: int = 0) -> tuple[float, int]:
    """Top-k accuracy of single-attribute manipulation queries with the sample as gallery,
    through the bundle's own family arithmetic."""
    queries = manipulation_queries(codes, schema.sizes, max_queries=max_queries, seed=seed)
    if not len(queries):
        return 0.0, 0
    q = family.change_batch(vectors[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    results = exact_topk(q, vectors, k)
    return hit_rates(results, codes, queries.targets, (k,))[k], len(queries)


def evaluate(reference: ModelOutputs, candidate: ModelOutputs, codes: np.ndarray, family: Family,
             schema: AttributeSchema, thresholds: GateThresholds = GateThresholds(),
             names: tuple[str, str] = ("reference", "candidate")) -> GateReport:
    """Compare two sets of model outputs for the same images and decide pass/fail."""
    if reference.embedding.shape != candidate.embedding.shape:
        raise GateError(f"{names[1]} embeddings have shape {candidate.embedding.shape}, "
                        f"{names[0]} {reference.embedding.shape}: not the same model")
    if not np.isfinite(candidate.embedding).all():
        raise GateError(f"{names[1]} produced NaN or infinite embeddings (fp16 overflow?)")
    cos = cosines(reference.embedding, candidate.embedding)
    overlap, strict = neighbour_overlap(reference.embedding, candidate.embedding, thresholds.neighbours,
                                        thresholds.tie_tolerance)
    top_ref, nq = manipulation_top_k(reference.embedding, codes, family, schema, thresholds.top_k,
                                     thresholds.max_queries, thresholds.seed)
    top_cand, _ = manipulation_top_k(candidate.embedding, codes, family, schema, thresholds.top_k,
                                     thresholds.max_queries, thresholds.seed)
    report = GateReport(
        reference=names[0], candidate=names[1], images=len(cos), mean_cosine=float(cos.mean()),
        min_cosine=float(cos.min()), neighbour_overlap=overlap, neighbour_overlap_strict=strict, queries=nq,
        top_k_reference=top_ref, top_k_candidate=top_cand, top_k_change_points=100.0 * (top_cand - top_ref),
        max_logit_diff=float(np.abs(reference.logits - candidate.logits).max()), thresholds=thresholds)
    report.failures = decide(report)
    return report


def threshold_failures(mean_cosine: float, overlap: float, change_points: float | None, *, min_mean_cosine: float,
                       min_overlap: float, max_change_points: float, neighbours: int, top_k: int = 30) -> list[str]:
    """The accuracy rules every reduced-precision engine (int8, fp16, TensorRT) is held to;
    each failure names the figure and its limit. ``change_points`` None: no labels, not checked."""
    failures = []
    if not mean_cosine >= min_mean_cosine:
        failures.append(f"mean cosine {mean_cosine:.6f} < {min_mean_cosine}")
    if not overlap >= min_overlap:
        failures.append(f"top-{neighbours} neighbour overlap {overlap:.4f} < {min_overlap}")
    if change_points is not None and not abs(change_points) <= max_change_points:
        failures.append(f"Top-{top_k} accuracy moved {change_points:+.2f} points (allowed +-{max_change_points})")
    return failures


def decide(report: GateReport) -> list[str]:
    """The reasons a report fails (empty when it passes)."""
    t = report.thresholds
    failures = threshold_failures(report.mean_cosine, report.neighbour_overlap, report.top_k_change_points,
                                  min_mean_cosine=t.min_mean_cosine, min_overlap=t.min_neighbour_overlap,
                                  max_change_points=t.max_top30_change_points, neighbours=t.neighbours,
                                  top_k=t.top_k)
    if report.queries == 0:
        failures.append("no valid manipulation queries in the sample: use more (or labelled) images")
    return failures


def run_gate(reference: EmbeddingBackend, candidate: EmbeddingBackend, images: np.ndarray, codes: np.ndarray,
             family: Family, schema: AttributeSchema, thresholds: GateThresholds = GateThresholds(),
             batch_size: int = 64) -> GateReport:
    """Embed ``images`` with both backends and evaluate; never raises on a failing engine."""
    ref = embed(reference, images, batch_size)
    cand = embed(candidate, images, batch_size)
    return evaluate(ref, cand, codes, family, schema, thresholds,
                    (getattr(reference, "name", "reference"), getattr(candidate, "name", "candidate")))


def require_pass(report: GateReport) -> GateReport:
    if not report.passed:
        raise GateError(report.summary() + ". The engine was not registered; keep more ops in fp32 or "
                        "serve the fp32/int8 engine instead.")
    return report


def gate_sample(bundle: Any, labels: str | Path, images: str | Path | Sequence[str | Path], n: int = 500,
                split: str | None = "test", seed: int = 0, id_column: str = "id",
                split_column: str = "split") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` real catalog images (normalised for the bundle) with their label codes and ids.

    Drawn with a fixed seed from ``split`` (default "test": images the model never trained
    on) when the labels have a split column, else (or with ``split=None``) from all rows.
    """
    from fashsdk.sources.catalog import read_catalog
    from fashsdk.sources.images import load_images
    from fashsdk.sources.preprocess import decode_resized, normalize

    catalog, _ = read_catalog(labels, bundle.schema.names, id_column=id_column, split_column=split_column,
                              schema=bundle.schema)
    if split is not None and catalog.splits is not None:
        catalog = catalog.split(split)  # CatalogError naming the splits present if absent
    pick = np.sort(np.random.default_rng(seed).choice(len(catalog), min(n, len(catalog)), replace=False))
    catalog = catalog.subset(pick)
    encoded = load_images(images, catalog.ids)
    pixels = np.stack([decode_resized(encoded[i], bundle.preprocess) for i in catalog.ids])
    return normalize(pixels, bundle.preprocess), catalog.codes, list(catalog.ids)
