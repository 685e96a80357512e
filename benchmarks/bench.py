"""turbo-bench: per-stage latency, start-up, memory and accuracy of each backend (and peers), in one run.

Each subject runs in its own worker process (benchmarks/worker.py). Workers are started side by side and their
runs interleaved, so drift of the machine hits all of them alike; when memory cannot hold the next worker
beside the ones running (judged by their peak resident memory), the running group is measured and closed first
(the JSON records the groups). A worker that dies (killed, e.g. by the kernel's OOM killer, or exits) marks its
subject failed with the reason; the others are measured and written as usual.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks.flops import matmul_peak, per_stage, stage_flops
from turbo_runtime.cli import cli_errors, setup_logging
from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.errors import InputError, TurboError
from turbo_runtime.spec import FORMATS

BACKENDS = ("torch", "onnxruntime", "openvino")
PEERS = ("diffusers", "optimum-intel", "optimum-onnx")
PROMPT = "a photograph of an astronaut riding a horse"
# Peers with their own environment: a script in benchmarks/peers/ that speaks the worker protocol (--serve).
_PEER_SCRIPTS = {
    name: Path(__file__).resolve().parent / "peers" / f"{name.replace('-', '_')}_bench.py"
    for name in ("optimum-intel", "optimum-onnx")
}


@dataclass(frozen=True)
class BenchConfig:
    model: str
    backends: tuple[str, ...] = BACKENDS
    peers: tuple[str, ...] = ()
    peer_python: tuple[tuple[str, str], ...] = ()  # (peer, python of its own environment); default: its cache env
    peer_setup: bool = True  # create a missing peer environment (benchmarks/peers/setup.py); False: skip that peer
    dtype: str | None = None
    precision: str = "fp32"
    steps: int | None = None  # None: the model family's default
    guidance_scale: float | None = None  # None: the family's default (classifier-free guidance above 1)
    unet_batch: int = 1  # 2: artifacts whose UNet takes both guidance branches in one call
    vae: str | None = None  # a tiny VAE instead of the model's ("tiny", or a replica, hub id, folder)
    runs: int = 5
    warmup: int = 1
    threads: int | None = None
    height: int | None = None  # None: the family's default size
    width: int | None = None
    seed: int = 0
    prompt: str = PROMPT
    out: Path = Path("bench-results")
    quiet: bool = False


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) * 1024


def _proc_status(pid: int, field: str) -> int:
    """A size from /proc/PID/status in bytes ("VmRSS": resident now, "VmHWM": peak resident); 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# A worker's peak varies from start to start (compilation, allocator, page cache): this much on top of each.
MEMORY_MARGIN = 0.15


def fits_beside(running_peaks: Sequence[int], largest_peak: int, budget: float) -> bool:
    """Whether one more worker fits beside running workers with these peak resident sizes, in `budget` bytes.

    Peaks, not what the workers hold now: an engine may give memory back once compiled (OpenVINO drops the
    weights' mapped pages), so a group that looks small after its warm-up grows again as it runs. Summing the
    peaks errs on the safe side (one worker computes at a time), and a group too many costs minutes where a
    worker killed by the OOM killer costs its figures. The next worker's own peak is unknown until it has run;
    `largest_peak`, the largest seen so far in this bench, stands in for it: every subject runs the same model,
    so they differ by their engine's copies and buffers, and the largest of them is the safe guess.
    An empty group always fits: a worker too large for the machine runs alone."""
    if not running_peaks:
        return True
    return (sum(running_peaks) + largest_peak) * (1 + MEMORY_MARGIN) <= budget


class WorkerFailed(TurboError):
    """A worker died, exited or closed its pipe before answering: its subject fails, the others go on."""

    exit_code = 1


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown signal"
    # SIGKILL is what the kernel's OOM killer sends; nothing else in a benchmark sends it unasked.
    likely = "; likely the kernel's OOM killer" if -code == signal.SIGKILL else ""
    return f"exited with signal {-code} ({name}{likely})"


class Worker:
    """A subject's process; its start-up is measured from spawn to its "ready" line.

    Each call names the phase it is in ("start-up", "run 3", …): when the process turns out to be gone, the
    WorkerFailed raised says how it ended and in which phase."""

    def __init__(self, subject: str, cmd: list[str], phase: str = "start-up"):
        self.subject = subject
        self.phase = phase
        t0 = time.perf_counter()
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        ready = self._read("ready")
        self.startup_s = time.perf_counter() - t0
        self.load_s, self.precision = ready["load_s"], ready["precision"]

    def _failed(self, what: str | None = None) -> WorkerFailed:
        """End the process, which may only have closed its pipe, and say what happened to it."""
        if what is None:
            try:
                what = _exit_reason(self.proc.wait(timeout=10))
            except subprocess.TimeoutExpired:
                what = "closed its output and was stopped"
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # unsent input to a dead process: a broken pipe, nothing to report
                pipe.close()
        return WorkerFailed(f"worker {what} during {self.phase}")

    def _send(self, cmd: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError:  # BrokenPipeError: the process has gone
            raise self._failed() from None

    def _read(self, event: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise self._failed()
        try:
            msg = json.loads(line)
        except ValueError:
            msg = {}
        if not isinstance(msg, dict) or msg.get("event") != event:
            raise self._failed(f"sent {line.strip()[:100]!r} instead of its {event!r} line")
        return msg

    def run(self, phase: str, save: Path | None = None) -> dict:
        self.phase = phase
        self._send({"cmd": "run", "save": str(save) if save else None})
        return self._read("run")

    def close(self) -> int:
        self.phase = "close"
        self._send({"cmd": "quit"})
        peak = self._read("exit")["peak_rss_bytes"]
        self.proc.wait()
        return peak


def _to_first_unet(startup_s: float, first_run: dict) -> float:
    """Seconds from a worker's spawn to the end of its first UNet call: start-up, then the first run's text
    encoding and first UNet step (the two run back to back at the start of a run)."""
    return startup_s + first_run["stages"]["text_encoder"] + first_run["stages"]["unet"][0]


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def compare_images(image: np.ndarray, reference: np.ndarray) -> dict:
    """Max absolute difference (0-255 scale) and PSNR (dB) of uint8 images."""
    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(diff**2))
    return {"max_abs": float(np.abs(diff).max()), "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)}


def machine() -> dict:
    """Where the figures were measured; `cpu_class` is the class the automatic choice reads (turbo_runtime.cpu)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    info["cpu_class"] = detect_cpu().name
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
        flags = next(line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags"))
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni")))
        info["memory_bytes"] = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        pass
    versions = {}
    for dist in ("turbo-runtime", "torch", "diffusers", "transformers", "onnxruntime", "openvino", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def peer_pythons(
    peers: Sequence[str], given: dict[str, str], setup: bool, quiet: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """Each peer's interpreter: given with --peer-python, else its environment in the cache, made on first use
    (announced first: it downloads several GB) unless `setup` is off. Returns (peer -> python, peer -> why
    skipped)."""
    from benchmarks.peers import setup as peer_envs

    pythons, skipped = {}, {}
    for peer in peers:
        if peer in given:
            pythons[peer] = given[peer]
            continue
        python = peer_envs.ready(peer)
        if python is None and not setup:
            skipped[peer] = (
                f"its environment {peer_envs.env_dir(peer)} does not exist: create it with "
                f"`{peer_envs.command(peer)}`, or pass --peer-python {peer}=PYTHON"
            )
            continue
        if python is None:
            print(
                f"turbo-bench: {peer} needs an environment of its own; creating {peer_envs.env_dir(peer)} from "
                f"benchmarks/peers/{peer_envs.PEERS[peer][0]} (several GB, once; --peer-python {peer}=PYTHON uses "
                "another, --no-peer-setup skips the peer)",
                file=sys.stderr,
                flush=True,
            )
            try:
                python = peer_envs.create(peer, quiet=quiet)
            except peer_envs.SetupFailed as e:
                skipped[peer] = str(e)
                continue
        pythons[peer] = str(python)
    return pythons, skipped


def _run_group(group: list[Worker], config: BenchConfig, images: Path, raw: dict, failed: dict, bar) -> None:
    """The group's measured runs, then each worker closed; a worker that fails leaves the group, noted in `failed`."""
    running = list(group)
    for r in range(config.runs):
        for w in list(running):  # interleaved: run r of every subject before run r + 1 of any
            save = images / f"{w.subject}.npy" if r == config.runs - 1 else None
            try:
                raw[w.subject]["runs"].append(w.run(f"run {r + 1}", save))
            except WorkerFailed as e:
                failed[w.subject] = str(e)
                running.remove(w)
            bar.update(1)
    for w in running:
        try:
            raw[w.subject]["peak_rss_bytes"] = w.close()
        except WorkerFailed as e:
            failed[w.subject] = str(e)


def add_throughput(results: dict, flops: dict[str, int], peaks: dict[str, float], unet_calls: int = 1) -> None:
    """Each subject's achieved TFLOP/s per stage, and its fraction of the probe's peak for its precision.

    `unet_calls`: UNet evaluations per denoising step (2 with classifier-free guidance). A subject that decodes
    with another VAE than the artifacts' (`own_vae`) gets no VAE decode rate."""
    if not flops:
        return
    totals = per_stage(flops)
    totals["unet"] *= unet_calls
    for r in results.values():
        peak = peaks["bfloat16" if "bf16" in r["precision"] else "float32"]
        r["throughput"] = {}
        for stage, timing in (
            ("text_encoder", "text_encoder_s"),
            ("unet", "unet_step_s"),
            ("vae_decoder", "vae_decoder_s"),
        ):
            if stage == "vae_decoder" and r.get("own_vae"):
                continue
            achieved = totals[stage] / r[timing]["median"] / 1e12
            r["throughput"][stage] = {"tflops": achieved, "fraction_of_peak": achieved / peak}


def _worker_cmd(
    subject: str, dtype: str | None, config: BenchConfig, artifacts: Path, source: Path, latents: Path, out: Path
) -> list[str]:
    """Command line of a subject's worker: ours (benchmarks/worker.py) or a peer script's serve mode."""
    common = ["--prompt", config.prompt, "--steps", str(config.steps)]
    common += ["--threads", str(config.threads)] if config.threads else []
    if subject in _PEER_SCRIPTS:
        python = dict(config.peer_python)[subject]
        export_dir = out / "peers" / f"{subject}-export"
        size = ["--height", str(config.height), "--width", str(config.width)]
        precision = ["--precision", "f32" if dtype == "float32" else "default"]
        return [python, str(_PEER_SCRIPTS[subject]), "--serve", "--model", str(source), "--ir-dir", str(export_dir),
                "--latents", str(latents), *size, *precision, *common]  # fmt: skip
    name = "torch" if subject == "torch-reference" else subject
    cmd = [sys.executable, "-m", "benchmarks.worker", "--subject", name, "--artifacts", str(artifacts),
           "--seed", str(config.seed), "--cache-dir", str(out / "compile-cache"),
           "--guidance-scale", str(config.guidance_scale), *common]  # fmt: skip
    return cmd + (["--dtype", dtype] if dtype else [])


def run_bench(config: BenchConfig) -> dict:
    from tqdm import tqdm

    from export.exporter import ExportConfig, export_model
    from export.sources import resolve
    from turbo_runtime.artifacts import Artifacts
    from turbo_runtime.sampler import NoiseSource

    for name in config.backends:
        if name not in BACKENDS:
            raise InputError(f"unknown backend {name!r}; choose from: {', '.join(BACKENDS)}")
    for name in config.peers:
        if name not in PEERS:
            raise InputError(f"unknown peer {name!r}; choose from: {', '.join(PEERS)}")
    out = config.out.resolve()
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if config.precision == "int8-hybrid" and "onnxruntime" in config.backends:
        raise InputError(f"--precision {config.precision} is exported for OpenVINO only: leave out onnxruntime")
    from turbo_runtime.backends import backend_class

    # The formats the backends read (the torch reference reads the source model); OpenVINO when none does.
    formats = tuple(f for f in FORMATS if f in {backend_class(b).artifact_format for b in config.backends})
    artifacts = export_model(
        ExportConfig(
            config.model,
            formats=formats or ("openvino",),
            precision=config.precision,
            height=config.height,
            width=config.width,
            unet_batch=config.unet_batch,
            vae=config.vae,
            quiet=config.quiet,
        )
    )
    export_s = time.perf_counter() - t0
    art = Artifacts.load(artifacts)
    family = art.family
    config = replace(
        config,
        height=art.height,
        width=art.width,
        steps=config.steps or family.default_steps,
        guidance_scale=family.default_guidance if config.guidance_scale is None else config.guidance_scale,
    )
    latents = out / "latents.npy"
    np.save(latents, NoiseSource(config.seed).normal(art.latent_shape))

    source = resolve(art.model_id).path
    subjects = [(b, config.dtype) for b in config.backends]
    subjects += [("diffusers", None)] * ("diffusers" in config.peers)
    skipped = {}
    wanted = [p for p in _PEER_SCRIPTS if p in config.peers]
    if family.guided:
        skipped.update({p: f"its script runs turbo models (no guidance), not {family.name}" for p in wanted})
        wanted = []
    pythons, unavailable = peer_pythons(wanted, dict(config.peer_python), config.peer_setup, config.quiet)
    skipped.update(unavailable)
    subjects += [(peer, config.dtype) for peer in pythons]
    config = replace(config, peer_python=tuple(pythons.items()))  # results.json records the interpreters used
    reference_in_runs = ("torch", config.dtype) in subjects and config.dtype in (None, "float32")
    if not reference_in_runs:
        subjects.append(("torch-reference", "float32"))
    cmds = {s: _worker_cmd(s, d, config, artifacts, source, latents, out) for s, d in subjects}
    shutil.rmtree(out / "compile-cache", ignore_errors=True)  # the first starts are cold
    failed: dict[str, str] = {}  # subject -> why its worker failed; its partial figures stay in raw
    largest_peak = 0  # the largest peak resident memory of a worker so far: the guess for the next one
    for peer in sorted(set(cmds) & set(_PEER_SCRIPTS)):  # a peer's first start exports its model: not timed
        try:
            largest_peak = max(largest_peak, Worker(peer, cmds[peer], "its first start (model export)").close())
        except WorkerFailed as e:
            failed[peer] = str(e)

    raw: dict[str, dict] = {}
    groups: list[list[str]] = []
    total = len(subjects) * (config.runs + config.warmup)
    with tqdm(total=total, desc="bench", unit="run", disable=config.quiet) as bar:
        group: list[Worker] = []
        for subject, _ in subjects:
            if subject in failed:
                continue
            # Peaks after the warm-up runs (see fits_beside); the bench process itself stays beside the group, and
            # a tenth of the machine is left to the kernel and the page cache.
            peaks = [_proc_status(w.proc.pid, "VmHWM") for w in group]
            largest_peak = max([largest_peak, *peaks])
            budget = 0.9 * _mem_total() - _proc_status(os.getpid(), "VmRSS")
            if not fits_beside(peaks, largest_peak, budget):
                groups.append([w.subject for w in group])
                _run_group(group, config, images, raw, failed, bar)
                group = []
            bar.set_description(f"starting {subject}")
            try:
                w = Worker(subject, cmds[subject])
                raw[subject] = {"startup_cold_s": w.startup_s, "load_s": w.load_s, "precision": w.precision, "runs": []}
                for i in range(config.warmup):  # warm-up runs also bring the worker to its working size
                    run = w.run(f"warm-up run {i + 1}")
                    if i == 0:
                        raw[subject]["first_unet_cold_s"] = _to_first_unet(w.startup_s, run)
                    bar.update(1)
            except WorkerFailed as e:
                failed[subject] = str(e)
                continue
            group.append(w)
            bar.set_description("bench")
        if group:
            groups.append([w.subject for w in group])
            _run_group(group, config, images, raw, failed, bar)
    for subject, _ in subjects:  # second start: OS file cache and OpenVINO compile caches warm
        if subject in failed:
            continue
        try:
            w = Worker(subject, cmds[subject], "warm start-up")
            raw[subject]["startup_warm_s"] = w.startup_s
            raw[subject]["load_warm_s"] = w.load_s
            raw[subject]["first_unet_warm_s"] = _to_first_unet(w.startup_s, w.run("the run after the warm start-up"))
            # This worker loaded the compiled models from the caches instead of compiling them: its peak is a
            # warm start's, where the first worker's includes compiling.
            raw[subject]["peak_rss_warm_bytes"] = w.close()
        except WorkerFailed as e:
            failed[subject] = str(e)
    for subject, entry in raw.items():  # without warm-up runs, the first measured run was the first after start-up
        if subject not in failed and "first_unet_cold_s" not in entry:
            entry["first_unet_cold_s"] = _to_first_unet(entry["startup_cold_s"], entry["runs"][0])

    ref_name = "torch" if reference_in_runs else "torch-reference"
    # A failed reference gives no accuracy: its image may be missing, or stale from an earlier bench in --out
    reference = None if ref_name in failed else np.load(images / f"{ref_name}.npy")
    # The peers of their own environments decode with the model's VAE: beside a tiny one, their VAE decode time
    # and their image do not compare with the others'.
    own_vae = set(_PEER_SCRIPTS) if art.manifest.get("vae") else set()
    results = {}
    for subject, entry in raw.items():
        if subject in failed:
            continue
        runs = entry["runs"]
        image = np.load(images / f"{subject}.npy")
        unet_steps = [s for run in runs for s in run["stages"]["unet"]]
        results[subject] = {
            "kind": "peer" if subject in PEERS else "reference" if subject == "torch-reference" else "backend",
            "precision": entry["precision"],
            "end_to_end_s": _summary([r["e2e_s"] for r in runs]),
            "text_encoder_s": _summary([r["stages"]["text_encoder"] for r in runs]),
            "unet_step_s": _summary(unet_steps),
            "vae_decoder_s": _summary([r["stages"]["vae_decoder"] for r in runs]),
            "startup_cold_s": entry["startup_cold_s"],
            "startup_warm_s": entry["startup_warm_s"],
            "first_unet_cold_s": entry["first_unet_cold_s"],
            "first_unet_warm_s": entry["first_unet_warm_s"],
            "load_cold_s": entry["load_s"],
            "load_warm_s": entry["load_warm_s"],
            "peak_rss_bytes": entry["peak_rss_bytes"],
            "peak_rss_warm_bytes": entry["peak_rss_warm_bytes"],
            "accuracy_vs_torch_fp32": None
            if reference is None or subject in own_vae
            else compare_images(image, reference),
        }
        if subject in own_vae:
            results[subject]["own_vae"] = True
    flops = stage_flops(artifacts, art.manifest)
    peaks = matmul_peak(config.threads)
    # UNet calls per step: two with guidance, unless the UNet was exported to take both branches at once
    unet_calls = 2 if config.guidance_scale > 1 and config.unet_batch == 1 else 1
    add_throughput(results, flops, peaks, unet_calls)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": {**asdict(config), "out": str(out)},
        "machine": machine(),
        "artifacts": str(artifacts),
        "export_s": export_s,
        "flops": flops,
        "matmul_peak_tflops": peaks,
        "groups": groups,
        "raw": raw,
        "results": results,
        "skipped": skipped,
        "failed": failed,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks.report import write_reports

    write_reports(report, out)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turbo-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 when every subject was measured; 1 when a subject's worker failed (died, was killed,\n"
        'e.g. by the OOM killer, or exited): its reason is in results.json under "failed" and in the table, and the\n'
        "other subjects are measured and written as usual; 2 for bad input.",
    )
    p.add_argument(
        "--model", required=True, help="anything turbo-export accepts (sd-turbo-arch: full size, no download)"
    )
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), metavar="B")
    p.add_argument("--peers", nargs="*", default=[], metavar="P", help=f"any of: {', '.join(PEERS)}")
    p.add_argument(
        "--peer-python",
        nargs="*",
        default=[],
        metavar="PEER=PYTHON",
        help="interpreter of a peer's own environment (default: the one benchmarks/peers/setup.py makes in the cache "
        "folder, made on first use)",
    )
    p.add_argument(
        "--no-peer-setup",
        action="store_true",
        help="skip a peer whose environment does not exist yet instead of creating it",
    )
    p.add_argument("--dtype", help="inference precision for every backend (default: each backend's best)")
    p.add_argument("--precision", default="fp32", help="export precision of the artifacts")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the model's)")
    p.add_argument("--unet-batch", type=int, default=1, help="export the UNet at batch 2 (guidance in one call)")
    p.add_argument("--vae", help="a tiny VAE instead of the model's: 'tiny' (TAESD / TAESDXL), replica, hub id")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int)
    p.add_argument("--height", type=int, help="default: the model's size")
    p.add_argument("--width", type=int, help="default: the model's size")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--quiet", action="store_true")
    return p


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(False, args.quiet)
    if args.runs < 1 or args.warmup < 0:
        raise InputError("--runs must be at least 1 and --warmup at least 0")
    pairs = tuple(tuple(item.split("=", 1)) for item in args.peer_python)
    if any(len(pair) != 2 or pair[0] not in _PEER_SCRIPTS for pair in pairs):
        raise InputError(f"--peer-python takes PEER=PYTHON with PEER one of: {', '.join(_PEER_SCRIPTS)}")
    config = BenchConfig(
        args.model,
        backends=tuple(args.backends),
        peers=tuple(args.peers),
        peer_python=pairs,
        peer_setup=not args.no_peer_setup,
        dtype=args.dtype,
        precision=args.precision,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        unet_batch=args.unet_batch,
        vae=args.vae,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        height=args.height,
        width=args.width,
        out=args.out,
        quiet=args.quiet,
    )
    report = run_bench(config)
    print((config.out / "results.md").read_text())
    for subject, why in report["failed"].items():
        print(f"failed: {subject}: {why}", file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
