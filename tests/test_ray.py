"""turbo-serve on Ray Serve: a local cluster on the loopback, tiny replicas, real clients through Ray's proxy.

One cluster serves the whole module (starting one takes about ten seconds here); the command line starts its own,
before that one exists. Every cluster is torn down at the end, and no process of it may be left.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SIZE, assert_one_line_error, run_cli
from serving import damaged_copy, decode, serve_process

from turbo_runtime.errors import ArtifactError
from turbo_runtime.pipeline import TurboPipeline

pytest.importorskip("ray.serve")

from turbo_runtime.serve import ray_app  # noqa: E402
from turbo_runtime.serve.config import PipelineSource, ServeSettings  # noqa: E402

BACKEND = "onnxruntime"  # float32: a replica's pixels equal the in-process pipeline's exactly
MARK = "TURBO_RAY_TEST_MARK"  # in the environment of every process a test's cluster starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_marked(mark: str) -> list[str]:
    """Processes (other than this one) whose environment carries `mark`: what a cluster started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"{MARK}={mark}".encode() not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid} {command[:120]}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def assert_none_left(mark: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (left := processes_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left


@contextmanager
def marked_environment():
    """A fresh mark in os.environ while a cluster starts, so its processes inherit it; yields the mark."""
    mark = uuid.uuid4().hex
    os.environ[MARK] = mark
    try:
        yield mark
    finally:
        del os.environ[MARK]


@pytest.fixture(scope="module")
def pipe(sd_artifacts) -> TurboPipeline:
    return TurboPipeline.from_artifacts(sd_artifacts, BACKEND, threads=1)  # as each replica runs it


def expected(pipe: TurboPipeline, prompt: str, seed: int, steps: int = 1) -> np.ndarray:
    return np.asarray(pipe(prompt, num_inference_steps=steps, seed=seed).images[0])


def generate(url: str, seed: int, prompt: str = "a red fox", steps: int = 1) -> httpx.Response:
    body = {"prompt": prompt, "seed": seed, "steps": steps, "response_format": "b64_json"}
    return httpx.post(f"{url}/v1/images/generations", json=body, timeout=120)


# ---- the command line: its own local cluster, started and stopped ------------------------------------------------


def test_cli_serves_on_ray_and_leaves_no_process(sd_artifacts, pipe):
    args = ["--artifacts", str(sd_artifacts), "--backend", BACKEND, "--threads", "1"]
    with marked_environment() as mark:
        served = serve_process(*args, "--ray", "--replicas", "1", "--replica-cpus", "1")
        with served as server:
            assert processes_marked(mark)
            response = generate(server.url, seed=4)
            assert response.status_code == 200, response.text
            assert response.headers["x-turbo-replica"]
            assert np.array_equal(decode(response.json()["data"][0]["b64_json"]), expected(pipe, "a red fox", 4))
    # serve_process stopped it with SIGTERM and checked exit code 0
    assert_none_left(mark)


def test_load_benchmark_on_ray_replicas(sd_artifacts, tmp_path):
    """benchmarks/serve_bench.py --ray, briefly: locust against two replicas, and nothing left running."""
    args = ["--artifacts", str(sd_artifacts), "--backend", BACKEND, "--threads", "1", "--ray", "--replicas", "2"]
    args += ["--replica-cpus", "1", "--users", "2", "--duration", "3", "--calls", "0", "--frames", "0"]
    with marked_environment() as mark:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.serve_bench", *args, "--out", str(tmp_path)],
            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    load = json.loads((tmp_path / "results.json").read_text())["load"]
    assert load[0]["users"] == 2 and load[0]["requests"] > 0 and load[0]["failures"] == 0
    assert_none_left(mark)


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--artifacts", "ART", "--replicas", "2"], ["need --ray"]),
        (["--model", "tiny-sd-turbo", "--ray"], ["--ray serves exported artifacts"]),
        (["--artifacts", "ART", "--ray", "--replicas", "0"], ["--replicas must be at least 1, got 0"]),
        (["--artifacts", "ART", "--ray", "--min-replicas", "1"], ["--min-replicas and --max-replicas together"]),
        (["--artifacts", "ART", "--ray", "--min-replicas", "3", "--max-replicas", "2"], ["got 3 and 2"]),
        (["--artifacts", "ART", "--ray", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"],
         ["not both"]),
    ],
)  # fmt: skip
def test_cli_bad_ray_flags(sd_artifacts, args, fragments):
    result = run_cli("turbo-serve", *[str(sd_artifacts) if a == "ART" else a for a in args])
    assert_one_line_error(result, *fragments)


# ---- one cluster for the rest ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(sd_artifacts):
    """Two replicas of one CPU and one engine thread each, on a local cluster of two CPUs."""
    port = free_port()
    options = ray_app.RayOptions(replicas=2, replica_cpus=1, num_cpus=2)
    source = PipelineSource(artifacts=sd_artifacts, backend=BACKEND, threads=1)
    with marked_environment() as mark:
        with ray_app.cluster(options):
            ray_app.deploy(source, ServeSettings(max_steps=8), options, "127.0.0.1", port)
            yield f"http://127.0.0.1:{port}"
    assert_none_left(mark)


def test_two_replicas_share_the_load_and_give_the_pipelines_pixels(cluster, pipe):
    seeds = range(20)
    with concurrent.futures.ThreadPoolExecutor(4) as clients:
        responses = list(clients.map(lambda seed: generate(cluster, seed), seeds))
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    for seed, response in zip(seeds, responses):
        assert np.array_equal(decode(response.json()["data"][0]["b64_json"]), expected(pipe, "a red fox", seed))
    assert len({r.headers["x-turbo-replica"] for r in responses}) == 2


def test_realtime_websocket_through_the_proxy(cluster, pipe):
    from websockets.sync.client import connect

    with connect(cluster.replace("http", "ws") + "/realtime") as ws:
        hello = json.loads(ws.recv(timeout=30))
        assert hello["type"] == "hello" and hello["width"] == SIZE and hello["replica"]
        ws.send(json.dumps({"type": "generate", "id": 1, "prompt": "a fox", "seed": 3, "format": "png"}))
        header = json.loads(ws.recv(timeout=60))
        assert header["type"] == "frame" and header["id"] == 1 and header["seed"] == 3
        assert np.array_equal(decode(ws.recv(timeout=60)), expected(pipe, "a fox", 3))


def test_metrics_hold_ours_per_replica_and_ray_serves(cluster):
    deadline = time.monotonic() + 30  # Ray's metrics agent publishes every few seconds
    while True:
        response = httpx.get(f"{cluster}/metrics", timeout=30)
        text = response.text
        if "ray_serve_num_http_requests" in text or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 200
    replica = response.headers["x-turbo-replica"]
    assert f'turbo_ready{{replica="{replica}"}} 1.0' in text
    assert f'turbo_requests_total{{replica="{replica}",route=' in text
    assert "ray_serve_num_http_requests" in text
    assert text.count("# TYPE turbo_requests_total ") == 1


def test_a_killed_replica_is_replaced_and_no_image_is_wrong(cluster, pipe):
    import ray
    from ray import serve

    prefix = f"{ray_app.APP}#{ray_app.DEPLOYMENT}#"

    def replicas() -> set[str]:
        actors = ray.util.list_named_actors(all_namespaces=True)
        return {a["name"].rsplit("#", 1)[1] for a in actors if prefix in a["name"]}

    original = replicas()
    assert len(original) == 2, original
    results: list[tuple[int, httpx.Response | Exception]] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        deadline = time.monotonic() + 120  # bounded in time, and by `stop`
        for seed in range(offset, 10_000, 2):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                results.append((seed, generate(cluster, seed, steps=8)))  # long enough to be cut short
            except httpx.HTTPError as e:
                results.append((seed, e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while not (seen := [r.headers["x-turbo-replica"] for _, r in results if hasattr(r, "headers")]):
            assert time.monotonic() < deadline and all(t.is_alive() for t in threads), results  # load is on
            time.sleep(0.1)
        victim = seen[0]
        ray.kill(ray.get_actor(f"SERVE_REPLICA::{prefix}{victim}", namespace="serve"), no_restart=True)
        killed_at = len(results)
        deadline = time.monotonic() + 90
        while True:  # a replacement starts and answers
            status = serve.status().applications[ray_app.APP].deployments[ray_app.DEPLOYMENT]
            answered = {r.headers.get("x-turbo-replica") for _, r in results[killed_at:] if hasattr(r, "headers")}
            new = replicas() - original
            if status.replica_states.get("RUNNING") == 2 and new and new <= answered:
                break
            assert time.monotonic() < deadline, (status, answered, replicas())
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(130)
    failed = [(seed, r) for seed, r in results if not isinstance(r, httpx.Response) or r.status_code != 200]
    for seed, r in failed:  # a clean server error, never a broken connection
        assert isinstance(r, httpx.Response) and 500 <= r.status_code < 600, (seed, r)
    served = [(seed, r) for seed, r in results if isinstance(r, httpx.Response) and r.status_code == 200]
    assert len(served) > len(failed)
    for seed, r in served:
        assert np.array_equal(decode(r.json()["data"][0]["b64_json"]), expected(pipe, "a red fox", seed, 8)), seed
    later = [generate(cluster, seed) for seed in (20_000, 20_001, 20_002, 20_003)]
    assert [r.status_code for r in later] == [200] * 4
    assert victim not in {r.headers["x-turbo-replica"] for r in later}


def test_a_damaged_artifact_fails_the_replica_naming_the_file(cluster, sd_artifacts, tmp_path):
    broken = damaged_copy(sd_artifacts, tmp_path)
    unet = broken / "onnx" / "unet" / "model.onnx"
    source = PipelineSource(artifacts=broken, backend=BACKEND, threads=1)
    options = ray_app.RayOptions(replicas=1, replica_cpus=0)  # beside the two replicas that hold both CPUs
    with pytest.raises(ArtifactError, match=re.escape(f"a replica failed to start: artifact file {unet} was modified")):
        ray_app.deploy(source, ServeSettings(), options, name="broken", route_prefix="/broken")
    assert generate(cluster, seed=5).status_code == 200  # the healthy application serves on
