"""Did the model learn? Per-attribute accuracy against the majority class, and manipulation
Top-30 against the baselines a model must beat, with the likely cause when it does not.

Used after training (on the validation split) and by ``python -m benchmarks.quality`` (on the
test split); ``--strict`` in either turns a failed check into an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..schema import UNKNOWN, AttributeSchema

MARGIN_POINTS = 2.0  # "clearly better": accuracy and Top-30 must lead their baselines by this many points
FEW_EXAMPLES = 20  # values with fewer labelled training examples than this are hard to learn


@dataclass
class GuardReport:
    attributes: list[dict[str, Any]] = field(default_factory=list)
    retrieval: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.warnings

    def to_json(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "retrieval": self.retrieval, "warnings": self.warnings,
                "passed": self.passed}

    def format(self) -> str:
        lines = ["attribute accuracy against always answering the most common value:"]
        for r in self.attributes:
            lines.append(f"  {r['attribute']:<16} {100 * r['accuracy']:5.1f}%  majority {100 * r['majority']:5.1f}%  "
                         f"({r['known']} labelled)")
        if self.retrieval:
            lines.append("manipulation Top-30: " + ", ".join(f"{k} {v:.3f}" for k, v in self.retrieval.items()))
        lines += [f"WARNING: {w}" for w in self.warnings] or ["the model is clearly better than every baseline"]
        return "\n".join(lines)


def majority_shares(codes: np.ndarray, sizes: Sequence[int]) -> list[float]:
    """Per attribute, the share of labelled items that carry its most common value."""
    out = []
    for a, size in enumerate(sizes):
        known = codes[:, a][codes[:, a] != UNKNOWN]
        out.append(float(np.bincount(known, minlength=size).max() / len(known)) if len(known) else 1.0)
    return out


def accuracies(predicted: np.ndarray, codes: np.ndarray) -> list[float]:
    """Per attribute, the share of labelled items whose predicted value is the label."""
    out = []
    for a in range(codes.shape[1]):
        known = codes[:, a] != UNKNOWN
        out.append(float((predicted[known, a] == codes[known, a]).mean()) if known.any() else 0.0)
    return out


def check(schema: AttributeSchema, predicted: np.ndarray, codes: np.ndarray, train_codes: np.ndarray | None = None,
          top30: Mapping[str, float] | None = None, model_row: str = "adde", still_improving: bool = False,
          steps: int | None = None) -> GuardReport:
    """Compare a model with its baselines. ``predicted``/``codes``: the heads' values and the labels
    on held-out items; ``train_codes``: training labels (to name rare values); ``top30``: Top-30 by
    method, including ``model_row``, "no_manipulation" and "attribute_based"."""
    report = GuardReport()
    accs, majority = accuracies(predicted, codes), majority_shares(codes, schema.sizes)
    counts = None if train_codes is None else [np.bincount(train_codes[:, a][train_codes[:, a] != UNKNOWN],
                                                           minlength=s) for a, s in enumerate(schema.sizes)]
    weak = []
    for a, attr in enumerate(schema.attributes):
        known = int((codes[:, a] != UNKNOWN).sum())
        report.attributes.append({"attribute": attr.name, "accuracy": accs[a], "majority": majority[a], "known": known})
        if 100 * (accs[a] - majority[a]) < MARGIN_POINTS:
            weak.append(attr.name)
            cause = _cause(attr.name, attr.values, None if counts is None else counts[a], still_improving, steps)
            report.warnings.append(f"{attr.name}: accuracy {100 * accs[a]:.1f}% is not clearly above the "
                                   f"{100 * majority[a]:.1f}% of always answering the most common value; {cause}")
    if top30:
        report.retrieval = dict(top30)
        for baseline in ("no_manipulation", "attribute_based"):
            if baseline in top30 and model_row in top30 and 100 * (top30[model_row] - top30[baseline]) < MARGIN_POINTS:
                report.warnings.append(
                    f"manipulation Top-30 {top30[model_row]:.3f} is not clearly above {baseline} "
                    f"({top30[baseline]:.3f}): the embedding does not carry the attributes well enough yet; "
                    + ("training stopped while validation was still improving: give it more steps or time"
                       if still_improving else "check the attribute checks above and train longer"))
    return report


def _cause(name: str, values: Sequence[str], counts: np.ndarray | None, still_improving: bool,
           steps: int | None) -> str:
    if still_improving:
        return "likely cause: too few steps (validation was still improving when training stopped)"
    if counts is not None:
        rare = [v for v, c in zip(values, counts) if c < FEW_EXAMPLES]
        if len(rare) > len(values) // 2:
            return (f"likely cause: too few examples of most values ({len(rare)} of {len(values)} have fewer than "
                    f"{FEW_EXAMPLES} labelled training images; raise --min-count to fold them)")
    if steps is not None and steps < 500:
        return f"likely cause: too few steps ({steps}); raise the training budget"
    return f"likely cause: {name!r} may not be visible in the photos, or its labels are noisy"
