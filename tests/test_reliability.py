"""turbo-serve over time and under faults: a short soak on every backend, overload, SIGTERM drains, SIGKILL and
restart (also mid-compile) serve correct images at once. The full soak and overload figures are benchmarks
(benchmarks/reliability.py); these are their short versions."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from serving import decode, serve_process

from turbo_runtime.pipeline import TurboPipeline

ROOT = Path(__file__).resolve().parent.parent


def reliability(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.reliability", *args], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT,
    )  # fmt: skip


def test_soak_short_on_every_backend(tmp_path, sd_artifacts):
    """200 mixed generations per backend (text and image to image, both APIs, 1-4 steps, some abandoned)."""
    result = reliability(
        "soak", "--artifacts", str(sd_artifacts), "--backends", "onnxruntime", "openvino", "torch",
        "--requests", "200", "--out", str(tmp_path), timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "results.json").read_text())["soak"]
    assert [r["backend"] for r in report] == ["onnxruntime", "openvino", "torch"]
    for r in report:
        assert r["requests"] == 200 and r["cancelled"] == 20 and not r["failures"], r["checks"]
        assert all(r["checks"].values()) and abs(r["rss_growth"]) <= 0.05
    assert (tmp_path / "soak.png").stat().st_size > 0


def test_overload_short(tmp_path, sd_artifacts):
    """Four times more clients than the queue holds: images or 503 with Retry-After, /health throughout."""
    result = reliability(
        "overload", "--artifacts", str(sd_artifacts), "--backend", "onnxruntime", "--max-queue", "2", "--clients", "8",
        "--duration", "10", "--out", str(tmp_path), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "results.json").read_text())["overload"]
    assert set(report["load"]["statuses"]) == {"200", "503"} and report["health_max_ms"] < 1000


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("turbo_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no turbo_queue_depth in /metrics")


def test_sigterm_drains_then_exits_0(sd_artifacts):
    """Requests running or queued at SIGTERM finish; new ones and /ready get 503; the process exits 0."""
    args = ["--artifacts", str(sd_artifacts), "--backend", "onnxruntime", "--max-images", "4"]
    with serve_process(*args) as served:
        url, proc = served.url, served.proc
        slow = {"prompt": "slow", "n": 4, "steps": 40, "seed": 1}
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            running = [pool.submit(httpx.post, f"{url}/v1/images/generations", json=slow, timeout=120) for _ in "ab"]
            deadline = time.monotonic() + 30
            while queue_depth(url) < 1:  # one runs, one waits
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            refused = httpx.post(f"{url}/v1/images/generations", json={"prompt": "new"}, timeout=30)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
            assert httpx.get(f"{url}/ready", timeout=10).json() == {"status": "draining"}
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            for future in running:
                response = future.result()
                assert response.status_code == 200 and len(response.json()["data"]) == 4
        assert proc.wait(timeout=60) == 0, served.stderr


def test_sigkill_mid_request_then_restart_serves_correct_images(tmp_path, sd_artifacts):
    """Killed while generating, and killed at several points of a cold compile: each restart, on the same compile
    cache, answers its first request with the pipeline's pixels."""
    env = {"TURBO_RUNTIME_CACHE": str(tmp_path / "cache")}  # a cold OpenVINO compile cache of its own
    args = ["--artifacts", str(sd_artifacts), "--backend", "openvino", "--dtype", "float32"]
    expected = np.asarray(
        TurboPipeline.from_artifacts(sd_artifacts, "openvino", dtype="float32")("x", seed=3).images[0]
    )

    def first_image_is_correct() -> None:
        with serve_process(*args, env=env) as served:
            response = httpx.post(f"{served.url}/v1/images/generations", json={"prompt": "x", "seed": 3}, timeout=60)
            assert response.status_code == 200, response.text
            assert np.abs(decode(response.json()["data"][0]["b64_json"]).astype(int) - expected).max() <= 1

    for delay in (0.3, 0.8, 1.5, 3.0):  # into the compile: before, while and after the cache is written
        with serve_process(*args, env=env, ready=False) as served:
            time.sleep(delay)
            served.proc.kill()
            served.proc.wait(timeout=30)
        first_image_is_correct()
    with serve_process(*args, env=env) as served:
        slow = {"prompt": "slow", "n": 4, "steps": 50}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(post_or_error, f"{served.url}/v1/images/generations", slow) for _ in "ab"]
            deadline = time.monotonic() + 30
            while queue_depth(served.url) < 1:  # one request runs, one waits: the kill lands mid-request
                assert time.monotonic() < deadline
                time.sleep(0.01)
            served.proc.kill()
            outcomes = [future.result() for future in pending]
        assert "error" in outcomes, outcomes
        served.proc.wait(timeout=30)
    first_image_is_correct()


def post_or_error(url: str, body: dict) -> str:
    try:
        return str(httpx.post(url, json=body, timeout=60).status_code)
    except httpx.HTTPError:
        return "error"
