"""Code shared by optimum_intel_bench.py and optimum_onnx_bench.py (each imports it as `peer_common`: they run as
scripts, so this folder is on sys.path).

Only the standard library is imported at module level: the two scripts run in different environments
(made by setup.py under the cache folder), so torch, numpy, transformers and safetensors are imported inside the
functions that need them. Importing this module also sets the offline Hugging Face environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Everything is local: never try to reach the Hugging Face hub (and don't wait on it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = ("text_encoder", "unet", "vae_decoder")
TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")


def maxrss_bytes(who: int) -> int:
    """Peak resident memory of this process (RUSAGE_SELF) or of its waited-for children."""
    if who == resource.RUSAGE_SELF:
        # This process's own high-water mark: ru_maxrss also counts the parent's resident set at the
        # fork/exec that started us (Linux keeps the larger), which a large parent inflates.
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(who).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def versions(packages) -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------------------------------------------
# Export helpers
# --------------------------------------------------------------------------------------------------------------


def text_encoder_key_fix(folder: Path) -> dict | None:
    """Key renames that this environment's transformers needs to load folder's text encoder, or None.

    Newer transformers (5.2x, as in the turbo-runtime venv) save CLIPTextModel without the `text_model.` prefix
    ("embeddings.token_embedding.weight"); the transformers of the peer environments (5.5.x, pinned by
    optimum-intel 2.2.0; 4.57.x, pinned by optimum-onnx 0.1.0) expect "text_model.embeddings.token_embedding.weight"
    and, finding none, silently keep RANDOM weights (their load reports list them as UNEXPECTED / MISSING, or
    unused / newly initialized). Returns {old_key: new_key} when adding the prefix makes the checkpoint match the
    model this transformers builds.
    """
    import torch
    import transformers
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files or not (folder / "config.json").is_file():
        return None
    keys = set()
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            keys.update(h.keys())
    config = transformers.AutoConfig.from_pretrained(str(folder))
    arch = (getattr(config, "architectures", None) or ["CLIPTextModel"])[0]
    cls = getattr(transformers, arch)
    with torch.device("meta"):
        expected = set(cls(config).state_dict().keys())
    if keys <= expected:
        return None
    renames = {k: "text_model." + k for k in keys if k not in expected and "text_model." + k in expected}
    fixed = {renames.get(k, k) for k in keys}
    if not renames or not fixed <= expected:
        return None  # not a layout we know how to fix: let transformers report it
    return renames


def prepare_source(model: Path, scratch: Path, tok_fixes: dict | None = None) -> tuple[Path, list[str]]:
    """Return a folder to export from: `model` itself, or a shadow copy (symlinks) of it in `scratch` whose text
    encoder checkpoint(s) have their keys renamed (text_encoder_key_fix) and, given `tok_fixes` ({component: class
    name}), whose model_index.json names those tokenizer classes, as this transformers version needs."""
    tok_fixes = tok_fixes or {}
    key_fixes = {}
    for name in TEXT_ENCODER_DIRS:
        if (model / name).is_dir():
            renames = text_encoder_key_fix(model / name)
            if renames:
                key_fixes[name] = renames
    if not key_fixes and not tok_fixes:
        return model, []
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for entry in model.iterdir():
        if entry.name == "model_index.json" and tok_fixes:
            index = json.loads(entry.read_text())
            for name, cls_name in tok_fixes.items():
                index[name] = [index[name][0], cls_name]
            (scratch / entry.name).write_text(json.dumps(index, indent=2) + "\n")
            continue
        if entry.name not in key_fixes:
            (scratch / entry.name).symlink_to(entry.resolve())
            continue
        sub = scratch / entry.name
        sub.mkdir()
        renames = key_fixes[entry.name]
        for f in entry.iterdir():
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as h:
                    metadata = h.metadata() or {"format": "pt"}
                tensors = load_file(str(f))
                save_file({renames.get(k, k): v for k, v in tensors.items()}, str(sub / f.name), metadata=metadata)
            elif f.name.endswith(".safetensors.index.json"):
                idx = json.loads(f.read_text())
                idx["weight_map"] = {renames.get(k, k): v for k, v in idx.get("weight_map", {}).items()}
                (sub / f.name).write_text(json.dumps(idx, indent=2))
            else:
                (sub / f.name).symlink_to(f.resolve())
    notes = [f"{name}: added the 'text_model.' prefix to {len(r)} checkpoint keys" for name, r in key_fixes.items()]
    notes += [f"{name}: loaded as {cls_name} (tokenizer.json only)" for name, cls_name in tok_fixes.items()]
    for note in notes:
        print(f"[bench] export workaround: {note}", file=sys.stderr, flush=True)
    return scratch, notes


def run_export_child(script: str, model: Path, out_dir: Path, threads: int, relay_stdout: bool = False) -> dict:
    """Run `script --export-only` in a child process; return its timings and its peak RSS.

    The child's stdout is captured (its last line is the JSON result); its stderr is ours. With relay_stdout, the
    rest of the child's stdout (all of it when the export fails) is copied to our stderr."""
    cmd = [
        sys.executable,
        os.path.abspath(script),
        "--export-only",
        "--model",
        str(model),
        "--ir-dir",
        str(out_dir),
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        if relay_stdout:
            sys.stderr.write(proc.stdout)
        raise SystemExit(f"export failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    if relay_stdout:
        sys.stderr.write("".join(proc.stdout.strip().splitlines(keepends=True)[:-1]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["export_wall_s"] = wall  # includes interpreter start and imports
    info["export_peak_rss_bytes"] = maxrss_bytes(resource.RUSAGE_CHILDREN)
    return info


def ensure_export(args, present: bool, what: str, export_child) -> dict | None:
    """Export once (export_child(model, out_dir, threads), a child process) unless `present`; return the export
    info or None. `what` names the export in the log line ("IR", "ONNX export")."""
    out_dir = Path(args.ir_dir)
    if present:
        return None
    print(f"[bench] no {what} in {out_dir}: exporting {args.model} ...", file=sys.stderr, flush=True)
    export_info = export_child(Path(args.model), out_dir, args.threads)
    print(f"[bench] export took {export_info['export_s']:.1f} s", file=sys.stderr, flush=True)
    return export_info


def export_workarounds(out_dir: Path):
    meta = out_dir / "bench_export.json"
    return json.loads(meta.read_text()).get("workarounds") if meta.is_file() else None


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


class StageTimer:
    """Wraps a pipeline part's `forward` (the optimum parts' __call__ calls self.forward) with a perf_counter
    timer."""

    def __init__(self, part, name: str):
        self.name = name
        self.calls: list[float] = []
        inner = part.forward

        def timed_forward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.calls.append(time.perf_counter() - t0)

        part.forward = timed_forward  # instance attribute shadows the method

    def take(self) -> list[float]:
        calls, self.calls = self.calls, []
        return calls


def load_latents(path):
    import numpy as np

    return np.load(path).astype(np.float32, copy=False)


def check_latents(args, latents, pipe) -> None:
    expected = (1, 4, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
    if tuple(latents.shape) != expected:
        raise SystemExit(f"latents {args.latents} have shape {tuple(latents.shape)}, expected {expected}")


def call_kwargs(args, latents) -> dict:
    import torch

    return dict(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=0.0,
        num_images_per_prompt=1,
        latents=torch.from_numpy(latents),
        output_type="np",
    )


def timed_runs(args, pipe, timers, make_kwargs):
    """args.warmup untimed then args.runs timed pipeline calls, each with make_kwargs(); returns (runs, stages,
    stage_calls, images) with images the last output as N x H x W x 3 float32."""
    import numpy as np

    for _ in range(args.warmup):
        pipe(**make_kwargs())
    for t in timers.values():
        t.take()

    runs, stages, stage_calls = [], {n: [] for n in STAGES}, {n: [] for n in STAGES}
    images = None
    for i in range(args.runs):
        kwargs = make_kwargs()
        t0 = time.perf_counter()
        out = pipe(**kwargs)
        runs.append(time.perf_counter() - t0)
        images = out.images
        for name, t in timers.items():
            calls = t.take()
            stages[name].append(sum(calls))
            stage_calls[name].append(len(calls))
        print(f"[bench] run {i + 1}/{args.runs}: {runs[-1]:.3f} s", file=sys.stderr, flush=True)
    return runs, stages, stage_calls, np.asarray(images, dtype=np.float32)


def save_image(args, images) -> Path:
    import numpy as np

    image_path = Path(args.out).with_suffix(".npy")
    image_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(image_path, images)
    return image_path


# --------------------------------------------------------------------------------------------------------------
# Serve mode
# --------------------------------------------------------------------------------------------------------------


def protocol_stdout():
    """Serve mode: return a text stream on the real stdout for protocol lines, and send everything else that
    would go to stdout (Python prints and native libraries writing to fd 1 alike) to stderr."""
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # fd 1 -> stderr, for C/C++ output
    sys.stdout = sys.stderr
    return proto


def emitter(proto):
    """A function that writes one JSON protocol line (its keyword arguments) to proto."""

    def emit(**event) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    return emit


def serve_loop(emit, pipe, timers, call_kwargs, latents) -> None:
    """Answer each stdin {"cmd": "run", "save": PATH|null} with {"event": "run", "e2e_s", "stages"} until
    {"cmd": "quit"} or end of input (the caller then emits the exit event)."""
    import numpy as np
    import torch

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] != "run":
            raise SystemExit(f"unknown command: {line.strip()}")
        kwargs = dict(call_kwargs, latents=torch.from_numpy(latents.copy()))  # fresh tensor, same noise
        for t in timers.values():
            t.take()
        t0 = time.perf_counter()
        images = pipe(**kwargs).images
        pixels = (images * 255).round().astype(np.uint8)
        e2e = time.perf_counter() - t0
        calls = {name: t.take() for name, t in timers.items()}
        stages = {
            "text_encoder": sum(calls["text_encoder"]),
            "unet": calls["unet"],
            "vae_decoder": sum(calls["vae_decoder"]),
        }
        if cmd.get("save"):
            np.save(cmd["save"], pixels)
        emit(event="run", e2e_s=e2e, stages=stages)


# --------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------


def add_arguments(p, ir_dir_help: str, precision_help: str, serve_help: str) -> None:
    p.add_argument("--model", required=True, help="diffusers folder (StableDiffusionPipeline layout)")
    p.add_argument("--ir-dir", required=True, help=ir_dir_help)
    p.add_argument("--latents", help=".npy with the initial noise, shape 1 x 4 x H/8 x W/8 float32")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("default", "f32"), default="default", help=precision_help)
    p.add_argument("--out", help="result JSON path (the image goes beside it with suffix .npy)")
    p.add_argument("--serve", action="store_true", help=serve_help)
    p.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)


def check_arguments(p, args) -> None:
    if not args.export_only:
        needed = ("latents",) if args.serve else ("latents", "out")
        missing = [f"--{n}" for n in needed if getattr(args, n) is None]
        if missing:
            p.error("the following arguments are required: " + ", ".join(missing))
        if args.height % 8 or args.width % 8:
            p.error("--height and --width must be multiples of 8")


def set_torch_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
