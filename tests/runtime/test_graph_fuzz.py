"""Mutated hnswlib graph files cannot crash the process: fashsdk's structural check refuses
them, or hnswlib loads and searches them safely. Run in a child process, so a crash would be a
failed test, not a dead test run."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fashsdk import CatalogIndex, IndexFileError
from fashsdk.index.graph_check import HEADER, check_graph_file

DIM, M, N = 12, 6, 240
CHILD_CASES = 3000


def small_graph(tmp: Path) -> tuple[bytes, int]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = CatalogIndex(DIM, 2, M=M, exact_max_items=8, threads=1)
    index.add([f"i{n}" for n in range(N)], x)
    index.save(tmp / "index")
    graph = next((tmp / "index").glob("graph-*.hnsw"))
    return graph.read_bytes(), index.table.used


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flipped bytes anywhere, a header field overwritten, a link record corrupted, cut or grown."""
    out = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            out[rng.integers(len(out))] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # a header field: 0, 1, huge, negative-looking or random
        field = int(rng.integers(13))
        offsets = [0, 8, 16, 24, 32, 40, 48, 52, 56, 64, 72, 80, 88]  # the fields of HEADER
        width = 4 if field in (6, 7) else 8
        value = int(rng.choice([0, 1, 2, 255, 2**31 - 1, 2**32 - 1, 2**63 - 1, int(rng.integers(2**31))]))
        out[offsets[field]:offsets[field] + width] = (value % (1 << (8 * width))).to_bytes(width, "little")
    elif kind == 2:  # a level-0 link count or neighbour id
        per = int.from_bytes(data[24:32], "little")
        element = int(rng.integers(N))
        at = HEADER.size + element * per + int(rng.integers(0, 4 + 4 * 2 * M))
        out[at:at + 4] = int(rng.integers(2**32)).to_bytes(4, "little")
    elif kind == 3:
        out = out[:int(rng.integers(len(out)))]
    else:
        out += bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    return bytes(out)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, int, Path]:
    tmp = tmp_path_factory.mktemp("graph")
    data, slots = small_graph(tmp)
    return data, slots, tmp


def test_the_real_graph_passes_the_check(graph: tuple[bytes, int, Path]) -> None:
    data, slots, tmp = graph
    (tmp / "plain.hnsw").write_bytes(data)
    check_graph_file(tmp / "plain.hnsw", DIM, N, M, slots)
    assert len(data) > HEADER.size + N * (4 * (2 * M + 1) + 4 * DIM + 8)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_structural_check_refuses_with_a_typed_error_or_accepts(seed: int, graph: tuple[bytes, int, Path]) -> None:
    data, slots, tmp = graph
    path = tmp / "mutated.hnsw"
    path.write_bytes(mutate(data, np.random.default_rng(seed)))
    try:
        check_graph_file(path, DIM, N, M, slots)
    except IndexFileError as exc:
        assert "malformed" in str(exc) and str(path) in str(exc)


def test_thousands_of_mutated_graphs_never_crash_a_process(tmp_path: Path) -> None:
    data, slots = small_graph(tmp_path)
    source = tmp_path / "graph.hnsw"
    source.write_bytes(data)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import hnswlib
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from test_graph_fuzz import mutate, DIM, N, M
        from fashsdk.errors import IndexFileError
        from fashsdk.index.graph_check import check_graph_file
        from pathlib import Path
        data = Path({str(source)!r}).read_bytes()
        path = Path({str(tmp_path / 'case.hnsw')!r})
        queries = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32)
        refused = loaded = 0
        for case in range({CHILD_CASES}):
            print(case, flush=True)
            path.write_bytes(mutate(data, np.random.default_rng(case)))
            try:
                check_graph_file(path, DIM, N, M, {slots})
            except IndexFileError:
                refused += 1
                continue
            graph = hnswlib.Index(space="ip", dim=DIM)
            try:
                graph.load_index(str(path), max_elements={slots})
                graph.set_ef(32)
                graph.knn_query(queries, k=5)
            except RuntimeError:
                pass
            loaded += 1
        print("done", refused, loaded, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "no output"
    assert done.returncode == 0, f"the child died (code {done.returncode}) at case {last}: {done.stderr[-2000:]}"
    _, refused, loaded = last.split()
    print(f"{refused} mutated graphs refused, {loaded} loaded and searched")
    assert int(refused) + int(loaded) == CHILD_CASES and int(refused) > CHILD_CASES // 3
