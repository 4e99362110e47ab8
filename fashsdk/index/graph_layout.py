"""Renumber a built hnswlib graph so that graph neighbours lie next to each other in memory.

hnswlib stores node i's links and vector at offset i * (bytes per node) of one array, in
insertion order. A query visits a few thousand nodes; at 1M nodes each is a cache (and TLB)
miss, so the walk is bound by memory latency, and it is cheaper when the neighbours a node
leads to sit on nearby pages. ``relaid`` renumbers the nodes in breadth-first order from the
entry point (siblings together), with the caller's grouping (attribute combination) as the
major key. It goes through hnswlib's own state export (the dict its pickling uses, never a
file), permutes node records and rewrites every link, then checks on probe queries that the
new graph answers exactly as the old one did.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

LIST_HEADER = 4  # bytes: uint16 link count, a deleted-mark byte, one spare byte
_CHUNK = 16384  # node records permuted at a time


def level0_links(block: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, ids) views into link-list records of ``width`` links each (block: uint8 rows)."""
    words = block.view(np.uint32)
    return words[:, 0] & 0xFFFF, words[:, 1:1 + width]


def breadth_first(neighbours: np.ndarray, counts: np.ndarray, start: int) -> np.ndarray:
    """Node order of a breadth-first walk from ``start``; each node's new neighbours follow it
    in link order; unreachable nodes (deleted-only regions) come last in their old order."""
    n = len(neighbours)
    valid = np.arange(neighbours.shape[1])[None, :] < counts[:, None]
    seen = np.zeros(n, bool)
    seen[start] = True
    levels, frontier = [], np.array([start], np.int64)
    while frontier.size:
        levels.append(frontier)
        reached = neighbours[frontier][valid[frontier]].astype(np.int64)
        reached = reached[~seen[reached]]
        _, first = np.unique(reached, return_index=True)
        frontier = reached[np.sort(first)]  # first discovery order, duplicates dropped
        seen[frontier] = True
    return np.concatenate(levels + [np.flatnonzero(~seen)])


def locality_permutation(state: dict, groups: np.ndarray | None) -> np.ndarray:
    """perm[new] = old internal id: breadth-first rank, grouped by ``groups`` (one int64 key
    per node, by internal id) when given."""
    n, per, width = int(state["cur_element_count"]), int(state["size_data_per_element"]), int(state["max_M0"])
    rows = state["data_level0"].view(np.uint8)[:n * per].reshape(n, per)
    counts, ids = level0_links(rows[:, :LIST_HEADER + 4 * width], width)
    order = breadth_first(ids, counts, int(state["enterpoint_node"]))
    if groups is None:
        return order
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    return np.lexsort((rank, groups))


def permuted_state(state: dict, perm: np.ndarray) -> dict:
    """A copy of hnswlib's state with node i of the result being node perm[i] of the input."""
    n, per = int(state["cur_element_count"]), int(state["size_data_per_element"])
    width0, width = int(state["max_M0"]), int(state["max_M"])
    if len(perm) != n:
        raise ValueError(f"permutation has {len(perm)} entries for {n} nodes")
    inverse = np.empty(n, np.int64)
    inverse[perm] = np.arange(n)
    out = dict(state)
    level0 = state["data_level0"].view(np.uint8).reshape(-1, per)
    new0 = np.empty_like(level0)
    new0[n:] = level0[n:]  # capacity not yet used
    links = LIST_HEADER + 4 * width0
    for start in range(0, n, _CHUNK):  # chunks: no second full-size temporary, cache-sized work
        rows = level0[perm[start:start + _CHUNK]]
        rows[:, :links] = _remapped(rows[:, :links], width0, inverse)
        new0[start:start + len(rows)] = rows
    out["data_level0"] = new0.reshape(-1).view(state["data_level0"].dtype)

    levels = state["element_levels"]
    record = int(state["size_links_per_element"])
    sizes = levels[:n].astype(np.int64) * record
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    new_sizes = sizes[perm]
    total = int(new_sizes.sum())
    # byte gather: for each new node, the byte range of its old upper-level lists
    owner = np.repeat(np.arange(n), new_sizes)
    offset = np.arange(total) - np.repeat(np.cumsum(new_sizes) - new_sizes, new_sizes)
    upper = state["link_lists"].view(np.uint8)[starts[perm][owner] + offset].copy()
    if total:
        upper = _remapped(upper.reshape(-1, record), width, inverse).reshape(-1)
    out["link_lists"] = upper.view(state["link_lists"].dtype)
    new_levels = levels.copy()
    new_levels[:n] = levels[perm]
    out["element_levels"] = new_levels
    out["label_lookup_internal"] = inverse[state["label_lookup_internal"].astype(np.int64)].astype(
        state["label_lookup_internal"].dtype)
    out["enterpoint_node"] = int(inverse[int(state["enterpoint_node"])])
    return out


def _remapped(block: np.ndarray, width: int, inverse: np.ndarray) -> np.ndarray:
    """Link-list records (rows of bytes) with every valid link id mapped through ``inverse``;
    unused slots become 0 (hnswlib never reads past the count)."""
    out = np.ascontiguousarray(block)
    counts, ids = level0_links(out, width)  # views into ``out``
    valid = np.arange(width)[None, :] < counts[:, None]
    ids[:] = np.where(valid, inverse[np.where(valid, ids, 0)], 0)
    return out


def relaid(graph: Any, groups_of_labels: Callable[[np.ndarray], np.ndarray] | None = None,
           probes: np.ndarray | None = None, probe_k: int = 10) -> Any:
    """A new hnswlib.Index holding ``graph`` renumbered for locality, or None when hnswlib's
    state does not round-trip (a format this code does not know): the caller keeps ``graph``.

    ``groups_of_labels(labels) -> int64 keys`` groups nodes (e.g. by attribute combination);
    ``probes`` (Q, dim) float32 queries whose top ``probe_k`` must come out identical.
    """
    import hnswlib

    state = graph.__getstate__()[0]
    if int(state.get("ser_version", -1)) != 1:
        return None
    n = int(state["cur_element_count"])
    if n < 2:
        return None
    groups = None
    if groups_of_labels is not None:
        per, at = int(state["size_data_per_element"]), int(state["label_offset"])
        rows = state["data_level0"].view(np.uint8)[:n * per].reshape(n, per)
        labels = np.ascontiguousarray(rows[:, at:at + 8]).view(np.uint64).ravel()
        groups = np.asarray(groups_of_labels(labels), np.int64)
    new_state = permuted_state(state, locality_permutation(state, groups))
    del state
    fresh = hnswlib.Index.__new__(hnswlib.Index)
    fresh.__setstate__((new_state,))
    if probes is not None and len(probes):
        k = min(probe_k, n)
        _, old = graph.knn_query(probes, k=k)
        try:
            _, new = fresh.knn_query(probes, k=k)
        except RuntimeError:  # too few reachable nodes: the links came out wrong
            return None
        if not np.array_equal(old, new):  # equal distances; labels may swap between exact duplicates
            return None
    return fresh
