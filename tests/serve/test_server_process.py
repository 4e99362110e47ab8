"""The server as a process on 127.0.0.1: `python -m fashsdk.serve` loads, gets ready, answers
many clients at once, finishes requests in flight on SIGTERM, and exits 2 when it cannot load."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STOPPED = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown: the usual exit by signal


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read() if process.stdout else ""


def test_served_process_answers_concurrent_clients_like_the_sdk(real_bundle_dir, real_index_dir, catalog_images_dir,
                                                               real_retriever, real_subset_data) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(["-m", "fashsdk.serve", "--bundle", str(real_bundle_dir), "--index", str(real_index_dir),
                     "--images", str(catalog_images_dir), "--port", str(port), "--threads", "1", "--workers", "4"])
    try:
        wait_ready(base, process)
        ids = real_subset_data.ids[:16]
        expected = {i: [r.id for r in real_retriever.search(i, change={"season": "Summer"}, k=5)] for i in ids}

        def ask(item: str) -> tuple[str, list[str]]:
            with httpx.Client(base_url=base, timeout=30) as c:
                answer = c.post("/v1/search", json={"id": item, "change": {"season": "Summer"}, "k": 5})
                assert answer.status_code == 200, answer.text
                return item, [r["id"] for r in answer.json()["results"]]

        with ThreadPoolExecutor(8) as pool:
            answers = dict(pool.map(ask, ids * 3))
        assert answers == expected
        photo = real_subset_data.images[ids[0]]
        upload = httpx.post(base + "/v1/search/image", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=30)
        assert [r["id"] for r in upload.json()["results"]] == [r.id for r in real_retriever.search(photo, k=10)]
        assert httpx.get(base + f"/v1/images/{ids[0]}").content == photo
        metrics = httpx.get(base + "/metrics").text
        assert 'fashsdk_http_requests_total{endpoint="/v1/search",method="POST",status="200"} 48' in metrics
    finally:
        output = stop(process)
    assert process.returncode in STOPPED, output


def test_sigterm_lets_requests_in_flight_finish(real_bundle_dir, real_index_dir, real_subset_data) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start([str(HERE / "slow_server.py"), str(real_bundle_dir), str(real_index_dir), str(port), "2.0"])
    try:
        wait_ready(base, process)
        photo = real_subset_data.images[real_subset_data.ids[0]]
        answers: list[httpx.Response] = []
        in_flight = threading.Thread(target=lambda: answers.append(
            httpx.post(base + "/v1/search/image", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=30)))
        in_flight.start()
        time.sleep(0.6)  # the request is inside the model now
        process.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        with pytest.raises(httpx.ConnectError):  # no new connections once shutdown has begun
            httpx.get(base + "/livez", timeout=2)
        assert process.poll() is None  # still finishing the request
        in_flight.join(30)
        assert len(answers) == 1 and answers[0].status_code == 200, answers
        assert len(answers[0].json()["results"]) == 10
        process.wait(20)
    finally:
        output = stop(process)
    assert process.returncode in STOPPED, output


def test_a_bundle_that_cannot_load_exits_2_with_the_reason(tmp_path: Path, real_index_dir) -> None:
    port = free_port()
    process = start(["-m", "fashsdk.serve", "--bundle", str(tmp_path / "missing"), "--index", str(real_index_dir),
                     "--port", str(port)])
    try:
        process.wait(60)
    finally:
        output = stop(process)
    assert process.returncode == 2, output
    assert "fashsdk: error:" in output and "missing" in output


def test_importing_fashsdk_does_not_import_fastapi() -> None:
    code = ("import sys, fashsdk, fashsdk.cli, fashsdk.serve; "
            "assert not {'fastapi', 'uvicorn', 'starlette', 'pydantic'} & set(sys.modules), "
            "sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'uvicorn', 'starlette', 'pydantic'})")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_cli_hook_registers_serve_with_its_options() -> None:
    from fashsdk.serve import add_serve_parser
    from fashsdk.serve.command import cmd_serve

    parser = argparse.ArgumentParser(prog="fashsdk")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", required=True, type=Path)
    common.add_argument("--threads", type=int, default=None)
    add_serve_parser(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(["serve", "--bundle", "b", "--index", "i", "--port", "9001", "--images", "x", "y"])
    assert (args.func, args.bundle, args.index, args.port, args.images) == (cmd_serve, Path("b"), Path("i"), 9001,
                                                                            ["x", "y"])
    assert (args.host, args.max_upload_mb, args.timeout_s, args.grace_s) == ("127.0.0.1", 10.0, 30.0, 30.0)
    assert args.prepare_filters is False and args.workers is None
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--bundle", "b", "--index", "i", "--workers", "0"])


def test_serve_without_the_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from fashsdk import FashsdkError
    from fashsdk.serve.command import build_parser, cmd_serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    args = build_parser().parse_args(["--bundle", "b", "--index", "i"])
    with pytest.raises(FashsdkError, match=r"pip install 'fashsdk\[serve\]'"):
        cmd_serve(args)
