"""turbo-serve kept busy: a soak (many mixed generations in one process, memory, threads and file descriptors
watched) and an overload (more clients than the queue holds, every answer checked).

    python -m benchmarks.reliability soak --artifacts DIR --backends torch onnxruntime openvino --requests 1000
    python -m benchmarks.reliability overload --artifacts DIR --backend onnxruntime --max-queue 4 --clients 16 \\
        --duration 60

soak: per backend, one server; `--clients` threads send text-to-image and image-to-image requests through the
OpenAI and AUTOMATIC1111 APIs, 1 to 4 steps, random seeds; beside every `--cancel-every`-th one, one more request
is sent and abandoned by its client mid-way. Resident memory is sampled throughout; after the warm-up requests, the mean over the first 100
requests and over the last 100 must differ by at most 5 %, no request may fail, and the threads and open file
descriptors of the server (from /proc) must be no more at the end than the most seen over the first 100.

overload: one server with a queue of `--max-queue`; locust runs `--clients` users (benchmarks/serve_locustfile.py,
OverloadClient) for `--duration` seconds while this process times /health. Every answer must be an image or a
503 with Retry-After, within the server's timeout; /health must answer throughout; a normal request afterwards
must succeed.

Results (JSON, and for the soak a chart of memory over requests) go to --out; exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from benchmarks.bench import machine
from benchmarks.serve_bench import locust, turbo_serve
from turbo_runtime.cli import cli_errors
from turbo_runtime.errors import InputError

WARMUP = 20
MEMORY_GROWTH = 0.05


def proc_counts(pid: int) -> dict:
    """Resident memory (bytes; all, anonymous, file-backed), threads and open file descriptors, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss": int(fields["VmRSS"].split()[0]) * 1024,
        "rss_anon": int(fields["RssAnon"].split()[0]) * 1024,  # heap and stacks: what a leak grows
        "rss_file": int(fields["RssFile"].split()[0]) * 1024,  # mapped files (weights, libraries): reclaimable
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def init_image() -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def one_request(client, url: str, rng: random.Random, picture: bytes) -> int:
    """A random request of the mix; returns the HTTP status."""
    steps, seed = rng.randint(1, 4), rng.randrange(2**31)
    kind = rng.choice(["openai", "a1111", "openai-edit", "a1111-img2img"])
    if kind == "openai":
        response = client.post(f"{url}/v1/images/generations", json={"prompt": "a fox", "seed": seed, "steps": steps})
    elif kind == "a1111":
        response = client.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "a fox", "seed": seed, "steps": steps})
    elif kind == "openai-edit":
        files = {"image": ("in.png", picture, "image/png")}
        data = {"prompt": "a fox", "seed": str(seed), "steps": str(steps), "strength": "1.0"}
        response = client.post(f"{url}/v1/images/edits", files=files, data=data)
    else:
        body = {"prompt": "a fox", "seed": seed, "steps": steps, "denoising_strength": 1.0}
        body["init_images"] = [base64.b64encode(picture).decode()]
        response = client.post(f"{url}/sdapi/v1/img2img", json=body)
    return response.status_code


def abandon(url: str) -> None:
    """A client that sends its request and leaves before the answer."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "gone", "steps": 4}).encode()
    head = f"POST /v1/images/generations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.01)


def soak_backend(artifacts: Path, backend: str, requests: int, clients: int, cancel_every: int) -> dict:
    import httpx

    args = ["--artifacts", str(artifacts), "--backend", backend, "--max-queue", str(4 * clients)]
    with turbo_serve(args) as (url, proc):
        picture = init_image()
        done, failures, cancelled, samples = 0, [], 0, []
        lock = threading.Lock()
        numbers = iter(range(WARMUP + requests))
        stop = threading.Event()

        def work(index: int) -> None:
            nonlocal done, cancelled
            rng = random.Random(index)
            with httpx.Client(timeout=120) as client:
                while True:
                    with lock:
                        n = next(numbers, None)
                    if n is None:
                        return
                    if n >= WARMUP and cancel_every and n % cancel_every == 0:
                        abandon(url)  # one more request, abandoned, beside this one
                        with lock:
                            cancelled += 1
                    try:
                        status = one_request(client, url, rng, picture)
                    except Exception as e:  # a client error counts as a failure too
                        status = f"{type(e).__name__}: {e}"
                    with lock:
                        done += 1
                        if status != 200:
                            failures.append(status)

        def sample() -> None:
            while not stop.is_set():
                counts = proc_counts(proc.pid)
                with lock:
                    samples.append({"done": done, **counts})
                time.sleep(0.2)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
        sampler = threading.Thread(target=sample)
        start = time.monotonic()
        sampler.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1.0)  # abandoned requests drain
        stop.set()
        sampler.join()
        at_end = proc_counts(proc.pid)
        seconds = time.monotonic() - start

    def mean_rss(lo: int, hi: int) -> float:
        window = [s["rss"] for s in samples if lo <= s["done"] < hi]
        return statistics.mean(window) if window else float("nan")

    def most(key: str, lo: int, hi: int) -> int:
        return max(s[key] for s in samples if lo <= s["done"] < hi)

    generated = done
    first, last = mean_rss(WARMUP, WARMUP + 100), mean_rss(max(WARMUP, generated - 100), generated + 1)
    growth = last / first - 1
    # Thread pools (asyncio's, anyio's for uploads) start and retire threads as load comes and goes, so counts
    # move both ways; a leak shows as a count at the end above the most seen over the first 100 requests.
    early = {key: most(key, 0, WARMUP + 100) for key in ("threads", "fds")}
    checks = {
        "no failed request": not failures,
        f"memory growth at most {MEMORY_GROWTH:.0%}": growth <= MEMORY_GROWTH,
        "no leaked thread": at_end["threads"] <= early["threads"],
        "no leaked file descriptor": at_end["fds"] <= early["fds"],
    }
    return {
        "backend": backend,
        "requests": generated - WARMUP,
        "cancelled": cancelled,
        "failures": failures[:20],
        "seconds": seconds,
        "rss_first_100_mib": first / 2**20,
        "rss_last_100_mib": last / 2**20,
        "rss_growth": growth,
        "first_100": early,
        "at_end": at_end,
        "samples": samples,
        "checks": checks,
        "ok": all(checks.values()),
    }


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for r in results:
        samples = r["samples"]
        ax.plot([s["done"] for s in samples], [s["rss"] / 2**20 for s in samples], label=r["backend"])
    ax.axvline(WARMUP, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("requests answered")
    ax.set_ylabel("server resident memory (MiB)")
    ax.set_title("turbo-serve soak: resident memory over requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def overload(artifacts: Path, backend: str, max_queue: int, clients: int, duration: float, out: Path) -> dict:
    import httpx

    timeout = 60.0
    args = ["--artifacts", str(artifacts), "--backend", backend, "--max-queue", str(max_queue)]
    args += ["--timeout", str(timeout)]
    with turbo_serve(args) as (url, _):
        health: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    start = time.perf_counter()
                    try:
                        ok = client.get(f"{url}/health").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    health.append(time.perf_counter() - start if ok else float("inf"))
                    time.sleep(0.1)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            load = locust(url, clients, duration, out / "overload", user_class="OverloadClient")
        finally:
            stop.set()
            prober.join()
        after = httpx.post(f"{url}/v1/images/generations", json={"prompt": "after", "seed": 1}, timeout=timeout)
    statuses = load["statuses"]
    checks = {
        "only images and 503 with Retry-After": load["failures"] == 0 and set(statuses) <= {"200", "503"},
        "every answer within the timeout": load["max_ms"] < timeout * 1000,
        "/health answered throughout (under 1 s)": bool(health) and max(health) < 1.0,
        "serves normally after": after.status_code == 200,
        "some requests were refused (the queue was full)": statuses.get("503", 0) > 0,
    }
    return {
        "backend": backend,
        "max_queue": max_queue,
        "clients": clients,
        "duration_s": duration,
        "load": load,
        "health_median_ms": statistics.median(health) * 1000,
        "health_max_ms": max(health) * 1000,
        "health_probes": len(health),
        "checks": checks,
        "ok": all(checks.values()),
    }


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    soak = sub.add_parser("soak", help="many mixed generations in one server, memory watched")
    soak.add_argument("--artifacts", type=Path, required=True)
    soak.add_argument("--backends", nargs="+", default=["onnxruntime"])
    soak.add_argument("--requests", type=int, default=1000, help="after the warm-up (default 1000)")
    soak.add_argument("--clients", type=int, default=4)
    soak.add_argument("--cancel-every", type=int, default=10, help="one request abandoned per n (0: none)")
    soak.add_argument("--out", type=Path, default=Path("bench-results/soak"))
    over = sub.add_parser("overload", help="more clients than the queue holds")
    over.add_argument("--artifacts", type=Path, required=True)
    over.add_argument("--backend", default="onnxruntime")
    over.add_argument("--max-queue", type=int, default=4)
    over.add_argument("--clients", type=int, default=16)
    over.add_argument("--duration", type=float, default=60.0)
    over.add_argument("--out", type=Path, default=Path("bench-results/overload"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "soak":
        if args.requests < 200:
            raise InputError("--requests must be at least 200: memory is compared over the first and last 100")
        results = [
            soak_backend(args.artifacts, b, args.requests, args.clients, args.cancel_every) for b in args.backends
        ]
        chart(results, args.out / "soak.png")
        report = {"machine": machine(), "soak": results}
        for r in results:
            print(
                f"{r['backend']}: {r['requests']} requests ({r['cancelled']} abandoned) in {r['seconds']:.0f} s, "
                f"{len(r['failures'])} failed; memory {r['rss_first_100_mib']:.0f} -> {r['rss_last_100_mib']:.0f} "
                f"MiB ({r['rss_growth']:+.1%}); threads {r['first_100']['threads']} -> {r['at_end']['threads']}, "
                f"fds {r['first_100']['fds']} -> {r['at_end']['fds']} (most over the first 100, at the end)"
            )
    else:
        results = [overload(args.artifacts, args.backend, args.max_queue, args.clients, args.duration, args.out)]
        report = {"machine": machine(), "overload": results[0]}
        r, load = results[0], results[0]["load"]
        print(
            f"{r['clients']} clients, queue {r['max_queue']}, {r['duration_s']:.0f} s: {load['statuses']}, "
            f"slowest answer {load['max_ms']:.0f} ms; /health median {r['health_median_ms']:.1f} ms, max "
            f"{r['health_max_ms']:.1f} ms over {r['health_probes']} probes"
        )
    for r in results:
        for check, ok in r["checks"].items():
            print(f"  {'ok  ' if ok else 'FAIL'} {check}")
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
