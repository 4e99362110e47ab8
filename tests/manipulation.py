"""The product's core promise as a count, shared by the end-to-end tests of every model family:
how often the top 10 carry a requested value with the change, and without it."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def wanted_value_counts(retriever, ids: Sequence[str], codes: np.ndarray, queries: int, min_per_value: int,
                        seed: int = 0) -> tuple[int, int, int]:
    """(top-10 results with the wanted value after the change, the same for the plain search, trials)
    over up to ``queries`` random single-attribute changes to values that ``min_per_value`` items hold."""
    schema = retriever.schema
    rng = np.random.default_rng(seed)
    with_change = without = trials = 0
    for row in rng.permutation(len(ids))[:queries]:
        a = int(rng.integers(len(schema.attributes)))
        current = int(codes[row, a])
        options = [v for v in range(schema.sizes[a]) if v != current and (codes[:, a] == v).sum() >= min_per_value]
        if not options:
            continue
        value = schema.attributes[a].values[int(rng.choice(options))]
        name = schema.names[a]
        with_change += sum(r.attributes[name] == value for r in retriever.search(ids[row], {name: value}, k=10))
        without += sum(r.attributes[name] == value for r in retriever.search(ids[row], k=10))
        trials += 1
    return with_change, without, trials
