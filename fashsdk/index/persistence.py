"""Saving and loading a CatalogIndex: generations of files and one sealed sidecar.

A save writes a new generation of files (vectors, codes, ids, graphs), then atomically
replaces ``index.json``, which names that generation and pins every file by size and
sha256; files of the previous generation are deleted only after that. A crash at any
moment leaves the previous generation loadable, and a damaged or tampered file is refused
before numpy or hnswlib reads it.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import IndexFileError
from ..files import (atomic_save_npy, atomic_write_json, check_seal, contained_file, fsync_dir, load_npy, read_json,
                     seal, sha256_file, sweep, verify_entry)
from ..trust import trusted_keys, verified_bytes
from .graph import DEFAULT_PARAMS, GraphParams, ProjectedGraph
from .graph_check import check_graph_file
from .items import ItemTable
from .policy import attach_side_walks, attach_walk, exact_limit, maintain, set_beam
from .projection import Projection
from .subspaces import SIMILAR_BEAM
from .vector_store import PRECISIONS

if TYPE_CHECKING:
    from .catalog_index import CatalogIndex

FORMAT = "fashsdk-index"
FORMAT_VERSION = 4  # 4: the predictions' probabilities; 3 (without them) still loads; older were never released
READABLE_VERSIONS = (3, 4)
SIDECAR = "index.json"
SETTINGS = ("M", "ef_construction", "ef_search", "projection_dim", "exact_max_items")
OWN_FILES = re.compile(r"^(vectors|codes|predicted|confidence|ids|graph|projection|subspace-\d+)-[0-9a-f]{12}"
                       r"\.(npy|json|hnsw)$")  # a generation's files: saves name them so
log = logging.getLogger("fashsdk")


def save_index(index: "CatalogIndex", directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    gen = secrets.token_hex(6)
    names = {"vectors": f"vectors-{gen}.npy", "codes": f"codes-{gen}.npy",
             "predicted": f"predicted-{gen}.npy", "confidence": f"confidence-{gen}.npy", "ids": f"ids-{gen}.json"}
    with index.lock.read():
        graph, table = index.graph, index.table
        used = table.used
        graphs: dict[str, ProjectedGraph] = {} if graph is None else {"graph": graph}
        graphs.update({f"subspace-{a}": g for a, g in index.subspaces.graphs.items()})
        for role, g in graphs.items():
            names[role] = f"{role}-{gen}.hnsw"
            _save_graph(g, directory, names[role])
        if graph is not None and graph.projection.matrix is not None:
            names["projection"] = f"projection-{gen}.npy"
            atomic_save_npy(directory / names["projection"], graph.projection.matrix)
        atomic_save_npy(directory / names["vectors"], index.store.data[:used])
        atomic_save_npy(directory / names["codes"], table.codes[:used])
        atomic_save_npy(directory / names["predicted"], table.predicted[:used])
        atomic_save_npy(directory / names["confidence"], table.confidence[:used])
        atomic_write_json(directory / names["ids"], table.ids)
        sidecar = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "space": "ip",
            "dim": index.dim, "num_attributes": index.num_attributes, "precision": index.precision,
            "layout": index.layout, "slots": used, "count": len(table), "mode": index.mode,
            "settings": {key: getattr(index, key) for key in SETTINGS},
            "graph": None if graph is None else {
                "M": graph.params.M, "ef_construction": graph.params.ef_construction, "nodes": graph.count,
                "projection_dim": graph.projection.out_dim, "identity": graph.projection.identity,
                "fit_count": graph.projection.fit_count, "fit_residual": graph.projection.fit_residual,
                "built_count": graph.built_count, "drift_sum": graph.drift_sum, "drift_count": graph.drift_count,
                "laid_out": graph.laid_out, "calibrated_candidates": graph.calibrated},
            "subspaces": {str(a): {"nodes": g.count, "beam": g.beam} for a, g in index.subspaces.graphs.items()},
            "info": index.info,
            "files": {role: {"name": name, "sha256": sha256_file(directory / name),
                             "bytes": (directory / name).stat().st_size} for role, name in names.items()},
        }
    old = _read_sidecar_quietly(directory / SIDECAR)
    atomic_write_json(directory / SIDECAR, seal(sidecar))  # sealed: a flipped bit is refused on load
    fsync_dir(directory)
    for meta in (old or {}).get("files", {}).values():
        name = meta.get("name") if isinstance(meta, dict) else None
        if isinstance(name, str) and name not in names.values():
            try:
                contained_file(directory, name, "old index sidecar", IndexFileError).unlink()
            except (IndexFileError, FileNotFoundError):
                pass
    return directory / SIDECAR


def load_index(cls: type["CatalogIndex"], directory: Path, keys: dict[str, bytes] | None = None) -> "CatalogIndex":
    sidecar_path = directory / SIDECAR
    where = f"index sidecar {str(sidecar_path)!r}"
    if not directory.is_dir():
        raise IndexFileError(f"index directory {str(directory)!r} does not exist; build it with 'fashsdk index'")
    signed = verified_bytes(sidecar_path, keys if keys is not None else trusted_keys(), "index") \
        if sidecar_path.is_file() else None
    meta = read_json(sidecar_path, "index sidecar", IndexFileError, signed)
    check_seal(meta, sidecar_path, "index sidecar", IndexFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexFileError(f"{str(sidecar_path)!r} is not a fashsdk index sidecar")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise IndexFileError(f"{where} has format_version {version!r}; this fashsdk reads {READABLE_VERSIONS}: "
                             "rebuild the index with 'fashsdk index' (or upgrade fashsdk if it is newer)")
    try:
        dim, num_attributes, slots = _int(meta["dim"]), _int(meta["num_attributes"]), _int(meta["slots"])
        count, precision, graph_meta = _int(meta["count"]), meta["precision"], meta["graph"]
        layout = None if meta["layout"] is None else [(_int(s), _int(e)) for s, e in meta["layout"]]
        subspace_nodes = {int(a): _int(g["nodes"]) for a, g in dict(meta["subspaces"]).items()}
        # each graph's calibrated beam; absent in indexes saved before similar was calibrated
        subspace_beams = {int(a): _int(g.get("beam", SIMILAR_BEAM)) for a, g in dict(meta["subspaces"]).items()}
        settings = dict(meta["settings"])
        roles = ["vectors", "codes", "predicted", "ids"] + [f"subspace-{a}" for a in subspace_nodes]
        roles += ["confidence"] if version >= 4 else []
        if graph_meta is not None:
            p, nodes, M, efc = (_int(graph_meta[key]) for key in ("projection_dim", "nodes", "M", "ef_construction"))
            identity = graph_meta["identity"]
            if not isinstance(identity, bool):
                raise TypeError(f"graph identity must be true or false, got {identity!r}")
            roles += ["graph"] if identity else ["graph", "projection"]
            fit_count, fit_res = _int(graph_meta["fit_count"]), float(graph_meta["fit_residual"])
            built_count, laid_out = _int(graph_meta["built_count"]), _int(graph_meta["laid_out"])
            drift_sum, drift_count = float(graph_meta["drift_sum"]), _int(graph_meta["drift_count"])
            calibrated = graph_meta.get("calibrated_candidates")  # absent in indexes saved before calibration
            if calibrated is not None and not 0 < _int(calibrated) <= 1 << 16:
                raise ValueError(f"calibrated_candidates {calibrated} is outside 1..65536")
        files = {role: meta["files"][role] for role in roles}
        options = {key: (None if settings.get(key) is None else _int(settings[key])) for key in SETTINGS}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IndexFileError(f"{where} is malformed ({type(exc).__name__}: {exc})") from None
    if not (0 < dim <= 65536 and 0 < num_attributes <= 4096 and 0 <= count <= slots <= 1 << 31
            and isinstance(precision, str) and precision in PRECISIONS):
        raise IndexFileError(f"{where} has out-of-range parameters")
    if graph_meta is not None and not (0 < p <= dim and 2 <= M <= 256 and 0 < efc <= 100000
                                       and count <= nodes <= slots and (p == dim or not identity)):
        raise IndexFileError(f"{where} has out-of-range graph parameters")
    if layout is None and subspace_nodes or any(not (0 <= a < num_attributes and n <= slots
                                                     and 0 < subspace_beams[a] <= 1 << 16)
                                                for a, n in subspace_nodes.items()):
        raise IndexFileError(f"{where} has out-of-range subspace graphs")
    paths = {role: _verified(directory, entry, where) for role, entry in files.items()}
    ids = read_json(paths["ids"], "index ids", IndexFileError)
    vectors = load_npy(paths["vectors"], "index vectors", IndexFileError)
    codes = load_npy(paths["codes"], "index codes", IndexFileError)
    predicted = load_npy(paths["predicted"], "index predicted codes", IndexFileError)
    if (predicted.shape != codes.shape or predicted.dtype != np.int16 or not isinstance(ids, list)
            or len(ids) != slots or vectors.shape != (slots, dim) or vectors.dtype != PRECISIONS[precision]
            or codes.shape != (slots, num_attributes) or codes.dtype != np.int16
            or not all(i is None or isinstance(i, str) for i in ids)
            or sum(i is not None for i in ids) != count):
        raise IndexFileError(f"index files in {str(directory)!r} disagree with the sidecar "
                             "(ids/vectors/codes shape, dtype or count)")
    confidence = None
    if "confidence" in paths:
        confidence = load_npy(paths["confidence"], "index confidence", IndexFileError)
        if confidence.shape != codes.shape or confidence.dtype != np.float16:
            raise IndexFileError(f"index confidence {str(paths['confidence'])!r} disagrees with the sidecar")
    if len({i for i in ids if i is not None}) != count:
        raise IndexFileError(f"index ids in {str(paths['ids'])!r} contain duplicates")
    info = meta.get("info")
    try:
        index = cls(dim, num_attributes, layout=layout, capacity=1, info=info if isinstance(info, dict) else {},
                    precision=precision, **options)
    except ValueError as exc:
        raise IndexFileError(f"{where} has invalid settings ({exc})") from None
    if slots:  # adopt the loaded arrays: no second copy of a multi-GB vector file
        index.store.data = np.ascontiguousarray(vectors)
    index.table = ItemTable.adopt(ids, codes, predicted, confidence)
    capacity = max(slots, 1)
    if graph_meta is not None:
        if identity:
            projection = Projection(None, fit_count, fit_res, dim)
        else:
            matrix = load_npy(paths["projection"], "index projection", IndexFileError)
            if matrix.shape != (dim, p) or matrix.dtype != np.float32 or not np.isfinite(matrix).all():
                raise IndexFileError(f"index projection {str(paths['projection'])!r} disagrees with the sidecar")
            projection = Projection(matrix, fit_count, fit_res)
        graph = _load_graph(projection, paths["graph"], capacity, GraphParams(M, efc), nodes)
        graph.drift_sum, graph.drift_count, graph.built_count = drift_sum, drift_count, built_count
        graph.laid_out = laid_out if laid_out <= nodes else 0
        graph.calibrated, graph.calibrated_nodes = calibrated, (nodes if calibrated is not None else 0)
        index.graph = graph
        set_beam(index)
        attach_walk(index)
    for a, nodes_a in subspace_nodes.items():
        span = layout[a]  # type: ignore[index]
        index.subspaces.adopt(a, _load_graph(Projection(None, nodes_a, 0.0, span[1] - span[0]),
                                             paths[f"subspace-{a}"], capacity, DEFAULT_PARAMS, nodes_a),
                              subspace_beams[a])
    attach_side_walks(index)
    swept = sweep(directory, {SIDECAR, SIDECAR + ".sig", *(str(e.get("name")) for e in meta["files"].values()
                                                           if isinstance(e, dict))}, OWN_FILES)
    if swept:
        log.info("index %s: removed %d files left by an interrupted save: %s", directory, len(swept), swept[:5])
    if graph_meta is None and count > exact_limit(index):
        with index.lock.write():
            maintain(index)  # saved without a graph under a larger exact-scan limit than this one
    return index


def _save_graph(graph: ProjectedGraph, directory: Path, name: str) -> None:
    tmp = directory / f".{name}.tmp"
    graph.save(str(tmp))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, directory / name)


def _load_graph(projection: Projection, path: Path, capacity: int, params: GraphParams, nodes: int) -> ProjectedGraph:
    check_graph_file(path, projection.out_dim, nodes, params.M, capacity)  # hnswlib trusts its input: we do not
    graph = ProjectedGraph.load(projection, str(path), capacity, params)
    if graph.count != nodes:
        raise IndexFileError(f"index graph {str(path)!r} holds {graph.count} nodes, the sidecar says {nodes}")
    return graph


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _verified(directory: Path, entry: Any, where: str) -> Path:
    if not isinstance(entry, dict):
        raise IndexFileError(f"{where}: a file entry is malformed")
    path = contained_file(directory, entry.get("name"), where, IndexFileError)
    verify_entry(path, entry, "index file", IndexFileError)
    return path


def _read_sidecar_quietly(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path, "index sidecar", IndexFileError)
        return data if isinstance(data, dict) else None
    except IndexFileError:
        return None
