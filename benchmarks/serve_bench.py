"""turbo-serve under load: requests per second and latency percentiles from locust at several concurrencies, the
server's overhead against the in-process pipeline call, and the time per frame in the realtime page.

    python -m benchmarks.serve_bench --artifacts artifacts/sd-turbo-fast --backend openvino --threads 2 \\
        --users 1 2 8 --duration 60 --out bench-results/serve
    python -m benchmarks.serve_bench ... --ray --replicas 2 --replica-cpus 1 --threads 1 --calls 0 --frames 0
    python -m benchmarks.serve_bench --url http://10.0.0.5:8000 --users 8 --calls 0 --frames 0   # a running server

Steps, one after another on the same machine: turbo-serve started as users start it (with --ray: on a local Ray
cluster, --replicas replicas of --replica-cpus CPUs and --threads engine threads each), or the server at --url;
--calls calls of the pipeline in this process alternated with the same requests through the server (the overhead;
0 skips it); locust headless for --duration seconds per concurrency; headless Chromium on the page, timing
--frames frames (0 skips it). Results: results.json and results.md in --out.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.bench import PROMPT, machine
from turbo_runtime.cli import cli_errors
from turbo_runtime.errors import InputError

LOCUSTFILE = Path(__file__).resolve().parent / "serve_locustfile.py"
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@dataclass(frozen=True)
class ServeBenchConfig:
    artifacts: Path | None  # None: the server at `url`
    backend: str = "openvino"
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    users: tuple[int, ...] = (1, 2, 8)
    duration: float = 60.0  # seconds of load per concurrency
    calls: int = 20  # in-process calls alternated with server calls
    frames: int = 20  # page frames timed in the browser; 0 skips the browser
    out: Path = Path("bench-results/serve")
    url: str | None = None  # a running server instead of starting one
    ray: bool = False  # turbo-serve --ray: replicas on a local Ray cluster
    replicas: int = 1
    replica_cpus: float | None = None


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/v1/images/generations", json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def overhead(config: ServeBenchConfig, url: str) -> dict:
    """The server against the pipeline call it wraps, alternated call by call so the machine's drift hits both:
    an in-process call (prompt to PIL image) in this process, then the same request through HTTP (JSON, PNG,
    base64, queue) to the server, whose own pipeline time comes back in the response's timings."""
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(
        config.artifacts, config.backend, device=config.device, dtype=config.dtype, threads=config.threads
    )
    local, remote, inside = [], [], []
    for seed in range(config.calls + 2):  # two warm-up rounds: first calls allocate the engines' buffers
        start = time.perf_counter()
        pipe(PROMPT, seed=seed)
        middle = time.perf_counter()
        answer = post(url, {"prompt": PROMPT, "seed": seed})
        end = time.perf_counter()
        if seed >= 2:
            local.append(middle - start)
            remote.append(end - middle)
            inside.append(answer["timings"]["total"])
    del pipe
    gc.collect()
    median = statistics.median
    return {
        "calls": config.calls,
        "in_process_median_s": median(local),
        "http_median_s": median(remote),
        "server_pipeline_median_s": median(inside),
        "added_median_s": median(r - i for r, i in zip(remote, inside)),  # what serving adds to each call
        "fraction": median(remote) / median(local) - 1,
    }


@contextmanager
def turbo_serve(args: list[str]):
    """turbo-serve started as a user starts it, on a free port; yields (url, process) once ready, then SIGTERM."""
    cmd = [str(Path(sys.executable).parent / "turbo-serve"), "--port", "0", "--quiet", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        while (line := proc.stdout.readline()) and not line.startswith("ready: "):
            pass
        if not line:
            raise InputError(f"turbo-serve exited with code {proc.wait()} before it was ready (its stderr above)")
        yield line.split()[1].rstrip("/"), proc
    finally:
        proc.terminate()
        proc.wait(timeout=180)


@contextmanager
def served(config: ServeBenchConfig):
    """The server under test: a running one at --url, or turbo-serve (on Ray replicas with --ray) started here."""
    if config.url is not None:
        yield config.url.rstrip("/")
        return
    args = ["--artifacts", str(config.artifacts), "--backend", config.backend]
    args += ["--max-queue", str(max(16, 2 * max(config.users)))]
    for flag, value in (("--device", config.device), ("--dtype", config.dtype), ("--threads", config.threads)):
        if value is not None:
            args += [flag, str(value)]
    if config.ray:
        args += ["--ray", "--replicas", str(config.replicas)]
        if config.replica_cpus is not None:
            args += ["--replica-cpus", f"{config.replica_cpus:g}"]
    with turbo_serve(args) as (url, _):
        yield url


def locust(url: str, users: int, duration: float, prefix: Path, user_class: str = "ImageClient") -> dict:
    """One headless locust run: its aggregated statistics, and percentiles from every response time."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), user_class, "--headless", "--users", str(users)]
    cmd += ["--spawn-rate", str(users), "--run-time", f"{duration:g}s", "--host", url, "--csv", str(prefix)]
    cmd += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "120"]
    times_file = Path(f"{prefix}_times.txt")
    times_file.unlink(missing_ok=True)
    env = {**os.environ, "TURBO_LOCUST_TIMES": str(times_file)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)  # its summary table repeats the CSV
    if not Path(f"{prefix}_stats.csv").is_file():
        raise InputError(f"locust failed (exit code {done.returncode}): {done.stderr.strip()[-500:]}")
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    responses = [line.split() for line in times_file.read_text().splitlines()]
    times = np.array([float(ms) for _, ms in responses] or [np.nan])
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {
        "statuses": dict(Counter(status for status, _ in responses)),
        "max_ms": float(times.max()),
        "users": users,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_s": float(row["Requests/s"]),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(times.mean()),
    }


def browser(url: str, frames: int) -> dict:
    """Time per frame as the page shows it (send to rendered), one prompt edit at a time."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise InputError("the page is timed in Debian's chromium, which is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        page = p.chromium.launch(executable_path=chromium, args=BROWSER_FLAGS).new_page()
        page.goto(url + "/")
        page.wait_for_selector("#status.ready", timeout=120_000)
        per_frame, server = [], []
        for i in range(frames + 1):  # the first frame warms the page up
            before = page.evaluate("Number(document.querySelector('#frame').dataset.frameId || 0)")
            page.fill("#prompt", f"{PROMPT}, frame {i}")  # one edit: one request, sent after the page's debounce
            page.wait_for_function(
                f"Number(document.querySelector('#frame').dataset.frameId || 0) > {before}", timeout=120_000
            )
            text = page.inner_text("#timing")
            if i:
                per_frame.append(float(re.match(r"(\d+) ms per frame", text).group(1)) / 1000)
                server.append(float(re.search(r"server (\d+) ms", text).group(1)) / 1000)
    return {"frames": frames, "median_s": statistics.median(per_frame), "server_median_s": statistics.median(server)}


def run(config: ServeBenchConfig) -> dict:
    config.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "config": {k: str(v) for k, v in asdict(config).items()}}
    with served(config) as url:
        if config.calls:
            results["overhead"] = overhead(config, url)
        results["load"] = [locust(url, n, config.duration, config.out / f"locust-{n}") for n in config.users]
        if config.frames:
            results["browser"] = browser(url, config.frames)
    (config.out / "results.json").write_text(json.dumps(results, indent=2))
    (config.out / "results.md").write_text(table(results))
    return results


def table(results: dict) -> str:
    lines = [
        "| clients | requests/s | p50 | p95 | p99 | failed |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["load"]:
        lines.append(
            f"| {r['users']} | {r['requests_per_s']:.2f} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
            f"{r['p99_ms']:.0f} ms | {r['failures']} of {r['requests']} |"
        )
    lines.append("")
    if "overhead" in results:
        o = results["overhead"]
        lines.append(
            f"One client, alternated with the in-process call ({o['calls']} each): in-process "
            f"{o['in_process_median_s'] * 1000:.0f} ms, through the server {o['http_median_s'] * 1000:.0f} ms "
            f"({o['fraction']:+.1%}); the server adds {o['added_median_s'] * 1000:.1f} ms to its pipeline's "
            f"{o['server_pipeline_median_s'] * 1000:.0f} ms (medians)."
        )
    if "browser" in results:
        b = results["browser"]
        lines.append(
            f"Realtime page: {b['median_s'] * 1000:.0f} ms per frame (median of {b['frames']}; server "
            f"{b['server_median_s'] * 1000:.0f} ms of it)."
        )
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--artifacts", type=Path, help="folder written by turbo-export: start turbo-serve on it")
    target.add_argument("--url", help="load a running server instead (needs --calls 0: no artifacts here)")
    p.add_argument("--backend", default="openvino")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--threads", type=int)
    p.add_argument("--users", type=int, nargs="+", default=[1, 2, 8], help="concurrent clients, one run each")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default 60)")
    p.add_argument("--calls", type=int, default=20, help="in-process calls alternated with server calls (default 20)")
    p.add_argument("--frames", type=int, default=20, help="page frames timed in the browser; 0 skips it")
    p.add_argument("--out", type=Path, default=Path("bench-results/serve"))
    p.add_argument("--ray", action="store_true", help="turbo-serve --ray: replicas on a local Ray cluster")
    p.add_argument("--replicas", type=int, default=1, help="with --ray (default 1)")
    p.add_argument("--replica-cpus", type=float, help="with --ray: CPUs per replica (turbo-serve's default: 1)")
    args = p.parse_args(argv)
    if min(args.users) < 1 or args.duration <= 0 or args.calls < 0 or args.frames < 0:
        raise InputError("--users must be at least 1, --duration above 0, --calls and --frames at least 0")
    if args.url and (args.calls or args.ray):
        raise InputError("--url loads a running server: give --calls 0, and no --ray")
    config = ServeBenchConfig(
        args.artifacts, args.backend, args.device, args.dtype, args.threads, tuple(args.users), args.duration,
        args.calls, args.frames, args.out, args.url, args.ray, args.replicas, args.replica_cpus,
    )  # fmt: skip
    results = run(config)
    print(table(results), end="")
    return 0 if all(r["failures"] == 0 for r in results["load"]) else 1


if __name__ == "__main__":
    sys.exit(main())
