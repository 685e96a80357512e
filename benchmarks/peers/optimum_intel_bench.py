#!/usr/bin/env python
"""Benchmark optimum-intel's OVStableDiffusionPipeline (OpenVINO, CPU) on a diffusers SD/SD-Turbo folder.

Standalone: run it with the optimum-intel environment described in README.md beside this file (NOT with the
turbo-runtime venv; the two cannot share an environment).

    python optimum_intel_bench.py --model DIFFUSERS_FOLDER --ir-dir IR_DIR --latents latents.npy \
        --prompt "a photo of a cat" --steps 1 --runs 5 --warmup 1 --height 512 --width 512 --threads 2 \
        --out result.json [--precision default|f32]

* If IR_DIR holds no OpenVINO IR yet, the diffusers folder is exported once (in a child process, so that the
  export's memory peak does not count in the benchmark's peak RSS) with
  ``OVStableDiffusionPipeline.from_pretrained(folder, export=True, compile=False).save_pretrained(IR_DIR)``.
* The IR is loaded with compile=False, reshaped statically to batch 1 / height x width, the UNet batch is set back
  to 1 (``reshape()`` assumes classifier-free guidance and doubles it; we run guidance_scale=0), and the three
  parts a text-to-image call uses (text encoder, UNet, VAE decoder) are compiled with
  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"} (+ "INFERENCE_PRECISION_HINT": "f32" with
  --precision f32). The VAE encoder is left uncompiled: text-to-image never calls it.
* ``latents`` are the initial Gaussian noise, as diffusers' ``latents=`` argument (diffusers multiplies them by
  ``scheduler.init_noise_sigma``).
* Writes the JSON result to --out and the last output image (N x H x W x 3 float32 in [0, 1]) to --out with
  the suffix .npy.

Serve mode (``--serve``; --runs, --warmup and --out are not needed) keeps the compiled pipeline in memory and
speaks JSON lines like benchmarks/worker.py: once loaded it prints
``{"event": "ready", "load_s": <load+reshape+compile s>, "precision": <UNet INFERENCE_PRECISION_HINT>}``; each
stdin line ``{"cmd": "run", "save": PATH|null}`` runs the pipeline once and prints
``{"event": "run", "e2e_s": <pipe call + uint8 conversion s>, "stages": {"text_encoder": s, "unet": [s, ...],
"vae_decoder": s}}`` (np.save-ing the N x H x W x 3 uint8 image to PATH first); ``{"cmd": "quit"}`` (or end of
input) prints ``{"event": "exit", "peak_rss_bytes": ...}``. Only protocol lines go to stdout; everything else,
native libraries' output included, goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Everything is local: never try to reach the Hugging Face hub (and don't wait on it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PIPELINE_NAME = "optimum-intel OVStableDiffusionPipeline"
IR_MARKER = Path("unet") / "openvino_model.xml"
STAGES = ("text_encoder", "unet", "vae_decoder")
VERSION_PACKAGES = (
    "optimum-intel",
    "optimum",
    "openvino",
    "openvino-tokenizers",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "torch",
    "torchvision",
    "numpy",
)


def _maxrss_bytes(who: int) -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    rss = resource.getrusage(who).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _has_ir(ir_dir: Path) -> bool:
    return (ir_dir / IR_MARKER).is_file() and (ir_dir / "model_index.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# Export (runs in a child process: `--export-only`)
# --------------------------------------------------------------------------------------------------------------


TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")


def _text_encoder_key_fix(folder: Path) -> dict | None:
    """Key renames that this environment's transformers needs to load folder's text encoder, or None.

    Newer transformers (5.2x, as in the turbo-runtime venv) save CLIPTextModel without the `text_model.` prefix
    ("embeddings.token_embedding.weight"); transformers 5.5.x (pinned by optimum-intel 2.2.0) expects
    "text_model.embeddings.token_embedding.weight" and, finding none, silently keeps RANDOM weights (its load report
    lists them as UNEXPECTED / MISSING). Returns {old_key: new_key} when adding the prefix makes the checkpoint
    match the model this transformers builds.
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


def _prepare_source(model: Path, scratch: Path) -> tuple[Path, list[str]]:
    """Return a folder to export from: `model` itself, or a shadow copy (symlinks) of it in `scratch` whose text
    encoder checkpoint(s) have their keys renamed for this transformers version."""
    import shutil

    fixes = {}
    for name in TEXT_ENCODER_DIRS:
        if (model / name).is_dir():
            renames = _text_encoder_key_fix(model / name)
            if renames:
                fixes[name] = renames
    if not fixes:
        return model, []
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for entry in model.iterdir():
        if entry.name not in fixes:
            (scratch / entry.name).symlink_to(entry.resolve())
            continue
        sub = scratch / entry.name
        sub.mkdir()
        renames = fixes[entry.name]
        for f in entry.iterdir():
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt") as h:
                    metadata = h.metadata() or {"format": "pt"}
                tensors = load_file(str(f))
                save_file({renames.get(k, k): v for k, v in tensors.items()}, str(sub / f.name), metadata=metadata)
            elif f.name.endswith(".safetensors.index.json"):
                index = json.loads(f.read_text())
                index["weight_map"] = {renames.get(k, k): v for k, v in index.get("weight_map", {}).items()}
                (sub / f.name).write_text(json.dumps(index, indent=2))
            else:
                (sub / f.name).symlink_to(f.resolve())
    notes = [f"{name}: added the 'text_model.' prefix to {len(r)} checkpoint keys" for name, r in fixes.items()]
    for note in notes:
        print(f"[bench] export workaround: {note}", file=sys.stderr, flush=True)
    return scratch, notes


def export_ir(model: Path, ir_dir: Path) -> dict:
    """Export the diffusers folder to OpenVINO IR in ir_dir; return timings."""
    import shutil

    t0 = time.perf_counter()
    from optimum.intel import OVStableDiffusionPipeline

    import_s = time.perf_counter() - t0
    partial = ir_dir.with_name(ir_dir.name + ".partial")
    scratch = ir_dir.with_name(ir_dir.name + ".src")
    if partial.exists():
        shutil.rmtree(partial)
    t0 = time.perf_counter()
    source, notes = _prepare_source(model.resolve(), scratch)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(str(source), export=True, compile=False)
    convert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pipe.save_pretrained(str(partial))
    save_s = time.perf_counter() - t1
    del pipe
    if source != model.resolve():
        shutil.rmtree(scratch)
    ir_dir.parent.mkdir(parents=True, exist_ok=True)
    if ir_dir.exists():  # an empty / unusable folder: replace it
        shutil.rmtree(ir_dir)
    os.replace(partial, ir_dir)
    (ir_dir / "bench_export.json").write_text(
        json.dumps({"source": str(model.resolve()), "workarounds": notes}, indent=2) + "\n"
    )
    return {
        "import_s": import_s,
        "prepare_s": prepare_s,
        "convert_s": convert_s,
        "save_s": save_s,
        "export_s": convert_s + save_s,
        "workarounds": notes,
    }


def run_export_child(model: Path, ir_dir: Path, threads: int) -> dict:
    """Run the export in a child process; return its timings and its peak RSS."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--export-only",
        "--model",
        str(model),
        "--ir-dir",
        str(ir_dir),
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["export_wall_s"] = wall  # includes interpreter start and imports
    info["export_peak_rss_bytes"] = _maxrss_bytes(resource.RUSAGE_CHILDREN)
    return info


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


class StageTimer:
    """Wraps a pipeline part's `forward` (OVPipelinePart.__call__ calls self.forward) with a perf_counter timer."""

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


def _fix_unet_batch(pipe, batch: int = 1) -> dict:
    """reshape() sized the UNet for classifier-free guidance (batch 2 x num_images); set it back to `batch`."""
    model = pipe.unet.model
    shapes = {}
    for inp in model.inputs:
        shape = inp.get_partial_shape()
        if inp.get_any_name() in ("sample", "encoder_hidden_states") and shape.rank.is_static and len(shape) > 0:
            shape[0] = batch
        shapes[inp] = shape
    model.reshape(shapes)
    pipe.unet.clear_requests()
    return {inp.get_any_name(): str(inp.get_partial_shape()) for inp in model.inputs}


def _input_shapes(part) -> dict:
    return {inp.get_any_name(): str(inp.get_partial_shape()) for inp in part.model.inputs}


def _ensure_ir(args) -> dict | None:
    """Export the IR once (child process) unless ir_dir already holds one; return the export info or None."""
    ir_dir = Path(args.ir_dir)
    if _has_ir(ir_dir):
        return None
    print(f"[bench] no IR in {ir_dir}: exporting {args.model} ...", file=sys.stderr, flush=True)
    export_info = run_export_child(Path(args.model), ir_dir, args.threads)
    print(f"[bench] export took {export_info['export_s']:.1f} s", file=sys.stderr, flush=True)
    return export_info


def _ov_config(args) -> dict:
    ov_config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
    if args.precision == "f32":
        ov_config["INFERENCE_PRECISION_HINT"] = "f32"
    return ov_config


def _load_compile(args, latents) -> dict:
    """Load the IR (compile=False), reshape it statically, compile the text-to-image parts and wrap them with
    stage timers. Returns the pipeline with the timings and properties of each step."""
    import torch
    from optimum.intel import OVStableDiffusionPipeline

    ir_dir = Path(args.ir_dir)
    ov_config = _ov_config(args)

    # Load the IR (no compilation).
    t0 = time.perf_counter()
    pipe = OVStableDiffusionPipeline.from_pretrained(str(ir_dir), compile=False, ov_config=ov_config)
    load_s = time.perf_counter() - t0
    # The parts share the pipeline's ov_config dict; make sure it is exactly ours.
    pipe.ov_config.clear()
    pipe.ov_config.update(ov_config)
    pipe.set_progress_bar_config(disable=True)

    expected = (1, 4, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
    if tuple(latents.shape) != expected:
        raise SystemExit(f"latents {args.latents} have shape {tuple(latents.shape)}, expected {expected}")

    # Static shapes; UNet back to batch 1 (guidance_scale=0 -> no unconditional half).
    t0 = time.perf_counter()
    pipe.reshape(batch_size=1, height=args.height, width=args.width, num_images_per_prompt=1)
    _fix_unet_batch(pipe, 1)
    reshape_s = time.perf_counter() - t0
    input_shapes = {name: _input_shapes(getattr(pipe, name)) for name in STAGES}

    # Compile the parts text-to-image uses, each timed.
    compile_parts = {}
    for name in STAGES:
        part = getattr(pipe, name)
        t0 = time.perf_counter()
        part.compile()
        compile_parts[name] = time.perf_counter() - t0
    compile_s = sum(compile_parts.values())
    compiled = {}
    for name in STAGES:
        req = getattr(pipe, name).request
        props = {}
        for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "EXECUTION_MODE_HINT"):
            try:
                value = req.get_property(key)
                props[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
            except Exception:  # property not reported by this plugin/version
                pass
        compiled[name] = props

    # Timers on the parts.
    timers = {name: StageTimer(getattr(pipe, name), name) for name in STAGES}
    call_kwargs = dict(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=0.0,
        num_images_per_prompt=1,
        latents=torch.from_numpy(latents),
        output_type="np",
    )
    return {
        "pipe": pipe,
        "timers": timers,
        "call_kwargs": call_kwargs,
        "ov_config": ov_config,
        "load_s": load_s,
        "reshape_s": reshape_s,
        "input_shapes": input_shapes,
        "compile_s": compile_s,
        "compile_parts_s": compile_parts,
        "compiled": compiled,
    }


def benchmark(args) -> dict:
    import numpy as np

    ir_dir = Path(args.ir_dir)
    result: dict = {"pipeline": PIPELINE_NAME}

    # 1. Export once (child process), unless the IR is already there.
    export_info = _ensure_ir(args)
    result["export_s"] = export_info["export_s"] if export_info else None
    result["export"] = export_info
    meta = ir_dir / "bench_export.json"
    result["export_workarounds"] = json.loads(meta.read_text()).get("workarounds") if meta.is_file() else None

    t0 = time.perf_counter()
    import torch
    from optimum.intel import OVStableDiffusionPipeline  # noqa: F401  (timed import)

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    result["versions"] = _versions()

    latents = np.load(args.latents).astype(np.float32, copy=False)

    # 2.-4. Load the IR, reshape statically, compile; timers on the parts.
    state = _load_compile(args, latents)
    pipe, timers, call_kwargs, ov_config = state["pipe"], state["timers"], state["call_kwargs"], state["ov_config"]
    load_s, reshape_s, compile_s = state["load_s"], state["reshape_s"], state["compile_s"]
    compile_parts, compiled = state["compile_parts_s"], state["compiled"]
    result["input_shapes"] = state["input_shapes"]

    # 5. Warm-up and timed runs.
    for _ in range(args.warmup):
        pipe(**call_kwargs)
    for t in timers.values():
        t.take()

    runs, stages, stage_calls = [], {n: [] for n in STAGES}, {n: [] for n in STAGES}
    images = None
    for i in range(args.runs):
        t0 = time.perf_counter()
        out = pipe(**call_kwargs)
        runs.append(time.perf_counter() - t0)
        images = out.images
        for name, t in timers.items():
            calls = t.take()
            stages[name].append(sum(calls))
            stage_calls[name].append(len(calls))
        print(f"[bench] run {i + 1}/{args.runs}: {runs[-1]:.3f} s", file=sys.stderr, flush=True)

    images = np.asarray(images, dtype=np.float32)
    image_path = Path(args.out).with_suffix(".npy")
    image_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(image_path, images)

    import psutil

    result.update(
        {
            "model": str(Path(args.model).resolve()),
            "ir_dir": str(ir_dir.resolve()),
            "settings": {
                "prompt": args.prompt,
                "steps": args.steps,
                "guidance_scale": 0.0,
                "height": args.height,
                "width": args.width,
                "threads": args.threads,
                "precision": args.precision,
                "warmup": args.warmup,
                "ov_config": {k: str(v) for k, v in ov_config.items()},
            },
            "compiled_properties": compiled,
            "import_s": import_s,
            "load_s": load_s,
            "reshape_s": reshape_s,
            "compile_s": compile_s,
            "compile_parts_s": compile_parts,
            "runs": runs,
            "median_s": statistics.median(runs) if runs else None,
            "stages": stages,
            "stage_calls": stage_calls,
            "stage_medians_s": {n: (statistics.median(v) if v else None) for n, v in stages.items()},
            "peak_rss_bytes": _maxrss_bytes(resource.RUSAGE_SELF),
            "rss_end_bytes": psutil.Process().memory_info().rss,
            "image": str(image_path.resolve()),
            "image_shape": list(images.shape),
            "image_range": [float(images.min()), float(images.max())] if images.size else None,
            "machine": {
                "platform": platform.platform(),
                "cpu": _cpu_name(),
                "logical_cpus": os.cpu_count(),
            },
        }
    )
    return result


def _protocol_stdout():
    """Serve mode: return a text stream on the real stdout for protocol lines, and send everything else that
    would go to stdout (Python prints and native libraries writing to fd 1 alike) to stderr."""
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # fd 1 -> stderr, for C/C++ output
    sys.stdout = sys.stderr
    return proto


def serve(args) -> int:
    """Keep the compiled pipeline in memory and speak JSON lines, like benchmarks/worker.py: print
    {"event": "ready", "load_s", "precision"} once compiled, answer each {"cmd": "run", "save": PATH|null} with
    {"event": "run", "e2e_s", "stages"}, and {"cmd": "quit"} (or end of input) with
    {"event": "exit", "peak_rss_bytes"}."""
    proto = _protocol_stdout()

    def emit(**event) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    import numpy as np

    _ensure_ir(args)  # child process: its memory does not count here
    t0 = time.perf_counter()
    import torch
    from optimum.intel import OVStableDiffusionPipeline  # noqa: F401

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    latents = np.load(args.latents).astype(np.float32, copy=False)
    state = _load_compile(args, latents)
    pipe, timers, call_kwargs = state["pipe"], state["timers"], state["call_kwargs"]
    load_s = state["load_s"] + state["reshape_s"] + state["compile_s"]
    precision = state["compiled"]["unet"].get("INFERENCE_PRECISION_HINT")
    print(
        f"[bench] serve: import {import_s:.2f} s, load {state['load_s']:.2f} s, reshape {state['reshape_s']:.2f} s, "
        f"compile {state['compile_s']:.2f} s; compiled {json.dumps(state['compiled'])}",
        file=sys.stderr,
        flush=True,
    )
    emit(event="ready", load_s=load_s, precision=precision)

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
    emit(event="exit", peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return 0


def _cpu_name() -> str | None:
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:
        return platform.processor() or None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="diffusers folder (StableDiffusionPipeline layout)")
    p.add_argument("--ir-dir", required=True, help="OpenVINO IR folder: exported here on first use, reused after")
    p.add_argument("--latents", help=".npy with the initial noise, shape 1 x 4 x H/8 x W/8 float32")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("default", "f32"), default="default",
                   help="default: OpenVINO's choice (bf16 on AMX/AVX512-BF16 CPUs); f32: force f32 inference")
    p.add_argument("--out", help="result JSON path (the image goes beside it with suffix .npy)")
    p.add_argument("--serve", action="store_true",
                   help="keep the compiled pipeline loaded and speak JSON lines on stdin/stdout "
                        "(like benchmarks/worker.py); --runs, --warmup and --out are ignored")
    p.add_argument("--export-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.export_only:
        needed = ("latents",) if args.serve else ("latents", "out")
        missing = [f"--{n}" for n in needed if getattr(args, n) is None]
        if missing:
            p.error("the following arguments are required: " + ", ".join(missing))
        if args.height % 8 or args.width % 8:
            p.error("--height and --width must be multiples of 8")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export_only:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
        info = export_ir(Path(args.model), Path(args.ir_dir))
        info["peak_rss_bytes"] = _maxrss_bytes(resource.RUSAGE_SELF)
        sys.stdout.flush()
        print(json.dumps(info))
        return 0
    if args.serve:
        return serve(args)
    result = benchmark(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"[bench] median {result['median_s']:.3f} s over {len(result['runs'])} runs; "
        f"stages {', '.join(f'{k} {v:.3f}' for k, v in result['stage_medians_s'].items() if v is not None)}; "
        f"load {result['load_s']:.2f} s, compile {result['compile_s']:.2f} s; "
        f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB -> {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
