"""Structural check of an hnswlib graph file before hnswlib reads it.

hnswlib trusts its input: a graph file whose counts, offsets or neighbour ids are wrong can
make it read or write outside its buffers, and a checksum only says the file is the one that
was saved, not that it is sound. So fashsdk parses the file itself (hnswlib 0.8's layout) and
refuses anything inconsistent with itself or with the index's sidecar:

    header (96 bytes): offsetLevel0, max_elements, cur_element_count, size_data_per_element,
        label_offset, offsetData (size_t each), maxlevel (int32), enterpoint (uint32),
        maxM, maxM0, M (size_t), mult (double), ef_construction (size_t)
    level 0, per element: link count (uint16) + flags (uint16), maxM0 neighbour ids (uint32),
        the vector (dim float32), the label (uint64)
    upper levels, per element: byte size (uint32), then per level a link count (uint16) +
        flags (uint16) and maxM neighbour ids (uint32)
"""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ..errors import IndexFileError

HEADER = struct.Struct("<QQQQQQiIQQQdQ")  # 96 bytes
MAX_LEVEL = 64  # hnswlib's levels grow like log(n) / log(M): 64 is far beyond any real graph


def check_graph_file(path: Path, dim: int, nodes: int, M: int, max_label: int) -> None:
    """Raise IndexFileError unless ``path`` is a well-formed graph of ``nodes`` ``dim``-d float32
    vectors with M = ``M`` and labels below ``max_label``."""
    data = path.read_bytes()
    where = f"index graph {str(path)!r}"

    def refuse(problem: str) -> IndexFileError:
        return IndexFileError(f"{where} is malformed ({problem}); restore the index from a trusted copy or rebuild it")

    if len(data) < HEADER.size:
        raise refuse(f"{len(data)} bytes, shorter than its header")
    (offset0, max_elements, count, per_element, label_offset, data_offset, max_level, entry, max_m, max_m0, m,
     mult, efc) = HEADER.unpack_from(data, 0)
    links0 = max_m0 * 4 + 4
    upper_record = max_m * 4 + 4
    if count != nodes:
        raise refuse(f"{count} nodes, the sidecar says {nodes}")
    if (offset0, m, max_m, max_m0) != (0, M, M, 2 * M):
        raise refuse(f"graph parameters offset {offset0}, M {m}/{max_m}/{max_m0}, expected 0 and M {M}/{M}/{2 * M}")
    if data_offset != links0 or label_offset != links0 + 4 * dim or per_element != label_offset + 8:
        raise refuse(f"element layout {data_offset}/{label_offset}/{per_element} does not fit {dim}-d vectors")
    if not (count <= max_elements <= 1 << 40 and 0 < efc <= 1 << 20 and math.isfinite(mult) and mult > 0):
        raise refuse(f"capacity {max_elements}, efConstruction {efc} or level multiplier {mult} out of range")
    if not 0 <= max_level <= MAX_LEVEL or (count and entry >= count):
        raise refuse(f"top level {max_level} or entry point {entry} out of range")
    level0_end = HEADER.size + count * per_element
    if len(data) < level0_end + 4 * count:
        raise refuse(f"{len(data)} bytes, too short for {count} elements")
    level0 = np.frombuffer(data, np.uint8, count * per_element, HEADER.size).reshape(count, per_element)
    _check_links(level0[:, :links0], max_m0, count, refuse, "level 0")
    labels = level0[:, label_offset:label_offset + 8].copy().view("<u8").ravel()
    if count and int(labels.max()) >= max_label:
        raise refuse(f"a label {int(labels.max())} is beyond the index's {max_label} slots")
    vectors = level0[:, data_offset:label_offset].copy().view("<f4")
    if not np.isfinite(vectors).all():
        raise refuse("a vector holds NaN or infinity")
    levels = np.zeros(count, np.int64)
    pos = level0_end
    records, record_levels = [], []
    for i in range(count):
        if pos + 4 > len(data):
            raise refuse(f"element {i}'s upper levels run past the end of the file")
        size = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4
        if size:
            if size % upper_record or size // upper_record > max_level or pos + size > len(data):
                raise refuse(f"element {i} has {size} bytes of upper levels")
            levels[i] = size // upper_record
            records.append(np.frombuffer(data, np.uint8, size, pos).reshape(-1, upper_record))
            record_levels.append(np.arange(1, levels[i] + 1))
            pos += size
    if pos != len(data):
        raise refuse(f"{len(data) - pos} bytes after the last element")
    if records:  # a link at level l must lead to an element that has level l
        ids, used = _check_links(np.concatenate(records), max_m, count, refuse, "an upper level")
        at = np.broadcast_to(np.concatenate(record_levels)[:, None], ids.shape)
        if (levels[ids[used]] < at[used]).any():
            raise refuse("an upper-level link leads to an element without that level")
    if count and levels[entry] != max_level:
        raise refuse(f"the entry point {entry} has {levels[entry]} levels, the graph {max_level}")


def _check_links(block: np.ndarray, width: int, count: int, refuse, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row: a uint16 link count (<= width) and ``width`` uint32 neighbour ids, those in use < count.
    Returns the ids (rows, width) and which of them are in use."""
    sizes = block[:, :2].copy().view("<u2").ravel().astype(np.int64)
    if len(sizes) and int(sizes.max()) > width:
        raise refuse(f"{what} lists {int(sizes.max())} neighbours where at most {width} fit")
    ids = block[:, 4:4 + 4 * width].copy().view("<u4").reshape(len(block), width)
    used = np.arange(width)[None, :] < sizes[:, None]
    if used.any() and int(ids[used].max()) >= count:
        raise refuse(f"{what} links to element {int(ids[used].max())} of {count}")
    return ids.astype(np.int64), used
