"""benchmarks.serve end to end at toy size: it starts the server, drives it from another process,
and writes JSON and markdown with zero errors and the in-process baseline beside the HTTP figures."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_load_benchmark_runs_and_reports(tmp_path: Path, real_bundle_dir, real_index_dir, catalog_images_dir) -> None:
    out = tmp_path / "serve.json"
    command = [sys.executable, "-m", "benchmarks.serve", "--bundle", str(real_bundle_dir), "--index",
               str(real_index_dir), "--images", str(catalog_images_dir), "--json", str(out), "--concurrency", "1", "4",
               "--requests", "30", "--duration", "3", "--warmup", "3", "--queries", "20", "--baseline-calls", "20",
               "--threads", "1", "--repeats", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [(s["scenario"], s["concurrency"]) for s in result["steps"]] == [
        (name, c) for name in ("search_id_change", "similar", "search_image") for c in (1, 4)]
    assert result["total_errors"] == 0
    for step in result["steps"]:
        assert step["requests"] == 30 and step["statuses"] == {"200": 60} and len(step["repeats_rps"]) == 2
        assert step["throughput_rps"] > 0 and step["p50_ms"] <= step["p99_ms"]
        assert ("http_overhead_ratio" in step) == (step["concurrency"] == 1)
    assert set(result["in_process"]) == {"search_id_change", "similar", "search_image"}
    assert result["queries"]["photo_source"] == "catalog"
    ids, uploads = result["servers"]
    assert ids["scenarios"] == ["search_id_change", "similar"] and uploads["scenarios"] == ["search_image"]
    for server in (ids, uploads):
        assert server["rss_ready_mb"] > 0 and server["rss_after_mb"] > 0 and "pinned" in server["pinning"]
    assert "encode_mean_ms" in uploads["stages"]["/v1/search/image"]
    assert uploads["threads"] == 1 and "every core" in uploads["pinning"]
    md = out.with_suffix(".md").read_text()
    assert "| search_image | 4 | 30 |" in md and "Errors in all steps: 0" in md
