"""Where an ONNX model's time goes on this CPU: ONNX Runtime's own per-node profile.

Used by benchmarks/encode.py to explain a speed figure (which ops dominate fp32 vs int8,
how much the quantise/dequantise glue costs), not to produce one.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .speed import cpu_session


def op_profile(model_path: str | Path, batch: np.ndarray, input_name: str = "images", runs: int = 3,
               threads: int | None = None, top_nodes: int = 8) -> dict[str, Any]:
    """Per-op-type and top-node time per image, from ONNX Runtime's profiler (after a warm-up run)."""
    with tempfile.TemporaryDirectory(prefix="fashsdk-prof-") as tmp:
        session = cpu_session(model_path, threads, profile_prefix=os.path.join(tmp, "ort"))
        feed = {input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        session.run(None, feed)  # warm-up: its events are dropped below
        for _ in range(runs):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_after = runs_seen[0]["ts"] + runs_seen[0]["dur"] if len(runs_seen) > runs else 0
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    for event in trace:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < keep_after:
            continue
        op = event.get("args", {}).get("op_name", "?")
        by_type[op] += event["dur"]
        by_node[(event["name"][: -len("_kernel_time")], op)] += event["dur"]
    images = runs * len(batch)
    total = sum(by_type.values()) or 1.0
    run_us = [e["dur"] for e in runs_seen[-runs:]] if runs_seen else []
    return {
        "batch": len(batch), "runs": runs, "threads": threads,
        "run_ms_per_image": round(float(np.median(run_us)) / 1000.0 / len(batch), 4) if run_us else None,
        "kernel_ms_per_image": round(total / 1000.0 / images, 4),
        "by_op_type": [{"op": op, "ms_per_image": round(us / 1000.0 / images, 4), "share": round(us / total, 4)}
                       for op, us in sorted(by_type.items(), key=lambda kv: -kv[1])],
        "top_nodes": [{"node": name, "op": op, "ms_per_image": round(us / 1000.0 / images, 4),
                       "share": round(us / total, 4)}
                      for (name, op), us in sorted(by_node.items(), key=lambda kv: -kv[1])[:top_nodes]],
    }
