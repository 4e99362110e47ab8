"""Several threads searching while another adds, updates, removes, refits and saves."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from fashsdk import CatalogIndex


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_readers_see_consistent_results_while_a_writer_works(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dim = 32
    stable = unit(rng.standard_normal((400, dim)))
    index = CatalogIndex(dim, 1, exact_max_items=0, threads=1)
    index.add([f"s{i}" for i in range(400)], stable, np.zeros((400, 1), int))
    stop = threading.Event()
    problems: list[str] = []
    searches = [0]

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        while not stop.is_set():
            i = int(r.integers(397))
            exact = bool(r.integers(2))
            try:
                ids, scores = index.search(stable[i], 5, exact=exact)
                batch, _ = index.search(stable[i:i + 3], 3, exclude=[f"s{i}", None, None])
                anywhere, _ = index.search(unit(r.standard_normal((1, dim))), 10)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                problems.append(f"{type(exc).__name__}: {exc}")
                return
            if ids[0][0] != f"s{i}" or abs(float(scores[0][0]) - 1.0) > 1e-5:
                problems.append(f"query s{i} returned {ids[0][:2]} {scores[0][:2]}")
            if len(ids[0]) != 5 or any(x is None for x in ids[0]) or list(scores[0]) != sorted(scores[0], reverse=True):
                problems.append(f"malformed result {ids[0]} {scores[0]}")
            if len(anywhere[0]) != 10 or any(x is None for x in anywhere[0]):
                problems.append(f"malformed result {anywhere[0]}")
            if f"s{i}" in batch[0] or len(batch[0]) != 3:
                problems.append(f"exclude failed: {batch[0]}")
            searches[0] += 1

    def writer() -> None:
        r = np.random.default_rng(1)
        live: list[str] = []
        try:
            for step in range(60):
                new = [f"w{step}-{j}" for j in range(20)]
                index.add(new, unit(r.standard_normal((20, dim))))
                live += new
                index.update(live[-5:], unit(r.standard_normal((5, dim))))
                gone = [live.pop(int(r.integers(len(live)))) for _ in range(8)]
                index.remove(gone)
                if step % 20 == 10:
                    index.refit()
                if step % 25 == 0:
                    index.save(tmp_path / "snap")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"writer {type(exc).__name__}: {exc}")

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so reads interleave with every step of a write
    try:
        for t in readers:
            t.start()
        time.sleep(0.05)
        w = threading.Thread(target=writer)
        w.start()
        w.join(timeout=120)
        stop.set()
        for t in readers:
            t.join(timeout=30)
    finally:
        sys.setswitchinterval(interval)
    assert not problems, problems[:5]
    assert searches[0] > 50
    assert len(index) == 400 + 60 * 12
    snap = CatalogIndex.load(tmp_path / "snap")
    assert snap.search(stable[7], 1)[0] == [["s7"]]
