"""python -m benchmarks.serve_load --url URL --plan PLAN.json --concurrency C --requests N --duration S:
a small asyncio HTTP/1.1 load generator (keep-alive, one connection per client) for benchmarks.serve.

PLAN.json is a list of prepared requests {"method", "path", "content_type", "body_b64"}; clients
take them in turn, so every run sends the same mix. The run stops after N timed requests or S
seconds, whichever comes first, after ``--warmup`` untimed ones. A response that is not 2xx, or
a connection that fails, is an error (counted, a few kept as samples). Prints one JSON object.

Raw asyncio streams rather than an HTTP library: at 64 clients on one core a full client
library spends more CPU per request than the server does, and the load generator would be
what is measured.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np


@dataclass
class Prepared:
    head: bytes  # request line and headers
    body: bytes


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(text[:300])


def prepare(plan: list[dict[str, str]], host: str) -> list[Prepared]:
    out = []
    for entry in plan:
        body = base64.b64decode(entry.get("body_b64", ""))
        lines = [f"{entry['method']} {entry['path']} HTTP/1.1", f"Host: {host}", "Connection: keep-alive",
                 f"Content-Length: {len(body)}"]
        if entry.get("content_type"):
            lines.append(f"Content-Type: {entry['content_type']}")
        out.append(Prepared(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body))
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return status, await reader.read()


class Run:
    """Shared counters of one load run: requests handed out, deadline, results."""

    def __init__(self, requests: list[Prepared], total: int, warmup: int, duration: float) -> None:
        self.requests, self.total, self.warmup, self.duration = requests, total, warmup, duration
        self.issued = 0
        self.deadline = float("inf")
        self.started = 0.0
        self.ended = 0.0
        self.tally = Tally()

    def next(self) -> tuple[Prepared, bool] | None:
        """The next request and whether it is timed; None when the run is over."""
        if self.issued >= self.warmup + self.total or time.perf_counter() > self.deadline:
            return None
        n = self.issued
        self.issued += 1
        if n == self.warmup:  # the first timed request starts the clock
            self.started = time.perf_counter()
            self.deadline = self.started + self.duration
        return self.requests[n % len(self.requests)], n >= self.warmup


async def client(run: Run, host: str, port: int) -> None:
    reader = writer = None
    while (job := run.next()) is not None:
        request, timed = job
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request.head + request.body)
            await writer.drain()
            status, body = await read_response(reader)  # type: ignore[arg-type]
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            run.tally.error(f"{type(exc).__name__}: {exc}")
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        elapsed = time.perf_counter() - start
        if timed:
            run.tally.statuses[status] = run.tally.statuses.get(status, 0) + 1
            run.tally.latencies.append(elapsed)
            run.ended = time.perf_counter()
            if not 200 <= status < 300:
                run.tally.error(f"HTTP {status}: {body[:200]!r}")
    if writer is not None:
        writer.close()


async def drive(url: str, plan: list[dict[str, str]], concurrency: int, total: int, duration: float,
                warmup: int) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    run = Run(prepare(plan, f"{host}:{port}"), total, warmup, duration)
    await asyncio.gather(*(client(run, host, port) for _ in range(concurrency)))
    lat = np.asarray(run.tally.latencies) * 1000
    wall = max(run.ended - run.started, 1e-9)
    return {"concurrency": concurrency, "requests": int(lat.size), "errors": run.tally.errors,
            "error_samples": run.tally.samples, "statuses": {str(k): v for k, v in sorted(run.tally.statuses.items())},
            "seconds": round(wall, 3), "throughput_rps": round(lat.size / wall, 1) if lat.size else 0.0,
            "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
            "max_ms": round(float(lat.max()), 3) if lat.size else None,
            "mean_ms": round(float(lat.mean()), 3) if lat.size else None}


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values.size else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", required=True)
    p.add_argument("--plan", required=True, type=Path)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--requests", type=int, default=1000, help="timed requests at most")
    p.add_argument("--duration", type=float, default=20.0, help="seconds at most, after the warm-up")
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    job = drive(args.url, plan, args.concurrency, args.requests, args.duration, args.warmup)
    try:  # uvloop (the serve extra) spends less of the client's core per request than asyncio's loop
        import uvloop
    except ImportError:
        result = asyncio.run(job)
    else:
        result = uvloop.run(job)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
