"""turbo-serve against Ray Serve replicas under the same load: all servers up at once, loaded in turn, round after
round (the order reversed every other round), so that whatever else the machine does falls on each alike.

    python -m benchmarks.serve_compare --artifacts artifacts/sd-turbo-fast --backend openvino --cpus 2 \\
        --users 1 4 --duration 40 --rounds 3 --out bench-results/serve-ray

Servers: turbo-serve with --cpus threads; --ray with 1 replica of --cpus CPUs and threads; --ray with 2 replicas of
half as many each (the same CPUs split between two engines). Each slice is one locust run of
benchmarks/serve_bench.py; p50 and p95 come from every response time, images/s is every slice's requests over
locust's elapsed time for them. Results: results.json and results.md in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.bench import machine
from benchmarks.serve_bench import ServeBenchConfig, locust, served
from turbo_runtime.cli import cli_errors
from turbo_runtime.errors import InputError


def subjects(base: ServeBenchConfig, cpus: int) -> dict[str, ServeBenchConfig]:
    half = max(1, cpus // 2)
    return {
        f"turbo-serve, {cpus} threads": replace(base, threads=cpus),
        f"Ray Serve, 1 replica of {cpus} CPUs": replace(base, threads=cpus, ray=True, replicas=1, replica_cpus=cpus),
        f"Ray Serve, 2 replicas of {half} CPU{'s' if half > 1 else ''}": replace(
            base, threads=half, ray=True, replicas=2, replica_cpus=half
        ),
    }


def run(base: ServeBenchConfig, cpus: int, rounds: int, settle: float = 15.0) -> dict:
    base.out.mkdir(parents=True, exist_ok=True)
    configs = subjects(base, cpus)
    slices: list[dict] = []
    with ExitStack() as stack:
        urls = {name: stack.enter_context(served(config)) for name, config in configs.items()}
        time.sleep(settle)  # start-up work (Ray's, the compile caches' writes) out of the first slice
        names = list(configs)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                for users in base.users:
                    prefix = base.out / f"s{names.index(name)}-r{r}-u{users}"
                    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else ""
                    row = locust(urls[name], users, base.duration, prefix)
                    slices.append({"subject": name, "round": r, "loadavg_1min": load, **row})
    summary = []
    for si, name in enumerate(names):
        for users in base.users:
            rows = [s for s in slices if s["subject"] == name and s["users"] == users]
            times = np.concatenate(
                [np.loadtxt(base.out / f"s{si}-r{s['round']}-u{users}_times.txt", ndmin=1) for s in rows]
            )
            p50, p95 = np.percentile(times, [50, 95])
            requests = sum(s["requests"] for s in rows)
            summary.append({
                "subject": name, "users": users, "requests": requests, "failures": sum(s["failures"] for s in rows),
                # locust's own elapsed time per slice (requests / its rate), not the nominal duration
                "images_per_s": requests / sum(s["requests"] / s["requests_per_s"] for s in rows if s["requests"]),
                "p50_ms": float(p50), "p95_ms": float(p95),
                "images_per_s_by_round": [s["requests_per_s"] for s in rows],
            })  # fmt: skip
    results = {"machine": machine(), "cpus": cpus, "rounds": rounds, "duration_s": base.duration}
    results |= {"artifacts": str(base.artifacts), "backend": base.backend, "summary": summary, "slices": slices}
    (base.out / "results.json").write_text(json.dumps(results, indent=2))
    (base.out / "results.md").write_text(table(results))
    return results


def table(results: dict) -> str:
    lines = [
        "| server | clients | images/s | p50 | p95 | failed | images/s by round |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        by_round = " / ".join(f"{x:.2f}" for x in s["images_per_s_by_round"])
        lines.append(
            f"| {s['subject']} | {s['users']} | {s['images_per_s']:.2f} | {s['p50_ms']:.0f} ms | {s['p95_ms']:.0f} ms "
            f"| {s['failures']} of {s['requests']} | {by_round} |"
        )
    return "\n".join(lines) + "\n"


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--artifacts", type=Path, required=True, help="folder written by turbo-export")
    p.add_argument("--backend", default="openvino")
    p.add_argument("--device")
    p.add_argument("--cpus", type=int, default=2, help="CPUs for each server, split between 2 replicas (default 2)")
    p.add_argument("--users", type=int, nargs="+", default=[1, 4], help="concurrent clients, one slice each")
    p.add_argument("--duration", type=float, default=40.0, help="seconds per slice (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the servers (default 3)")
    p.add_argument("--out", type=Path, default=Path("bench-results/serve-ray"))
    args = p.parse_args(argv)
    if min(args.users) < 1 or args.duration <= 0 or args.rounds < 1 or args.cpus < 1:
        raise InputError("--users, --rounds and --cpus must be at least 1, --duration above 0")
    base = ServeBenchConfig(
        args.artifacts, args.backend, args.device, users=tuple(args.users), duration=args.duration, calls=0,
        frames=0, out=args.out,
    )  # fmt: skip
    print(table(run(base, args.cpus, args.rounds)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
