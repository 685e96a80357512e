#!/usr/bin/env python
"""Benchmark optimum-onnx's ORTStableDiffusionPipeline (ONNX Runtime, CPU) on a diffusers SD/SD-Turbo folder.

Standalone: run it with the optimum-onnx environment described in README.md beside this file (NOT with the
turbo-runtime venv nor the optimum-intel one; they cannot share an environment).

    python optimum_onnx_bench.py --serve --model DIFFUSERS_FOLDER --ir-dir ONNX_DIR --latents latents.npy \
        --prompt "a photo of a cat" --steps 1 --height 512 --width 512 --threads 2 [--precision default|f32]

* If ONNX_DIR holds no ONNX export yet, the diffusers folder is exported once (in a child process, so that the
  export's memory peak does not count in the benchmark's peak RSS) with
  ``ORTStableDiffusionPipeline.from_pretrained(folder, export=True).save_pretrained(ONNX_DIR)`` (fp32 ONNX).
* ONNX_DIR is loaded with CPUExecutionProvider and SessionOptions(intra_op_num_threads=threads,
  inter_op_num_threads=1); only the three parts a text-to-image call uses (text encoder, UNet, VAE decoder) get a
  session (the VAE encoder is not loaded). ONNX Runtime on CPU runs the fp32 graph as is, so ``--precision`` is
  accepted for command-line compatibility with optimum_intel_bench.py and only recorded (both values run fp32).
* ``latents`` are the initial Gaussian noise, as diffusers' ``latents=`` argument (the ORT pipeline is a diffusers
  StableDiffusionPipeline subclass: it takes a torch tensor and multiplies it by ``scheduler.init_noise_sigma``).

Serve mode (``--serve``), the same JSON-lines protocol as optimum_intel_bench.py / benchmarks/worker.py: once
loaded it prints ``{"event": "ready", "load_s": <session creation + pipeline assembly s>, "precision": "float32"}``;
each stdin line ``{"cmd": "run", "save": PATH|null}`` runs the pipeline once and prints
``{"event": "run", "e2e_s": <pipe call + uint8 conversion s>, "stages": {"text_encoder": s, "unet": [s, ...],
"vae_decoder": s}}`` (np.save-ing the N x H x W x 3 uint8 image to PATH first); ``{"cmd": "quit"}`` (or end of
input) prints ``{"event": "exit", "peak_rss_bytes": ...}``. Only protocol lines go to stdout; everything else,
native libraries' output included, goes to stderr.

Without --serve it does a one-shot benchmark (--runs, --warmup, --out) like optimum_intel_bench.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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

PIPELINE_NAME = "optimum-onnx ORTStableDiffusionPipeline"
ONNX_MARKER = Path("unet") / "model.onnx"
STAGES = ("text_encoder", "unet", "vae_decoder")
VERSION_PACKAGES = (
    "optimum-onnx",
    "optimum",
    "onnxruntime",
    "onnx",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "tokenizers",
    "torch",
    "numpy",
)
# ONNX tensor element types -> the name reported as "precision".
ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16"}


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


def _has_export(onnx_dir: Path) -> bool:
    return (onnx_dir / ONNX_MARKER).is_file() and (onnx_dir / "model_index.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# Export (runs in a child process: `--export-only`)
# --------------------------------------------------------------------------------------------------------------


TEXT_ENCODER_DIRS = ("text_encoder", "text_encoder_2")
TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")


def _text_encoder_key_fix(folder: Path) -> dict | None:
    """Key renames that this environment's transformers needs to load folder's text encoder, or None.

    Newer transformers (5.2x, as in the turbo-runtime venv) save CLIPTextModel without the `text_model.` prefix
    ("embeddings.token_embedding.weight"); transformers 4.57.x (pinned by optimum-onnx 0.1.0) expects
    "text_model.embeddings.token_embedding.weight" and, finding none, silently keeps RANDOM weights (its load report
    lists them as unused / newly initialized). Returns {old_key: new_key} when adding the prefix makes the
    checkpoint match the model this transformers builds.
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


def _tokenizer_class_fix(model: Path, index: dict) -> dict:
    """{component: fast class name} for tokenizers this transformers cannot load with the class model_index names.

    transformers 5.x writes CLIPTokenizer folders with tokenizer.json only (in 5.x CLIPTokenizer is the
    tokenizers-backed class); transformers 4.57's CLIPTokenizer is the pure-Python one and needs vocab.json +
    merges.txt, so loading fails. Its CLIPTokenizerFast reads tokenizer.json and tokenizes identically.
    """
    import transformers

    fixes = {}
    for name in TOKENIZER_DIRS:
        entry = index.get(name)
        sub = model / name
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "transformers" and sub.is_dir()):
            continue
        cls_name = entry[1]
        if not cls_name or cls_name.endswith("Fast") or not (sub / "tokenizer.json").is_file():
            continue
        if (sub / "vocab.json").is_file() or (sub / "vocab.txt").is_file() or (sub / "spiece.model").is_file():
            continue
        if getattr(transformers, cls_name + "Fast", None) is not None:
            fixes[name] = cls_name + "Fast"
    return fixes


def _prepare_source(model: Path, scratch: Path) -> tuple[Path, list[str]]:
    """Return a folder to export from: `model` itself, or a shadow copy (symlinks) of it in `scratch` whose text
    encoder checkpoint(s) have their keys renamed and whose model_index.json names fast tokenizer classes, as this
    transformers version needs."""
    index = json.loads((model / "model_index.json").read_text())
    key_fixes = {}
    for name in TEXT_ENCODER_DIRS:
        if (model / name).is_dir():
            renames = _text_encoder_key_fix(model / name)
            if renames:
                key_fixes[name] = renames
    tok_fixes = _tokenizer_class_fix(model, index)
    if not key_fixes and not tok_fixes:
        return model, []
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for entry in model.iterdir():
        if entry.name == "model_index.json" and tok_fixes:
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


def export_onnx(model: Path, onnx_dir: Path) -> dict:
    """Export the diffusers folder to ONNX in onnx_dir; return timings."""
    t0 = time.perf_counter()
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    import_s = time.perf_counter() - t0
    partial = onnx_dir.with_name(onnx_dir.name + ".partial")
    scratch = onnx_dir.with_name(onnx_dir.name + ".src")
    if partial.exists():
        shutil.rmtree(partial)
    t0 = time.perf_counter()
    source, notes = _prepare_source(model.resolve(), scratch)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = ORTStableDiffusionPipeline.from_pretrained(str(source), export=True)
    convert_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pipe.save_pretrained(str(partial))
    save_s = time.perf_counter() - t1
    del pipe
    if source != model.resolve():
        shutil.rmtree(scratch)
    onnx_dir.parent.mkdir(parents=True, exist_ok=True)
    if onnx_dir.exists():  # an empty / unusable folder: replace it
        shutil.rmtree(onnx_dir)
    os.replace(partial, onnx_dir)
    (onnx_dir / "bench_export.json").write_text(
        json.dumps({"source": str(model.resolve()), "workarounds": notes}, indent=2) + "\n"
    )
    return {
        "import_s": import_s,
        "prepare_s": prepare_s,
        "convert_s": convert_s,  # includes loading the diffusers folder with torch and the ONNX export
        "save_s": save_s,
        "export_s": convert_s + save_s,
        "workarounds": notes,
    }


def run_export_child(model: Path, onnx_dir: Path, threads: int) -> dict:
    """Run the export in a child process; return its timings and its peak RSS."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--export-only",
        "--model",
        str(model),
        "--ir-dir",
        str(onnx_dir),
        "--threads",
        str(threads),
    ]
    t0 = time.perf_counter()
    # The child's stdout is captured (its last line is the JSON result); its stderr is ours.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        raise SystemExit(f"export failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    sys.stderr.write("".join(proc.stdout.strip().splitlines(keepends=True)[:-1]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["export_wall_s"] = wall  # includes interpreter start and imports
    info["export_peak_rss_bytes"] = _maxrss_bytes(resource.RUSAGE_CHILDREN)
    return info


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


class StageTimer:
    """Wraps a pipeline part's `forward` (ORTSessionMixin.__call__ calls self.forward, which runs the ONNX Runtime
    session) with a perf_counter timer."""

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


def _ensure_export(args) -> dict | None:
    """Export to ONNX once (child process) unless ir_dir already holds an export; return the export info or None."""
    onnx_dir = Path(args.ir_dir)
    if _has_export(onnx_dir):
        return None
    print(f"[bench] no ONNX export in {onnx_dir}: exporting {args.model} ...", file=sys.stderr, flush=True)
    export_info = run_export_child(Path(args.model), onnx_dir, args.threads)
    print(f"[bench] export took {export_info['export_s']:.1f} s", file=sys.stderr, flush=True)
    return export_info


def _session_options(args):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def _io_types(session) -> dict:
    return {
        "inputs": {i.name: [i.type, i.shape] for i in session.get_inputs()},
        "outputs": {o.name: [o.type, o.shape] for o in session.get_outputs()},
    }


def _load(args, latents) -> dict:
    """Create the ONNX Runtime sessions of the text-to-image parts and assemble the pipeline; wrap the parts with
    stage timers."""
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline

    onnx_dir = Path(args.ir_dir)
    so = _session_options(args)
    t0 = time.perf_counter()
    # vae_encoder=False: a non-None "preloaded model" keeps from_pretrained from opening a session for the VAE
    # encoder (text-to-image never calls it); the pipeline constructor ignores the value.
    pipe = ORTStableDiffusionPipeline.from_pretrained(
        str(onnx_dir),
        export=False,
        provider="CPUExecutionProvider",
        session_options=so,
        use_io_binding=False,
        vae_encoder=False,
    )
    load_s = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    if getattr(pipe, "vae_encoder", None) is not None:
        print("[bench] note: the VAE encoder session was loaded too", file=sys.stderr, flush=True)

    expected = (1, 4, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
    if tuple(latents.shape) != expected:
        raise SystemExit(f"latents {args.latents} have shape {tuple(latents.shape)}, expected {expected}")

    sessions = {}
    for name in STAGES:
        sess = getattr(pipe, name).session
        opts = sess.get_session_options()
        sessions[name] = {
            "providers": sess.get_providers(),
            "intra_op_num_threads": opts.intra_op_num_threads,
            "inter_op_num_threads": opts.inter_op_num_threads,
            "graph_optimization_level": str(opts.graph_optimization_level),
            "io": _io_types(sess),
        }
    unet_sample_type = next(i.type for i in pipe.unet.session.get_inputs() if i.name == "sample")
    precision = ONNX_TYPES.get(unet_sample_type, unet_sample_type)

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
        "load_s": load_s,
        "sessions": sessions,
        "precision": precision,
    }


def benchmark(args) -> dict:
    import numpy as np

    onnx_dir = Path(args.ir_dir)
    result: dict = {"pipeline": PIPELINE_NAME}

    export_info = _ensure_export(args)
    result["export_s"] = export_info["export_s"] if export_info else None
    result["export"] = export_info
    meta = onnx_dir / "bench_export.json"
    result["export_workarounds"] = json.loads(meta.read_text()).get("workarounds") if meta.is_file() else None

    t0 = time.perf_counter()
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401  (timed import)

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    result["versions"] = _versions()

    latents = np.load(args.latents).astype(np.float32, copy=False)
    state = _load(args, latents)
    pipe, timers, call_kwargs = state["pipe"], state["timers"], state["call_kwargs"]

    for _ in range(args.warmup):
        pipe(**dict(call_kwargs, latents=torch.from_numpy(latents.copy())))
    for t in timers.values():
        t.take()

    runs, stages, stage_calls = [], {n: [] for n in STAGES}, {n: [] for n in STAGES}
    images = None
    for i in range(args.runs):
        kwargs = dict(call_kwargs, latents=torch.from_numpy(latents.copy()))
        t0 = time.perf_counter()
        out = pipe(**kwargs)
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
            "onnx_dir": str(onnx_dir.resolve()),
            "settings": {
                "prompt": args.prompt,
                "steps": args.steps,
                "guidance_scale": 0.0,
                "height": args.height,
                "width": args.width,
                "threads": args.threads,
                "precision_arg": args.precision,
                "warmup": args.warmup,
            },
            "precision": state["precision"],
            "sessions": state["sessions"],
            "import_s": import_s,
            "load_s": state["load_s"],
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
                "cpu": platform.processor() or None,
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
    """Keep the pipeline's sessions in memory and speak JSON lines, like benchmarks/worker.py: print
    {"event": "ready", "load_s", "precision"} once loaded, answer each {"cmd": "run", "save": PATH|null} with
    {"event": "run", "e2e_s", "stages"}, and {"cmd": "quit"} (or end of input) with
    {"event": "exit", "peak_rss_bytes"}."""
    proto = _protocol_stdout()

    def emit(**event) -> None:
        proto.write(json.dumps(event) + "\n")
        proto.flush()

    import numpy as np

    _ensure_export(args)  # child process: its memory does not count here
    t0 = time.perf_counter()
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    latents = np.load(args.latents).astype(np.float32, copy=False)
    state = _load(args, latents)
    pipe, timers, call_kwargs = state["pipe"], state["timers"], state["call_kwargs"]
    print(
        f"[bench] serve: import {import_s:.2f} s, load {state['load_s']:.2f} s, precision {state['precision']} "
        f"(--precision {args.precision} ignored: ONNX Runtime CPU runs the fp32 graph); "
        f"sessions {json.dumps({k: {kk: v[kk] for kk in ('providers', 'intra_op_num_threads')} for k, v in state['sessions'].items()})}",
        file=sys.stderr,
        flush=True,
    )
    emit(event="ready", load_s=state["load_s"], precision=state["precision"])

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
    emit(event="exit", peak_rss_bytes=_maxrss_bytes(resource.RUSAGE_SELF))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="diffusers folder (StableDiffusionPipeline layout)")
    p.add_argument("--ir-dir", required=True,
                   help="ONNX export folder: exported here on first use, reused after (name kept from "
                        "optimum_intel_bench.py)")
    p.add_argument("--latents", help=".npy with the initial noise, shape 1 x 4 x H/8 x W/8 float32")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("default", "f32"), default="default",
                   help="accepted for compatibility with optimum_intel_bench.py and recorded; ONNX Runtime on CPU "
                        "runs the exported fp32 graph either way")
    p.add_argument("--out", help="result JSON path (the image goes beside it with suffix .npy)")
    p.add_argument("--serve", action="store_true",
                   help="keep the pipeline loaded and speak JSON lines on stdin/stdout "
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
        # Keep library chatter off stdout: the parent reads the last stdout line as the JSON result.
        proto = _protocol_stdout()
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
        info = export_onnx(Path(args.model), Path(args.ir_dir))
        info["peak_rss_bytes"] = _maxrss_bytes(resource.RUSAGE_SELF)
        proto.write(json.dumps(info) + "\n")
        proto.flush()
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
        f"load {result['load_s']:.2f} s; peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB -> {out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
