"""python -m benchmarks.serve [--bundle B] [--index IDX] --json OUT: the HTTP server under load.

Starts ``python -m fashsdk.serve`` on 127.0.0.1 with the bundle and catalog index, and drives
it from a separate process (``benchmarks.serve_load``, a small asyncio client) with a bounded
number of requests and a bounded duration per step. Scenarios: search by id with a change,
similar on one attribute, search by uploaded photo; each at 1, 8 and 64 concurrent clients
(``--concurrency``). Reported per step: throughput, p50/p90/p99 latency, errors (non-2xx or
failed connections; expected 0). Beside it, from the same run: the in-process
``Retriever.search``/``similar`` latency for the same queries (one client, so the HTTP overhead is
the ratio of the concurrency-1 p50 to it), the server's own encode/search stage times from
/metrics, and the server's RSS when ready and after the load. Queries by id run against a
server pinned to one half of the cores with the load generator on the other half (where there
are two or more; os.sched_setaffinity); uploads, which spend the server's time in the model,
against a second server on every core with one model thread per request (``--image-threads``)
so requests run side by side. The output says which.

    python -m benchmarks.serve --bundle runs/demo/bundle --index runs/catalog-index \\
        --images ../shared/data/myntra-small --json benchmarks/results/serve-cpu.json

Writes OUT (JSON) and OUT with .md beside it.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fashsdk import Retriever
from fashsdk.files import atomic_write_bytes, atomic_write_json
from fashsdk.system import machine

ROOT = Path(__file__).resolve().parents[1]
K = 10
SCENARIOS = ("search_id_change", "similar", "search_image")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the queries ----------------------------------------------------------------------
def workload(retriever: Retriever, images: list[str] | None, count: int) -> dict[str, Any]:
    """Ids (spread over the catalog), the change and attribute asked, and photos to upload."""
    assert retriever.index is not None
    ids = retriever.index.ids
    rng = np.random.default_rng(0)
    chosen = [ids[i] for i in rng.choice(len(ids), size=min(count, len(ids)), replace=False)]
    names = retriever.schema.names
    attribute = "baseColour" if "baseColour" in names else names[0]
    values = retriever.schema.attributes[names.index(attribute)].values
    value = "Red" if "Red" in values else values[0]
    photos = load_photos(chosen[:16], images) if images else []
    if not photos:
        photos = synthetic_photos(16)
    return {"ids": chosen, "change": {attribute: value}, "attribute": attribute, "photos": photos,
            "photo_source": "catalog" if images else "synthetic (no --images)"}


def load_photos(ids: list[str], images: list[str]) -> list[bytes]:
    from fashsdk.sources.images import iter_images

    found = dict(iter_images(images if len(images) > 1 else images[0], ids))
    return [found[i] for i in ids if i in found]


def synthetic_photos(n: int) -> list[bytes]:
    import io

    from PIL import Image

    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def multipart(fields: dict[str, str], photo: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
                 "Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def plan(scenario: str, work: dict[str, Any]) -> list[dict[str, str]]:
    """The HTTP requests of one scenario, as benchmarks.serve_load reads them."""
    def entry(path: str, content_type: str, body: bytes) -> dict[str, str]:
        return {"method": "POST", "path": path, "content_type": content_type,
                "body_b64": base64.b64encode(body).decode()}

    if scenario == "search_id_change":
        return [entry("/v1/search", "application/json",
                      json.dumps({"id": i, "change": work["change"], "k": K}).encode()) for i in work["ids"]]
    if scenario == "similar":
        return [entry("/v1/similar", "application/json",
                      json.dumps({"id": i, "attribute": work["attribute"], "k": K}).encode()) for i in work["ids"]]
    return [entry("/v1/search/image", *multipart({"k": str(K)}, photo)) for photo in work["photos"]]


def in_process(retriever: Retriever, work: dict[str, Any], count: int) -> dict[str, dict[str, float]]:
    """The SDK call each scenario makes, timed in this process (one thread, after a warm-up)."""
    ids, photos = work["ids"], work["photos"]
    calls: dict[str, Callable[[int], Any]] = {
        "search_id_change": lambda i: retriever.search(ids[i % len(ids)], change=work["change"], k=K),
        "similar": lambda i: retriever.similar(ids[i % len(ids)], work["attribute"], k=K),
        "search_image": lambda i: retriever.search(photos[i % len(photos)], k=K),
    }
    out = {}
    for name, call in calls.items():
        for i in range(20):
            call(i)
        times = []
        for i in range(count):
            start = time.perf_counter()
            call(i)
            times.append(1000 * (time.perf_counter() - start))
        out[name] = {"calls": count, "p50_ms": round(float(np.percentile(times, 50)), 4),
                     "p99_ms": round(float(np.percentile(times, 99)), 4)}
    return out


# ---- the server ---------------------------------------------------------------------------
def cores(pin: bool = True) -> tuple[list[int] | None, list[int] | None, str]:
    """(server cpus, client cpus, a sentence for the report)."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin:
        return None, None, f"not pinned (--no-pin): server and load generator share {len(available) or 'all'} cores"
    if len(available) < 2:
        return None, None, f"not pinned: {len(available) or 'unknown'} usable core(s)"
    half = len(available) // 2
    server, client = available[:half], available[half:]
    return server, client, f"server pinned to cpus {server}, load generator to cpus {client} (os.sched_setaffinity)"


def pinned(cpus: list[int] | None) -> Callable[[], None] | None:
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(base: str, process: subprocess.Popen, output: Any, timeout: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            output.seek(0)
            raise SystemExit(f"the server exited with {process.returncode} before it was ready:\n{output.read()}")
        try:
            if get(base + "/readyz")[0] == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready within {timeout} s")


def stage_means(metrics: str) -> dict[str, dict[str, float]]:
    """Mean ms per endpoint and stage, from the server's Prometheus histograms."""
    sums: dict[tuple[str, str], list[float]] = {}
    for line in metrics.splitlines():
        for suffix, slot in (("_sum{", 0), ("_count{", 1)):
            if line.startswith("fashsdk_stage_duration_seconds" + suffix):
                labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
                key = (labels["endpoint"].strip('"'), labels["stage"].strip('"'))
                sums.setdefault(key, [0.0, 0.0])[slot] = float(line.rsplit(" ", 1)[1])
    out: dict[str, dict[str, float]] = {}
    for (endpoint, stage), (total, n) in sorted(sums.items()):
        if n:
            out.setdefault(endpoint, {})[f"{stage}_mean_ms"] = round(1000 * total / n, 4)
    return out


# ---- the run --------------------------------------------------------------------------------
ID_SCENARIOS = ("search_id_change", "similar")


def setups(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One server per kind of load. Queries by id spend little server time per request, so the
    load generator needs a core of its own (pinned halves); uploads spend it in the model, so their
    server gets every core, one model thread per request and requests side by side."""
    server_cpus, client_cpus, pinning = cores(args.pin)
    ids = [name for name in args.scenarios if name in ID_SCENARIOS]
    images = [name for name in args.scenarios if name not in ID_SCENARIOS]
    out = []
    if ids:
        out.append({"scenarios": ids, "server_cpus": server_cpus, "client_cpus": client_cpus, "pinning": pinning,
                    "threads": args.threads, "workers": args.workers})
    if images:
        out.append({"scenarios": images, "server_cpus": None, "client_cpus": None,
                    "pinning": f"not pinned: the server may use every core, {args.image_threads} model thread(s) per "
                               "request",
                    "threads": args.image_threads, "workers": args.image_workers})
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one step as one: the run with the median throughput, every run's throughput
    beside it, errors and statuses summed over all runs."""
    ordered = sorted(runs, key=lambda r: r["throughput_rps"])
    out = dict(ordered[len(ordered) // 2])
    out["repeats_rps"] = [r["throughput_rps"] for r in runs]
    out["errors"] = sum(r["errors"] for r in runs)
    out["error_samples"] = [e for r in runs for e in r["error_samples"]][:5]
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    out["statuses"] = statuses
    return out


def drive_server(args: argparse.Namespace, setup: dict[str, Any], work: dict[str, Any]) -> dict[str, Any]:
    """Start one server, run its scenarios at each concurrency, and stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fashsdk.serve", "--bundle", str(args.bundle), "--index", str(args.index),
               "--port", str(port)] + (["--threads", str(setup["threads"])] if setup["threads"] else []) \
        + (["--workers", str(setup["workers"])] if setup["workers"] else [])
    server_log = tempfile.TemporaryFile("w+")  # read back only if the server fails
    server = subprocess.Popen(command, cwd=ROOT, preexec_fn=pinned(setup["server_cpus"]), stdout=server_log,
                              stderr=subprocess.STDOUT, text=True)
    steps: list[dict[str, Any]] = []
    try:
        ready_s = wait_ready(base, server, server_log)
        rss_ready = rss_mb(server.pid)
        log(f"server for {', '.join(setup['scenarios'])} ready in {ready_s:.1f} s, RSS {rss_ready} MB; "
            f"{setup['pinning']}")
        with tempfile.TemporaryDirectory() as tmp:
            for scenario in setup["scenarios"]:
                plan_path = Path(tmp) / f"{scenario}.json"
                plan_path.write_text(json.dumps(plan(scenario, work)))
                for concurrency in args.concurrency:
                    load = [sys.executable, "-m", "benchmarks.serve_load", "--url", base, "--plan", str(plan_path),
                            "--concurrency", str(concurrency), "--requests", str(args.requests),
                            "--duration", str(args.duration), "--warmup", str(args.warmup)]
                    runs = []
                    for _ in range(args.repeats):
                        done = subprocess.run(load, cwd=ROOT, preexec_fn=pinned(setup["client_cpus"]),
                                              capture_output=True, text=True, timeout=args.duration + 120)
                        if done.returncode != 0:
                            raise SystemExit(f"the load generator failed:\n{done.stderr}")
                        runs.append(json.loads(done.stdout))
                    step = {"scenario": scenario, **median_run(runs)}
                    steps.append(step)
                    log(f"  {scenario} x{concurrency}: {step['throughput_rps']} req/s, p50 {step['p50_ms']} ms, "
                        f"p99 {step['p99_ms']} ms, errors {step['errors']}")
        rss_after = rss_mb(server.pid)
        stages = stage_means(get(base + "/metrics")[1])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    return {"scenarios": setup["scenarios"], "pinning": setup["pinning"], "threads": setup["threads"],
            "workers": setup["workers"], "ready_s": round(ready_s, 2), "rss_ready_mb": rss_ready,
            "rss_after_mb": rss_after, "stages": stages, "steps": steps}


def run(args: argparse.Namespace) -> dict[str, Any]:
    plans = setups(args)
    first_cpus = plans[0]["server_cpus"] if plans else None
    original = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if first_cpus:
        os.sched_setaffinity(0, first_cpus)  # the in-process baseline runs where the id server will
    retriever = Retriever(args.bundle, args.index, threads=args.threads)
    work = workload(retriever, args.images, args.queries)
    log(f"in-process baseline: {args.baseline_calls} calls per scenario")
    baseline = in_process(retriever, work, args.baseline_calls)
    items, backend = len(retriever.index or []), retriever.backend_name
    del retriever
    if first_cpus and original:
        os.sched_setaffinity(0, original)
    servers = [drive_server(args, setup, work) for setup in plans]
    steps = [step for server in servers for step in server.pop("steps")]
    for step in steps:  # the HTTP overhead: one client's p50 over the SDK call's p50
        ref = baseline[step["scenario"]]["p50_ms"]
        if step["concurrency"] == 1 and step["p50_ms"] and ref:
            step["http_overhead_ratio"] = round(step["p50_ms"] / ref, 2)
    return {"machine": machine(), "bundle": str(args.bundle), "index": str(args.index),
            "catalog_items": items, "backend": backend, "k": K,
            "limits": {"requests_per_step": args.requests, "seconds_per_step": args.duration, "warmup": args.warmup,
                       "repeats": args.repeats},
            "queries": {"ids": len(work["ids"]), "change": work["change"], "attribute": work["attribute"],
                        "photos": len(work["photos"]), "photo_source": work["photo_source"]},
            "servers": servers, "in_process": baseline, "steps": steps,
            "total_errors": sum(s["errors"] for s in steps)}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# HTTP server load test ({result['catalog_items']:,} items, {result['backend']}, k={result['k']})", "",
             f"Machine: {m['cpu']}, {m['cores']} usable cores, Python {m['python']}.",
             f"Each step: at most {result['limits']['requests_per_step']} timed requests or "
             f"{result['limits']['seconds_per_step']} s, after {result['limits']['warmup']} untimed, "
             f"{result['limits']['repeats']} times; the run with the median throughput is shown, every run's "
             "throughput in the last column. "
             f"Errors in all steps: {result['total_errors']}.", ""]
    for server in result["servers"]:
        lines.append(f"- server for {', '.join(server['scenarios'])}: {server['pinning']}; model threads "
                     f"{server['threads'] or 'default'}, workers {server['workers'] or 'default'}; RSS "
                     f"{server['rss_ready_mb']} MB when ready, {server['rss_after_mb']} MB after the load "
                     f"(ready in {server['ready_s']} s)")
    lines += ["", "| scenario | clients | requests | req/s | p50 ms | p90 ms | p99 ms | errors | in-process p50 ms | "
              "HTTP p50 / in-process (1 client) | req/s of each run |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["steps"]:
        ref = result["in_process"][s["scenario"]]
        lines.append(f"| {s['scenario']} | {s['concurrency']} | {s['requests']} | {s['throughput_rps']} | "
                     f"{s['p50_ms']} | {s['p90_ms']} | {s['p99_ms']} | {s['errors']} | {ref['p50_ms']} | "
                     f"{s.get('http_overhead_ratio', '-')} | {', '.join(map(str, s.get('repeats_rps', [])))} |")
    lines += ["", "Server-side stage means (from /metrics):", "",
              "| endpoint | encode ms | search ms |", "|---|---|---|"]
    for server in result["servers"]:
        for endpoint, stages in server["stages"].items():
            lines.append(f"| {endpoint} | {stages.get('encode_mean_ms', '-')} | "
                         f"{stages.get('search_mean_ms', '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--bundle", type=Path, default=ROOT / "runs/demo/bundle")
    p.add_argument("--index", type=Path, default=ROOT / "runs/catalog-index")
    p.add_argument("--images", nargs="+", default=None, help="catalog image folders or tars, for photos to upload "
                                                            "(default: synthetic JPEGs)")
    p.add_argument("--json", type=Path, default=ROOT / "runs/serve-bench/serve.json")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    p.add_argument("--requests", type=int, default=3000, help="timed requests per step at most")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per step at most")
    p.add_argument("--repeats", type=int, default=3, help="runs per step; the median run is reported")
    p.add_argument("--warmup", type=int, default=50, help="untimed requests before each step")
    p.add_argument("--queries", type=int, default=500, help="distinct catalog ids asked")
    p.add_argument("--baseline-calls", type=int, default=500, help="in-process calls per scenario")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let server and load generator share every core (default: separate halves)")
    p.add_argument("--threads", type=int, default=None, help="the server's inference threads (default: its cores)")
    p.add_argument("--workers", type=int, default=None, help="the server's worker threads (default: 2 x its cores)")
    p.add_argument("--image-threads", type=int, default=1,
                   help="model threads per request of the upload server (default 1: requests run side by side)")
    p.add_argument("--image-workers", type=int, default=None,
                   help="worker threads of the upload server (default: its usable cores)")
    args = p.parse_args(argv)
    if args.image_workers is None:
        args.image_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for path, what in ((args.bundle, "bundle"), (args.index, "index")):
        if not path.is_dir():
            raise SystemExit(f"{what} {path} not found: pass --{what} (make demo builds runs/demo/bundle; "
                             "benchmarks/search.py says how to build runs/catalog-index)")
    result = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.json, result)
    atomic_write_bytes(args.json.with_suffix(".md"), markdown(result).encode())
    log(f"wrote {args.json} and {args.json.with_suffix('.md')}")
    return 1 if result["total_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
