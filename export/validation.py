"""What training measures on the validation split: memory initialisation, manipulation Top-k
through the runtime's own ADDE arithmetic, per-attribute accuracy, and the guard against a
model that did not learn."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fashsdk.eval.guard import GuardReport, accuracies, check
from fashsdk.eval.methods import Gallery, attribute_based_topk
from fashsdk.eval.protocol import exact_topk, hit_rates
from fashsdk.schema import AttributeSchema

from .models import ADDE


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
    """Top-k of the model's manipulation with ``features``' items as the gallery (the runtime's
    own family arithmetic: ADDE's memory block, or DAtRNet's value means replacing chunks)."""
    return hit_rates(manipulation_results(model, schema, features, codes, queries, max(ks)), codes, queries.targets, ks)


@torch.no_grad()
def manipulation_results(model: ADDE, schema: AttributeSchema, features: torch.Tensor, codes: np.ndarray,
                         queries: Any, k: int) -> np.ndarray:
    """The gallery rows of each manipulated query's top k, by the model's own family arithmetic."""
    model.eval()
    emb = model.head_outputs(features)[0].numpy()
    family = model.query_family(schema)
    q = family.change_batch(emb[queries.rows], codes[queries.rows], queries.attrs, queries.values)
    return exact_topk(q, emb, k)


@torch.no_grad()
def attribute_accuracies(model: ADDE, features: torch.Tensor, codes: np.ndarray) -> list[float]:
    """Per attribute, the heads' accuracy on items whose label is known."""
    model.eval()
    logits = model.head_outputs(features)[1]
    blocks = torch.split(logits, model.config.attribute_sizes, dim=1)
    return accuracies(np.stack([b.argmax(1).numpy() for b in blocks], axis=1), codes)


@torch.no_grad()
def guard(model: ADDE, schema: AttributeSchema, features: torch.Tensor, codes: np.ndarray, train_codes: np.ndarray,
          queries: Any, still_improving: bool, steps: int) -> GuardReport:
    """The guard on the validation split: accuracies against the majority, Top-30 against the baselines."""
    model.eval()
    emb, logits, _ = model.head_outputs(features)
    emb_np = emb.numpy()
    predicted = schema.predicted_codes(logits.numpy())[0]
    name = model.config.architecture
    top30 = {name: manipulation_top_k(model, schema, features, codes, queries, (30,))[30]}
    top30["no_manipulation"] = hit_rates(exact_topk(emb_np[queries.rows], emb_np, 30), codes, queries.targets, (30,))[30]
    gallery = Gallery([str(i) for i in range(len(codes))], emb_np, codes, predicted)
    top30["attribute_based"] = hit_rates(attribute_based_topk(gallery, queries, 30), codes, queries.targets, (30,))[30]
    return check(schema, predicted, codes, train_codes, top30, name, still_improving, steps)
