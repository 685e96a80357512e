"""turbo-serve under load: requests per second and latency percentiles from locust at several concurrencies, the
server's overhead against the in-process pipeline call, and the time per frame in the realtime page.

    python -m benchmarks.serve_bench --artifacts artifacts/sd-turbo-fast --backend openvino --threads 2 \\
        --users 1 2 8 --duration 60 --out bench-results/serve

Steps, one after another on the same machine: the pipeline in this process (median of --calls calls, then freed),
turbo-serve started as users start it, locust headless for --duration seconds per concurrency, then headless
Chromium on the page timing --frames frames. Results: results.json and results.md in --out.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.bench import PROMPT, machine
from turbo_runtime.cli import cli_errors
from turbo_runtime.errors import InputError

LOCUSTFILE = Path(__file__).resolve().parent / "serve_locustfile.py"
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip


@dataclass(frozen=True)
class ServeBenchConfig:
    artifacts: Path
    backend: str = "openvino"
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    users: tuple[int, ...] = (1, 2, 8)
    duration: float = 60.0  # seconds of load per concurrency
    calls: int = 20  # in-process pipeline calls
    frames: int = 20  # page frames timed in the browser; 0 skips the browser
    out: Path = Path("bench-results/serve")


def in_process(config: ServeBenchConfig) -> dict:
    """The pipeline call a server wraps: prompt to PIL image, seconds per call after two warm-up calls."""
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(
        config.artifacts, config.backend, device=config.device, dtype=config.dtype, threads=config.threads
    )
    for seed in range(2):
        pipe(PROMPT, seed=seed)
    times = []
    for seed in range(config.calls):
        start = time.perf_counter()
        pipe(PROMPT, seed=seed)
        times.append(time.perf_counter() - start)
    del pipe
    gc.collect()  # the server compiles its own copy next
    return {"calls": config.calls, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


@contextmanager
def served(config: ServeBenchConfig):
    cmd = [str(Path(sys.executable).parent / "turbo-serve"), "--artifacts", str(config.artifacts), "--port", "0"]
    cmd += ["--backend", config.backend, "--max-queue", str(max(16, 2 * max(config.users))), "--quiet"]
    for flag, value in (("--device", config.device), ("--dtype", config.dtype), ("--threads", config.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        while (line := proc.stdout.readline()) and not line.startswith("ready: "):
            pass
        if not line:
            raise InputError(f"turbo-serve exited with code {proc.wait()} before it was ready (its stderr above)")
        yield line.split()[1].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def locust(url: str, users: int, duration: float, prefix: Path) -> dict:
    """One headless locust run; the aggregated row of its CSV statistics (milliseconds, requests per second)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(users)]
    cmd += ["--spawn-rate", str(users), "--run-time", f"{duration:g}s", "--host", url, "--csv", str(prefix)]
    cmd += ["--only-summary", "--loglevel", "WARNING", "--stop-timeout", "120"]
    done = subprocess.run(cmd, capture_output=True, text=True)  # its summary table repeats the CSV
    if not Path(f"{prefix}_stats.csv").is_file():
        raise InputError(f"locust failed (exit code {done.returncode}): {done.stderr.strip()[-500:]}")
    with open(f"{prefix}_stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {
        "users": users,
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_s": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]),
        "p95_ms": float(row["95%"]),
        "p99_ms": float(row["99%"]),
        "mean_ms": float(row["Average Response Time"]),
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
    results["in_process"] = in_process(config)
    with served(config) as url:
        for seed in range(3):  # the server's first calls allocate its engine's buffers
            body = json.dumps({"prompt": PROMPT, "seed": seed}).encode()
            headers = {"Content-Type": "application/json"}
            request = urllib.request.Request(f"{url}/v1/images/generations", body, headers)
            urllib.request.urlopen(request, timeout=600).read()
        results["load"] = [locust(url, n, config.duration, config.out / f"locust-{n}") for n in config.users]
        if config.frames:
            results["browser"] = browser(url, config.frames)
    one = next((r for r in results["load"] if r["users"] == 1), None)
    if one is not None:
        base = results["in_process"]["median_s"] * 1000
        results["overhead_at_one_user"] = {"ms": one["p50_ms"] - base, "fraction": one["p50_ms"] / base - 1}
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
    lines.append(f"In-process pipeline call: median {results['in_process']['median_s'] * 1000:.0f} ms.")
    if "overhead_at_one_user" in results:
        o = results["overhead_at_one_user"]
        lines.append(f"Server overhead at one client (p50 against it): {o['ms']:+.0f} ms ({o['fraction']:+.1%}).")
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
    p.add_argument("--artifacts", type=Path, required=True, help="folder written by turbo-export")
    p.add_argument("--backend", default="openvino")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--threads", type=int)
    p.add_argument("--users", type=int, nargs="+", default=[1, 2, 8], help="concurrent clients, one run each")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per run (default 60)")
    p.add_argument("--calls", type=int, default=20, help="in-process pipeline calls timed (default 20)")
    p.add_argument("--frames", type=int, default=20, help="page frames timed in the browser; 0 skips it")
    p.add_argument("--out", type=Path, default=Path("bench-results/serve"))
    args = p.parse_args(argv)
    if min(args.users) < 1 or args.duration <= 0 or args.calls < 1 or args.frames < 0:
        raise InputError("--users and --calls must be at least 1, --duration above 0, --frames at least 0")
    config = ServeBenchConfig(
        args.artifacts, args.backend, args.device, args.dtype, args.threads, tuple(args.users), args.duration,
        args.calls, args.frames, args.out,
    )  # fmt: skip
    results = run(config)
    print(table(results), end="")
    return 0 if all(r["failures"] == 0 for r in results["load"]) else 1


if __name__ == "__main__":
    sys.exit(main())
