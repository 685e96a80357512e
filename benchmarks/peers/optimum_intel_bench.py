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
import sys
import time
from pathlib import Path

import peer_common  # this folder's shared code; also sets the offline HF environment
from peer_common import STAGES, StageTimer


PIPELINE_NAME = "optimum-intel OVStableDiffusionPipeline"
IR_MARKER = Path("unet") / "openvino_model.xml"
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


def _has_ir(ir_dir: Path) -> bool:
    return (ir_dir / IR_MARKER).is_file() and (ir_dir / "model_index.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# Export (runs in a child process: `--export-only`)
# --------------------------------------------------------------------------------------------------------------


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
    source, notes = peer_common.prepare_source(model.resolve(), scratch)
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
    return peer_common.run_export_child(__file__, model, ir_dir, threads)


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


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
    return peer_common.ensure_export(args, _has_ir(Path(args.ir_dir)), "IR", run_export_child)


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

    peer_common.check_latents(args, latents, pipe)

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
    call_kwargs = peer_common.call_kwargs(args, latents)
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
    ir_dir = Path(args.ir_dir)
    result: dict = {"pipeline": PIPELINE_NAME}

    # 1. Export once (child process), unless the IR is already there.
    export_info = _ensure_ir(args)
    result["export_s"] = export_info["export_s"] if export_info else None
    result["export"] = export_info
    result["export_workarounds"] = peer_common.export_workarounds(ir_dir)

    t0 = time.perf_counter()
    import torch
    from optimum.intel import OVStableDiffusionPipeline  # noqa: F401  (timed import)

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    result["versions"] = peer_common.versions(VERSION_PACKAGES)

    latents = peer_common.load_latents(args.latents)

    # 2.-4. Load the IR, reshape statically, compile; timers on the parts.
    state = _load_compile(args, latents)
    pipe, timers, call_kwargs, ov_config = state["pipe"], state["timers"], state["call_kwargs"], state["ov_config"]
    load_s, reshape_s, compile_s = state["load_s"], state["reshape_s"], state["compile_s"]
    compile_parts, compiled = state["compile_parts_s"], state["compiled"]
    result["input_shapes"] = state["input_shapes"]

    # 5. Warm-up and timed runs.
    runs, stages, stage_calls, images = peer_common.timed_runs(args, pipe, timers, lambda: call_kwargs)
    image_path = peer_common.save_image(args, images)

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
            "peak_rss_bytes": peer_common.maxrss_bytes(resource.RUSAGE_SELF),
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


def serve(args) -> int:
    """Keep the compiled pipeline in memory and speak JSON lines, like benchmarks/worker.py: print
    {"event": "ready", "load_s", "precision"} once compiled, answer each {"cmd": "run", "save": PATH|null} with
    {"event": "run", "e2e_s", "stages"}, and {"cmd": "quit"} (or end of input) with
    {"event": "exit", "peak_rss_bytes"}."""
    proto = peer_common.protocol_stdout()
    emit = peer_common.emitter(proto)

    _ensure_ir(args)  # child process: its memory does not count here
    t0 = time.perf_counter()
    import torch
    from optimum.intel import OVStableDiffusionPipeline  # noqa: F401

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    latents = peer_common.load_latents(args.latents)
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

    peer_common.serve_loop(emit, pipe, timers, call_kwargs, latents)
    emit(event="exit", peak_rss_bytes=peer_common.maxrss_bytes(resource.RUSAGE_SELF))
    return 0


def _cpu_name() -> str | None:
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME"))
    except Exception:
        return platform.processor() or None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peer_common.add_arguments(
        p,
        ir_dir_help="OpenVINO IR folder: exported here on first use, reused after",
        precision_help="default: OpenVINO's choice (bf16 on AMX/AVX512-BF16 CPUs); f32: force f32 inference",
        serve_help="keep the compiled pipeline loaded and speak JSON lines on stdin/stdout "
        "(like benchmarks/worker.py); --runs, --warmup and --out are ignored",
    )
    args = p.parse_args(argv)
    peer_common.check_arguments(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export_only:
        peer_common.set_torch_threads(args.threads)
        info = export_ir(Path(args.model), Path(args.ir_dir))
        info["peak_rss_bytes"] = peer_common.maxrss_bytes(resource.RUSAGE_SELF)
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
