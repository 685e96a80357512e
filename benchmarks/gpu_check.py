"""The GPU check of the torch backend: parity on the GPU, then SD-Turbo and SDXL-Turbo timed there, in one run.

    benchmarks/gpu_wheels.sh                                   # with network: the wheels to carry, in .gpu-wheels/
    python3 benchmarks/gpu_check.py OUT                        # on the GPU machine: within 8 minutes
    python3 benchmarks/gpu_check.py OUT --device cpu --quick   # every path a CPU has, on tiny-sd-turbo: seconds

Phases, each in a process of its own under a time budget of its own, all within --budget:

  setup          installs from .gpu-wheels/ what this Python lacks (pip --no-index --no-deps); versions, the GPU
  parity         the torch backend's parity tests on the device (tests/test_parity.py -k torch --torch-device):
                 float32 against diffusers on the same device, max |diff| <= 1e-3; float16 drift as PSNR
  prepare        beside parity: the full-size random-weight replicas (export/replicas.py) built and exported
  MODEL/eager    end to end (prompt -> uint8 image), 512x512, 1 step, median of --runs after --warmup calls:
                 float32, then float16 eager, channels-last and CUDA graphs (bfloat16 on a CPU)
  MODEL/compile-MODE   the same with torch.compile (reduce-overhead, then default, while time is left)

Every variant's image is compared with float32's on the same latents (PSNR); the best variant is the fastest within
the full-quality bound (40 dB). Only the standard library is imported at the top: setup runs before the packages
are there. OUT receives two files: gpu-check.json, rewritten every few seconds with what the running phase has
measured so far, and gpu-check.log, the end of each phase's output; so a phase out of time, or a run cut short,
leaves what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "gpu-check.json"
LOG = "gpu-check.log"
SCHEMA = 1
PROMPT = "a cinematic photo of a lighthouse at dusk"
SEED = 1
FULL_QUALITY_PSNR_DB = 40.0  # turbo_runtime.auto's bound (not imported here: this module starts without packages)
TARGETS = {
    "sd-turbo-arch": {"e2e_ms": 25.0, "gpu": "H200"},
    "sdxl-turbo-arch": {"e2e_ms": 60.0, "gpu": "H200"},
    "fp16_psnr_db": FULL_QUALITY_PSNR_DB,
}
ANCHORS = [
    {"what": "SDXL-Turbo, 512x512, 1 step, float16, diffusers", "gpu": "A100", "e2e_ms": 207, "by": "Stability AI"},
    {"what": "SD-Turbo and SDXL-Turbo, ONNX Runtime CUDA", "gpu": "A100", "e2e_ms": [39, 44], "by": "ONNX Runtime"},
]
FULL_MODELS = (("sd-turbo-arch", 512), ("sdxl-turbo-arch", 512))
QUICK_MODELS = (("tiny-sd-turbo", 128),)
COMPILE_MODES = ("reduce-overhead", "default")  # the likeliest win first; max-autotune tunes for longer than this run
# Seconds per phase; MODEL phases per model. A phase also ends at the run's deadline (--budget).
BUDGETS = {
    "setup": 120,
    "parity": 150,
    "prepare": 300,
    "eager": {"sd-turbo-arch": 90, "sdxl-turbo-arch": 150},
    "compile": {"sd-turbo-arch": 150, "sdxl-turbo-arch": 210},
}
QUICK_BUDGETS = {"setup": 30, "parity": 90, "prepare": 90, "eager": 60, "compile": 60}
QUICK_PARITY = (  # one float32 parity test and the drift test, of the full set that `-k torch` selects
    "tests/test_parity.py::test_text_to_image_equals_diffusers[1-sd-turbo-torch]",
    "tests/test_parity.py::test_torch_low_precision_drift[sd-turbo]",
)
# torch.compile of tiny-sd-turbo's four components took 125 s on 2 CPU cores, past the quick run's budget.
CPU_COMPILE_NOTE = "skipped on the CPU in --quick: torch.compile of the four components takes about 2 minutes there"
VERSIONS = ("torch", "diffusers", "transformers", "huggingface-hub", "safetensors", "tokenizers", "numpy", "pillow")
MIN_PHASE_S = 5.0  # a phase is not started with less time left


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Replace `path` in one step, so a reader (or a kill) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


# -- setup: the carried wheels ------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_key(version: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (-1, 0, p) for p in re.split(r"[.+-]", version))


def carried_wheels(folder: Path, python_tag: str, machine: str) -> dict[str, list[tuple[str, Path]]]:
    """Distribution -> [(version, wheel)], newest first: the wheels in `folder` this Python can install."""
    found: dict[str, list[tuple[str, Path]]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        parts = wheel.name[: -len(".whl")].split("-")
        if len(parts) < 5:
            continue
        name, version, py, plat = parts[0], parts[1], parts[-3], parts[-1]
        if not ({"py3", python_tag} & set(py.split(".")) and (plat == "any" or plat.endswith(machine))):
            continue
        found.setdefault(normalize(name), []).append((version, wheel))
    for versions in found.values():
        versions.sort(key=lambda v: _version_key(v[0]), reverse=True)
    return found


def install_plan(
    carried: dict[str, list[tuple[str, Path]]], installed: Callable[[str], str | None]
) -> tuple[list[Path], dict[str, str]]:
    """What to install (the newest carried wheel of each distribution this Python lacks), and what is there already
    (kept: the preinstalled PyTorch stack is the machine's, whatever the carried versions)."""
    to_install, present = [], {}
    for dist, versions in sorted(carried.items()):
        version = installed(dist)
        if version is None:
            to_install.append(versions[0][1])
        else:
            present[dist] = version
    return to_install, present


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pip(*args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def _imports_ok(code: str, env: dict) -> str | None:
    """None if `code` runs in a fresh interpreter, else its last line of error."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1][:300]


def install_wheels(folder: Path, env: dict, log: Path) -> dict:
    """Install what this Python lacks from `folder`; if the newest diffusers carried does not import with the
    preinstalled huggingface_hub or transformers, fall back to an older one carried."""
    info: dict = {"wheels": str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)}
    if not folder.is_dir():
        info["note"] = "no wheels folder: nothing installed"
        return info
    python_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    carried = carried_wheels(folder, python_tag, platform.machine())
    to_install, present = install_plan(carried, installed_version)
    info.update(preinstalled=present, installed=[w.name for w in to_install])
    lines = []
    if to_install:
        rc, output = _pip("--find-links", str(folder), *map(str, to_install))
        lines.append(output)
        if rc:
            info["error"] = f"pip install exited with {rc}: {output.splitlines()[-1] if output else ''}"
    check = "import diffusers; from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline"
    error = _imports_ok(check, env)
    older = [w for _, w in carried.get("diffusers", [])[1:]]
    if error and "diffusers" not in present and older:
        lines.append(f"diffusers does not import ({error}); trying {older[0].name}")
        rc, output = _pip("--force-reinstall", str(older[0]))
        lines.append(output)
        info["diffusers_fallback"] = {"newest_error": error, "installed": older[0].name}
        error = _imports_ok(check, env)
    if error:
        info["diffusers_error"] = error
    log.write_text("\n".join(lines) + "\n")
    return info


# -- child phases (run with the packages installed) ---------------------------------------------------------------


def probe(args) -> None:
    """Versions, the interpreter and the GPU, as this process sees them."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count()}
    info["versions"] = {d: installed_version(d) for d in (*VERSIONS, "onnxruntime", "onnxruntime-gpu", "pytest")}
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        # What float32 computes in on the GPU: TF32 convolutions are PyTorch's default, TF32 matmuls are not.
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    except Exception as e:  # a broken install is what this phase is here to report
        info["torch_error"] = first_line(e)
    write_json(Path(args.result), info)


def prepare(args) -> None:
    """Build the replicas and export them for the torch backend (no graphs: it reads the source model)."""
    import torch

    from export.exporter import ExportConfig, export_model

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # leaves cores to the parity tests beside it
    start = time.perf_counter()
    done: dict = {"models": {}}
    for model, size in args.models:
        t0 = time.perf_counter()
        config = ExportConfig(model, formats=(), precision="fp32", height=size, width=size, quiet=True)
        try:
            path = export_model(config)
            done["models"][model] = {"artifacts": str(path), "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:
            traceback.print_exc()
            done["models"][model] = {"error": first_line(e), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{model}: {done['models'][model]}", flush=True)
        done["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_json(Path(args.result), done)


def variant_options(name: str, channels_last_pays: bool) -> dict:
    """fp32-eager, fp16-channels-last, bf16-cuda-graphs, fp16-compile-reduce-overhead ... as backend options; CUDA
    graphs and compiled modules take channels-last where it paid in eager mode."""
    precision, _, how = name.partition("-")
    options: dict = {"dtype": {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]}
    if how == "channels-last":
        options["channels_last"] = True
    elif how == "cuda-graphs":
        options.update(cuda_graphs=True, channels_last=channels_last_pays)
    elif how.startswith("compile-"):
        options.update(compile_mode=how[len("compile-") :], channels_last=channels_last_pays)
    elif how != "eager":
        raise ValueError(f"unknown variant {name!r}")
    return options


def compare_images(image, reference) -> dict:
    """turbo-bench's comparison of uint8 images, the PSNR rounded and None for equal images (JSON has no infinity)."""
    from benchmarks.bench import compare_images as bench_compare

    compared = bench_compare(image, reference)
    psnr = compared["psnr_db"]
    return {"max_abs": compared["max_abs"], "psnr_db": None if psnr == float("inf") else round(psnr, 2)}


def _summary_ms(values: list[float]) -> dict:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median * 1e3, 3), "min": round(ordered[0] * 1e3, 3), "max": round(ordered[-1] * 1e3, 3)}


def measure(args) -> None:
    """Time each variant end to end on the model's artifacts; results written after each one."""
    import gc

    import numpy as np
    import torch

    from turbo_runtime.pipeline import TurboPipeline

    result_path, scratch = Path(args.result), Path(args.scratch)
    reference_path = scratch / f"{args.model}-fp32.npy"
    cuda = args.device.startswith("cuda")
    result: dict = {"model": args.model, "device": args.device, "runs": args.runs, "warmup": args.warmup}
    result["variants"] = variants = {}

    def generate(pipe):
        t0 = time.perf_counter()
        out = pipe(PROMPT, num_inference_steps=1, seed=SEED, output_type="np", watermark=False)
        pixels = (out.images * 255).round().astype(np.uint8)
        return time.perf_counter() - t0, out.timings, pixels

    for name in args.variants.split(","):
        options = variant_options(name, args.channels_last_pays)
        entry = variants[name] = {"options": options, "status": "running"}
        write_json(result_path, result)
        pipe = None
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            # Text-to-image only, as turbo-bench loads its subjects: no VAE encoder to load, compile or capture.
            pipe = TurboPipeline.from_artifacts(
                args.artifacts, "torch", device=args.device, vae_encoder=False, **options
            )
            entry["load_s"] = round(time.perf_counter() - t0, 2)  # with compile, capture and warm-up calls
            entry["precision"] = pipe.backend.inference_precision
            first_s, _, first = generate(pipe)
            entry["first_call_ms"] = round(first_s * 1e3, 3)
            for _ in range(args.warmup):
                generate(pipe)
            e2e, stages = [], {"text_encoder": [], "unet": [], "vae_decoder": []}
            for _ in range(args.runs):
                seconds, timings, image = generate(pipe)
                e2e.append(seconds)
                for stage in stages:
                    stages[stage].append(sum(timings[stage]) if stage == "unet" else timings[stage])
            entry["e2e_ms"] = _summary_ms(e2e)
            entry["stages_ms"] = {stage: _summary_ms(values)["median"] for stage, values in stages.items()}
            entry["repeatable"] = bool(np.array_equal(first, image))  # same seed, same pixels, call after call
            if cuda:
                entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if name == "fp32-eager":
                np.save(reference_path, image)
            if reference_path.is_file():
                entry["vs_fp32"] = compare_images(image, np.load(reference_path))
            entry["status"] = "ok"
        except Exception as e:
            traceback.print_exc()
            entry.update(status="failed", error=first_line(e))
        finally:
            del pipe
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        print(f"{name}: {entry}", flush=True)
        write_json(result_path, result)


# -- the run ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    device: str
    quick: bool
    models: tuple[tuple[str, int], ...]
    runs: int
    warmup: int
    budget_s: float

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def low(self) -> str:
        """The low precision timed: float16 on CUDA, bfloat16 on a CPU (where the torch backend refuses float16)."""
        return "fp16" if self.cuda else "bf16"

    def budget(self, phase: str, model: str | None = None) -> float:
        value = (QUICK_BUDGETS if self.quick else BUDGETS)[phase]
        return value if not isinstance(value, dict) else value.get(model, max(value.values()))


class Run:
    """The phases in turn, each within its budget and the run's deadline.

    OUT holds two files: gpu-check.json, rewritten every few seconds with what the running phase has measured so
    far, and gpu-check.log, the end of each phase's output. Children write into the work folder."""

    def __init__(self, out: Path, mode: Mode, wheels: Path | None, work: Path):
        self.out, self.mode, self.wheels, self.work = out, mode, wheels, work
        self.start = time.monotonic()
        self.deadline = self.start + mode.budget_s
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG).write_text("")
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self.env.setdefault("HF_HUB_OFFLINE", "1")  # everything is built here; nothing is to be downloaded
        self.env["PYTHONUNBUFFERED"] = "1"
        self.results: dict = {
            "schema": SCHEMA,
            "status": "running",
            "started": now(),
            "finished": None,
            "mode": asdict(mode) | {"models": [m for m, _ in mode.models]},
            "targets": TARGETS,
            "anchors": ANCHORS,
            "phases": {},
            "summary": {},
        }
        self.prepare_proc: subprocess.Popen | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        write_json(self.out / RESULTS, self.results)

    def record(self, name: str, entry: dict, line: str) -> None:
        self.results["phases"][name] = entry
        self.save()
        print(f"{name:<38} {entry['status']:<9} {entry.get('seconds', 0):6.1f} s  {line}", flush=True)

    def append_log(self, name: str, log: Path, lines: int = 200) -> None:
        """The end of a phase's output into OUT's log (the whole of it stays in the work folder)."""
        text = log.read_text(errors="replace").splitlines() if log.is_file() else []
        cut = f"[{len(text) - lines} lines before these left out]\n" if len(text) > lines else ""
        with open(self.out / LOG, "a") as f:
            f.write(f"===== {name}\n{cut}" + "\n".join(line[:1000] for line in text[-lines:]) + "\n")

    def _child_cmd(self, phase: str, result: Path, *extra: str) -> list[str]:
        return [sys.executable, str(Path(__file__)), str(self.out), "--phase", phase, "--result", str(result), *extra]

    def _popen(self, cmd: list[str], log) -> subprocess.Popen:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """End a child and whatever it started (its own session), politely first."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def run_child(self, name: str, cmd: list[str], budget: float, progress: Callable[[], dict] | None = None) -> dict:
        """Run a child within min(budget, time left); `progress()` gives what it has measured so far, saved into the
        results every few seconds while it runs. Returns status, seconds and, on failure, the last line."""
        timeout = min(budget, self.remaining())
        if timeout < MIN_PHASE_S:
            return {"status": "skipped", "note": "no time left in the run's budget"}
        log = self.work / f"{name.replace('/', '--')}.log"
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = self._popen(cmd, f)
            while True:
                left = t0 + timeout - time.monotonic()
                try:
                    rc = proc.wait(max(0.1, min(2.0, left)))
                    status = "ok" if rc == 0 else "failed"
                    break
                except subprocess.TimeoutExpired:
                    if left <= 0:
                        self._stop(proc)
                        rc, status = None, "timed_out"
                        break
                    if progress is not None:
                        self.results["phases"][name] = {"status": "running", **progress()}
                        self.save()
        entry = {"status": status, "seconds": round(time.monotonic() - t0, 1), "budget_s": round(timeout, 1)}
        if rc:
            entry["exit_code"] = rc
            tail = log.read_text(errors="replace").strip().splitlines()
            entry["error"] = tail[-1][:300] if tail else ""
        self.append_log(name, log)
        return entry

    # phases

    def setup(self) -> None:
        t0 = time.monotonic()
        pip_log = self.work / "setup-pip.log"
        entry = install_wheels(self.wheels, self.env, pip_log) if self.wheels else {"note": "--no-install"}
        if pip_log.is_file():
            self.append_log("setup: pip", pip_log)
        probe_path = self.work / "probe.json"
        child = self.run_child("setup", self._child_cmd("probe", probe_path), self.mode.budget("setup"))
        machine = read_json(probe_path)
        self.results["machine"] = machine
        problems = ({"torch_error"} & machine.keys()) | ({"error", "diffusers_error"} & entry.keys())
        ok = child["status"] == "ok" and not problems
        if self.mode.cuda and not machine.get("cuda_available"):
            ok, entry["error"] = False, f"this torch sees no CUDA device ({self.mode.device} asked for)"
        entry.update(status="ok" if ok else "failed", seconds=round(time.monotonic() - t0, 1))
        if child["status"] != "ok":
            entry["probe"] = child
        gpus = ", ".join(g["name"] for g in machine.get("gpus", [])) or "no GPU"
        versions = machine.get("versions", {})
        line = f"python {machine.get('python')}, torch {versions.get('torch')}, diffusers {versions.get('diffusers')}"
        installed = entry.get("installed")
        self.record("setup", entry, f"{line}, {gpus}" + (f"; installed {len(installed)} wheels" if installed else ""))

    def start_prepare(self) -> None:
        self.prepare_result = self.work / "prepare.json"
        self.prepare_log = self.work / "prepare.log"
        models = [f"{model}:{size}" for model, size in self.mode.models]
        cmd = self._child_cmd("prepare", self.prepare_result, "--models", *models)
        self.prepare_started = time.monotonic()
        with open(self.prepare_log, "w") as f:
            self.prepare_proc = self._popen(cmd, f)

    def prepared(self, model: str) -> dict:
        """Wait for the model's artifacts from the prepare child, within its budget and the deadline."""
        end = min(self.prepare_started + self.mode.budget("prepare"), self.deadline)
        while True:
            done = read_json(self.prepare_result).get("models", {}).get(model)
            if done is not None:
                return done
            if self.prepare_proc.poll() is not None:
                done = read_json(self.prepare_result).get("models", {}).get(model)  # written just before it ended
                return done or {"error": f"prepare exited with {self.prepare_proc.returncode} before {model} was ready"}
            if time.monotonic() >= end:
                self._stop(self.prepare_proc)
                return {"error": f"not ready within the prepare budget ({self.mode.budget('prepare')} s)"}
            time.sleep(0.5)

    def finish_prepare(self) -> None:
        """Record the prepare phase (its child ends by itself once every model is ready; else it is stopped)."""
        try:
            self.prepare_proc.wait(5)
        except subprocess.TimeoutExpired:
            self._stop(self.prepare_proc)
        done = read_json(self.prepare_result)
        models = {m: {k: v for k, v in d.items() if k != "artifacts"} for m, d in done.get("models", {}).items()}
        errors = [m for m, d in models.items() if "error" in d]
        wanted = [m for m, _ in self.mode.models]
        status = "failed" if errors else "ok" if all(m in models for m in wanted) else "timed_out"
        seconds = done.get("elapsed_s", round(time.monotonic() - self.prepare_started, 1))
        self.append_log("prepare", self.prepare_log)
        entry = {"status": status, "seconds": seconds, "models": models}
        self.record("prepare", entry, ", ".join(f"{m} {d.get('seconds', '?')} s" for m, d in models.items()))

    def parity(self) -> None:
        junit = self.work / "parity-junit.xml"
        log = self.work / "parity.log"
        selection = list(QUICK_PARITY) if self.mode.quick else ["tests/test_parity.py", "-k", "torch"]
        cmd = [sys.executable, "-m", "pytest", *selection, "--torch-device", self.mode.device]
        cmd += ["--export-formats", "none", "-v", "-p", "no:cacheprovider", "--basetemp", str(self.work / "pytest")]
        cmd += ["-o", "junit_family=xunit1", "--junitxml", str(junit)]
        entry = self.run_child("parity", cmd, self.mode.budget("parity"), lambda: parse_pytest(log, junit))
        entry.update(parse_pytest(log, junit))
        if entry["status"] == "ok" and not entry["passed"]:
            entry["status"] = "failed"
        line = f"{entry['passed']} passed, {entry['failed']} failed"
        line += "".join(f"; {k} {v} dB" for k, v in entry.get("low_precision_psnr_db", {}).items())
        self.record("parity", entry, line)

    def measure(self, model: str, group: str, variants: list[str], skipped: dict[str, str]) -> None:
        name = f"{model}/{group}"
        t0 = time.monotonic()
        prepared = self.prepared(model)
        waited = round(time.monotonic() - t0, 1)
        result_path = self.work / f"{model}--{group}.json"
        if "error" in prepared:
            entry = {"status": "skipped", "note": f"no artifacts: {prepared['error']}"}
        else:
            cmd = self._child_cmd(
                "measure",
                result_path,
                *("--model", model, "--artifacts", prepared["artifacts"], "--device", self.mode.device),
                *("--variants", ",".join(variants), "--scratch", str(self.work)),
                *("--runs", str(self.mode.runs), "--warmup", str(self.mode.warmup)),
                *(["--channels-last-pays"] if self.channels_last_pays(model) else []),
            )
            budget = self.mode.budget("eager" if group == "eager" else "compile", model)
            beside = self.prepare_proc.poll() is None  # the replicas still being built beside this phase
            entry = self.run_child(name, cmd, budget, lambda: {"variants": read_json(result_path).get("variants", {})})
            if beside:
                entry["prepare_running"] = True
        entry["waited_for_artifacts_s"] = waited
        measured = read_json(result_path).get("variants", {})
        measured.update({v: {"status": "skipped", "note": why} for v, why in skipped.items()})
        entry["variants"] = measured
        if entry["status"] == "ok" and any(v["status"] == "failed" for v in measured.values()):
            entry["status"] = "failed"
        line = ", ".join(
            f"{v} {d['e2e_ms']['median']:.1f} ms" if d.get("e2e_ms") else f"{v} {d['status']}"
            for v, d in measured.items()
        )
        self.record(name, entry, line or entry.get("note", entry.get("error", "")))

    def compiled(self, model: str, compile_mode: str) -> None:
        group, variant = f"compile-{compile_mode}", f"{self.mode.low}-compile-{compile_mode}"
        if self.mode.quick and not self.mode.cuda:
            note = {"status": "skipped", "note": CPU_COMPILE_NOTE}
            self.record(f"{model}/{group}", {**note, "variants": {variant: note}}, CPU_COMPILE_NOTE)
        else:
            self.measure(model, group, [variant], {})

    def channels_last_pays(self, model: str) -> bool:
        """Whether the low-precision channels-last variant beat plain eager for this model (else False)."""
        variants = self.results["phases"].get(f"{model}/eager", {}).get("variants", {})
        low = self.mode.low
        plain, nhwc = variants.get(f"{low}-eager", {}), variants.get(f"{low}-channels-last", {})
        if "e2e_ms" not in plain or "e2e_ms" not in nhwc:
            return False
        return nhwc["e2e_ms"]["median"] < plain["e2e_ms"]["median"]

    def summarize(self) -> None:
        low = self.mode.low
        for model, _ in self.mode.models:
            variants = {}
            for name, phase in self.results["phases"].items():
                if name.startswith(f"{model}/"):
                    variants.update({v: d for v, d in phase.get("variants", {}).items() if d.get("e2e_ms")})
            if not variants:
                continue
            median = {v: d["e2e_ms"]["median"] for v, d in variants.items()}
            # PSNR against float32's image; None where the pixels are the same, absent without a float32 image.
            psnr = {v: d["vs_fp32"]["psnr_db"] for v, d in variants.items() if "vs_fp32" in d}
            full = [v for v in psnr if psnr[v] is None or psnr[v] >= FULL_QUALITY_PSNR_DB]
            best = min(full, key=median.get) if full else None
            target = TARGETS.get(model, {}).get("e2e_ms")
            low_psnr = psnr.get(f"{low}-eager")
            self.results["summary"][model] = {
                "e2e_ms": median,
                "psnr_db_vs_fp32": psnr,
                "best": None if best is None else {"variant": best, "e2e_ms": median[best]},
                "target_e2e_ms": target,
                "target_met": None if target is None or best is None else median[best] <= target,
                f"{low}_psnr_db": low_psnr,
                "psnr_target_met": None
                if f"{low}-eager" not in psnr
                else low_psnr is None or low_psnr >= FULL_QUALITY_PSNR_DB,
            }

    def execute(self) -> int:
        mode, low = self.mode, self.mode.low
        try:
            self.setup()
            self.start_prepare()
            self.parity()
            # Model by model, eager then the likeliest compile mode (SDXL's replica is built meanwhile); then the
            # other compile modes while time lasts.
            for i, (model, _) in enumerate(mode.models):
                eager = ["fp32-eager", f"{low}-eager", f"{low}-channels-last"]
                skipped = {}
                if mode.cuda:
                    eager.append(f"{low}-cuda-graphs")
                else:
                    skipped[f"{low}-cuda-graphs"] = "CUDA graphs need a CUDA device"
                self.measure(model, "eager", eager, skipped)
                if i == len(mode.models) - 1:
                    self.finish_prepare()
                self.compiled(model, COMPILE_MODES[0])
            for compile_mode in COMPILE_MODES[1:]:
                for model, _ in mode.models:
                    self.compiled(model, compile_mode)
        finally:
            if self.prepare_proc is not None and "prepare" not in self.results["phases"]:
                self.finish_prepare()
            self.summarize()
            phases = self.results["phases"].values()
            complete = all(p["status"] in ("ok", "skipped") for p in phases) and self.remaining() > 0
            self.results["status"] = "complete" if complete else "partial"
            self.results["finished"] = now()
            self.results["seconds"] = round(time.monotonic() - self.start, 1)
            self.save()
        for model, s in self.results["summary"].items():
            best = s["best"] or {}
            print(
                f"{model}: best {best.get('variant')} {best.get('e2e_ms')} ms (target {s['target_e2e_ms']} ms), "
                f"{low} PSNR against fp32 {s[f'{low}_psnr_db']} dB",
                flush=True,
            )
        print(f"{RESULTS}: {self.results['status']} in {self.results['seconds']} s", flush=True)
        return 0 if all(p["status"] in ("ok", "skipped") for p in self.results["phases"].values()) else 1


def parse_pytest(log: Path, junit: Path) -> dict:
    """Outcomes from the -v log (there even when pytest was cut short), PSNRs and failures from the JUnit XML."""
    outcomes = {}
    text = log.read_text(errors="replace") if log.is_file() else ""
    for match in re.finditer(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text, re.M):
        outcomes[match[1]] = match[2].lower()
    entry: dict = {"tests": outcomes}
    entry["passed"] = sum(o == "passed" for o in outcomes.values())
    entry["failed"] = sum(o in ("failed", "error") for o in outcomes.values())
    entry["skipped"] = sum(o == "skipped" for o in outcomes.values())
    try:
        cases = ET.parse(junit).getroot().iter("testcase")
    except (OSError, ET.ParseError):
        return entry
    failures, psnr = {}, {}
    for case in cases:
        name = case.get("name", "")
        for bad in (*case.findall("failure"), *case.findall("error")):
            failures[name] = (bad.get("message") or "").strip().splitlines()[0][:300] if bad.get("message") else ""
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "psnr_db" in props:
            family = re.search(r"\[(.+)\]", name)
            psnr[family[1] if family else name] = float(props["psnr_db"])
            entry["low_precision_dtype"] = props.get("dtype")
    entry["failures"] = failures
    entry["low_precision_psnr_db"] = psnr
    return entry


def _model_size(text: str) -> tuple[str, int]:
    model, _, size = text.rpartition(":")
    if not model or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:SIZE")
    return model, int(size)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu-check.json and gpu-check.log (created)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    p.add_argument("--quick", action="store_true", help="tiny-sd-turbo at 128x128, fewer runs, a parity subset")
    p.add_argument(
        "--models",
        nargs="+",
        type=_model_size,
        metavar="NAME:SIZE",
        help="replicas to time (default: sd-turbo-arch:512 sdxl-turbo-arch:512; tiny-sd-turbo:128 with --quick)",
    )
    p.add_argument("--budget", type=float, help="seconds for the whole run (default 470; 150 with --quick)")
    p.add_argument("--runs", type=int, help="timed calls per variant (default 20; 3 with --quick)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 3; 1 with --quick)")
    p.add_argument("--wheels", type=Path, default=ROOT / ".gpu-wheels", help="carried wheels (default .gpu-wheels)")
    p.add_argument("--no-install", action="store_true", help="install nothing (a prepared environment)")
    p.add_argument("--work", type=Path, help="scratch folder (default: a new one in the system's temp folder)")
    # A child phase, started by the run itself.
    child = p.add_argument_group("child phases")
    child.add_argument("--phase", choices=("probe", "prepare", "measure"), help=argparse.SUPPRESS)
    for name in ("--result", "--model", "--artifacts", "--variants", "--scratch"):
        child.add_argument(name, help=argparse.SUPPRESS)
    child.add_argument("--channels-last-pays", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.phase:
        args.runs = args.runs or 1
        args.warmup = args.warmup or 0
        {"probe": probe, "prepare": prepare, "measure": measure}[args.phase](args)
        return 0
    quick = args.quick
    mode = Mode(
        device=args.device,
        quick=quick,
        models=tuple(args.models) if args.models else QUICK_MODELS if quick else FULL_MODELS,
        runs=args.runs or (3 if quick else 20),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 3),
        budget_s=args.budget or (150.0 if quick else 470.0),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    return Run(args.out.resolve(), mode, None if args.no_install else args.wheels.resolve(), work).execute()


if __name__ == "__main__":
    sys.exit(main())
