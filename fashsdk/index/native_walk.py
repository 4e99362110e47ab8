"""The native graph walk: the index's hnswlib graph walked in C on int8 codes, re-ranked exactly.

hnswlib scores every node a query visits on its full float32 vector (1 KB at 256-d, sixteen
cache lines), and a walk visits a thousand or more nodes. Here the same level-0 links are
walked on int8 codes of a 64-d projection (one cache line per node), starting from the best
of a few hundred seed nodes, and the final beam is re-scored on the float32 vectors, so the
results carry exact scores. walk.c is plain C compiled once per process with the machine's
compiler (into a private temporary directory, loaded with ctypes, which releases the GIL
during the call: concurrent readers walk in parallel, each on its own scratch buffers).

Without a C compiler, or with FASHSDK_NATIVE_WALK=0, ``kernel()`` is None and searches walk
hnswlib directly. A walk copies the graph when it is made, so any write to the graph drops
it (ProjectedGraph.add/remove/relayout); builds, ``optimize`` and loading make a new one.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..system import usable_cores
from .graph_layout import LIST_HEADER, level0_links
from .projection import fit_projection

if TYPE_CHECKING:
    from .graph import ProjectedGraph

log = logging.getLogger("fashsdk")

CODE_DIM = 64  # projection width of the codes (64 walked faster than 128 or 256 at equal recall)
SEEDS = 256  # nodes scored before the walk; the best STARTS (walk.c) start it
MAX_BEAM = 4096  # largest ef a walk accepts (more is clamped)
MIN_WALK_NODES = 1024  # smaller per-value graphs stay with hnswlib: they sit in cache
FIT_SAMPLE = 32768
_FLAGS = ["-O3", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
          "-shared", "-fPIC"]  # not -ffast-math: in a shared library it can flush denormals process-wide

_P = ctypes.c_void_p


class _Graph(ctypes.Structure):
    _fields_ = [(name, _P) for name in ("codes", "scale", "exact", "links", "labels", "alive", "seeds", "seed_codes",
                                        "projection")] + [(name, ctypes.c_int32) for name in ("n", "d", "p", "width",
                                                                                               "n_seeds",
                                                                                               "exact_by_node",
                                                                                               "float_codes")]


class _Scratch(ctypes.Structure):
    _fields_ = [(name, _P) for name in ("query", "scaled", "visited", "candidates", "beam", "out_labels",
                                        "out_scores")] + [("tag", ctypes.c_uint32), ("capacity", ctypes.c_int32)]


_loaded: ctypes.CDLL | None | bool = False  # False: not tried yet
_load_lock = threading.Lock()


def kernel() -> ctypes.CDLL | None:
    """The compiled walk, compiled on first use; None when it cannot be (logged once)."""
    global _loaded
    if _loaded is False:
        with _load_lock:
            if _loaded is False:
                _loaded = _compile()
    return _loaded  # type: ignore[return-value]


def _compile() -> ctypes.CDLL | None:
    if os.environ.get("FASHSDK_NATIVE_WALK", "1") == "0":
        log.info("FASHSDK_NATIVE_WALK=0: searches walk hnswlib directly")
        return None
    source = Path(__file__).with_name("walk.c")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not source.is_file():
        log.warning("no C compiler (set CC or install gcc/clang): searches walk hnswlib directly, "
                    "about 1.3x slower at equal recall (docs/performance.md)")
        return None
    with tempfile.TemporaryDirectory(prefix="fashsdk-walk-") as tmp:
        target = Path(tmp) / "walk.so"
        error = ""
        for tuning in (["-march=native"], []):  # some compilers (Apple clang on arm64) refuse -march=native
            try:
                subprocess.run([compiler, *tuning, *_FLAGS, str(source), "-o", str(target)], check=True,
                               capture_output=True, timeout=120)
                break
            except (OSError, subprocess.SubprocessError) as exc:
                error = getattr(exc, "stderr", b"") or str(exc)
        else:
            log.warning("compiling the native walk failed (%s): searches walk hnswlib directly",
                        error.decode(errors="replace")[:300] if isinstance(error, bytes) else error)
            return None
        library = ctypes.CDLL(str(target))  # the mapping outlives the file
    library.fs_search.argtypes = [_P, _P, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int32]
    library.fs_search.restype = ctypes.c_int
    return library


class NativeWalk:
    """A snapshot of one graph for the C walk; ``search`` is safe from many threads at once."""

    def __init__(self, library: ctypes.CDLL, graph: "ProjectedGraph", exact: np.ndarray | None,
                 alive: np.ndarray, float_codes: bool = False) -> None:
        state = graph.graph.__getstate__()[0]
        if int(state.get("ser_version", -1)) != 1:
            raise ValueError(f"hnswlib state version {state.get('ser_version')!r} is not one this walk reads")
        n, per, width = int(state["cur_element_count"]), int(state["size_data_per_element"]), int(state["max_M0"])
        rows = state["data_level0"].view(np.uint8)[:n * per].reshape(n, per)
        counts, ids = level0_links(rows[:, :LIST_HEADER + 4 * width], width)
        links = ids.astype(np.int32)
        links[np.arange(width)[None, :] >= counts[:, None]] = -1
        at = int(state["label_offset"])
        labels = np.ascontiguousarray(rows[:, at:at + 8].copy().view(np.int64)[:, 0])
        by_node = exact is None
        if exact is None:  # the graph's own float32 vectors, in node order (a float16 store is too coarse)
            start, dim = int(state["offset_data"]), int(state["dim"])
            exact = np.ascontiguousarray(rows[:, start:start + 4 * dim]).view(np.float32)
            rows_of_nodes = np.arange(n)
        else:
            rows_of_nodes = labels
        del state, rows, ids
        rng = np.random.default_rng(n)
        sample = exact[np.sort(rows_of_nodes[rng.choice(n, min(n, FIT_SAMPLE), replace=False)])]
        matrix = fit_projection(sample, dim=min(CODE_DIM, exact.shape[1])).matrix
        projection = np.eye(exact.shape[1], dtype=np.float32) if matrix is None else matrix
        projected = np.empty((n, projection.shape[1]), np.float32)
        for s in range(0, n, 65536):  # no (n, D) temporary
            projected[s:s + 65536] = exact[rows_of_nodes[s:s + 65536]] @ projection
        if float_codes:  # the graph's own vectors need no second copy
            scale = np.ones(projected.shape[1], np.float32)
            codes = exact if by_node and matrix is None else projected
        else:
            scale = np.maximum(np.abs(projected).max(axis=0), 1e-12).astype(np.float32) / 127.0
            codes = np.clip(np.rint(projected / scale), -127, 127).astype(np.int8)
        del projected
        node_of = np.full(int(labels.max()) + 1 if n else 1, -1, np.int32)
        node_of[labels] = np.arange(n, dtype=np.int32)
        seeds = np.sort(rng.choice(n, min(n, SEEDS), replace=False)).astype(np.int32)
        self._keep = {"codes": codes, "scale": scale, "exact": exact, "links": np.ascontiguousarray(links),
                      "labels": labels, "alive": alive[labels].astype(np.uint8), "seeds": seeds,
                      "seed_codes": np.ascontiguousarray(codes[seeds]),
                      "projection": np.ascontiguousarray(projection, np.float32)}  # referenced by pointer: keep
        self._struct = _Graph(*(self._keep[f].ctypes.data for f, _ in _Graph._fields_[:9]), n, exact.shape[1],
                              projection.shape[1], width, len(seeds), int(by_node), int(float_codes))
        self._node_of = node_of
        self._pointer = ctypes.addressof(self._struct)
        self._search = library.fs_search
        self._local = threading.local()
        self.nodes, self.dim = n, exact.shape[1]
        self.owns_vectors = by_node

    def nbytes(self) -> int:
        """Bytes this walk holds beyond the index's own vector store (shared arrays once)."""
        held = {id(a): a for k, a in self._keep.items() if k != "exact" or self.owns_vectors}
        return int(sum(a.nbytes for a in held.values()))

    def _scratch(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        local = self._local
        try:
            return local.scratch  # type: ignore[no-any-return]
        except AttributeError:
            buffers = {"query": np.zeros(self.dim, np.float32), "scaled": np.zeros(self.dim, np.float32),
                       "visited": np.zeros(self.nodes, np.uint8), "candidates": np.zeros(self.nodes + 8, np.int64),
                       "beam": np.zeros(MAX_BEAM + 1, np.int64), "out_labels": np.zeros(MAX_BEAM, np.int64),
                       "out_scores": np.zeros(MAX_BEAM, np.float32)}
            struct = _Scratch(*(buffers[f].ctypes.data for f, _ in _Scratch._fields_[:7]), 0, MAX_BEAM)
            local.keep = (buffers, struct)
            local.scratch = (ctypes.addressof(struct), buffers["query"], buffers["out_labels"], buffers["out_scores"])
            return local.scratch  # type: ignore[no-any-return]

    def search(self, query: np.ndarray, count: int, k: int, skip: int = -1, start: int = -1) -> tuple[list[int], np.ndarray]:
        """The best ``k`` live labels (never ``skip``) of one (D,) float32 query from a walk with a
        beam of ``count``, best first, with exact float32 scores; the walk starts from label ``start``
        instead of the seeds when the graph holds it (the query's own item: the best entry there is)."""
        pointer, buffer, labels, scores = self._scratch()
        buffer[:] = query
        node = int(self._node_of[start]) if 0 <= start < len(self._node_of) else -1
        found = self._search(self._pointer, pointer, min(count, MAX_BEAM), min(k, MAX_BEAM), skip, node)
        return labels[:found].tolist(), scores[:found].copy()


_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    """One process-wide pool for batched walks (a pool per call would cost more than small batches)."""
    global _pool
    if _pool is None:
        with _load_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="fashsdk-walk")
    return _pool


def search_many(walk: NativeWalk, queries: np.ndarray, counts: np.ndarray, k: int, skips: np.ndarray,
                threads: int) -> tuple[np.ndarray, np.ndarray]:
    """``walk.search`` for each row of ``queries`` (Q, D), in ``threads`` contiguous parts at once
    (the C walk releases the GIL): (Q, k) labels, -1 where a walk found fewer, and their scores.
    Each query gets the answer a single call gives."""
    labels = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)

    def part(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):
            rows, found = walk.search(queries[i], int(counts[i]), k, int(skips[i]))
            labels[i, :len(rows)], scores[i, :len(rows)] = rows, found

    edges = np.linspace(0, len(queries), max(1, min(threads, len(queries))) + 1).astype(int)
    parts = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    if len(parts) == 1:
        part(parts[0])
    else:
        for _ in _threads().map(part, parts):  # re-raises a part's error here
            pass
    return labels, scores


def walk_for(graph: "ProjectedGraph", exact: np.ndarray | None, alive: np.ndarray,
             float_codes: bool = False) -> NativeWalk | None:
    """A native walk over ``graph``, or None when the kernel is unavailable or the graph's format is
    not one it reads. ``exact``: float32 (slots, D) rows by label for the re-rank, or None to copy
    the graph's own vectors (in node order); ``alive``: bool by label; ``float_codes``: walk on
    float32 codes instead of int8 (spaces of near-duplicates, where int8 erases the differences)."""
    library = kernel()
    if library is None:
        return None
    try:
        return NativeWalk(library, graph, exact, alive, float_codes)
    except (ValueError, KeyError) as exc:
        log.warning("native walk unavailable for this graph (%s): searches walk hnswlib directly", exc)
        return None
