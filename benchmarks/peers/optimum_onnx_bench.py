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
import sys
import time
from pathlib import Path

import peer_common  # this folder's shared code; also sets the offline HF environment
from peer_common import STAGES, StageTimer


PIPELINE_NAME = "optimum-onnx ORTStableDiffusionPipeline"
ONNX_MARKER = Path("unet") / "model.onnx"
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


def _has_export(onnx_dir: Path) -> bool:
    return (onnx_dir / ONNX_MARKER).is_file() and (onnx_dir / "model_index.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# Export (runs in a child process: `--export-only`)
# --------------------------------------------------------------------------------------------------------------


TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")


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
    return peer_common.prepare_source(model, scratch, tok_fixes=_tokenizer_class_fix(model, index))


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
    return peer_common.run_export_child(__file__, model, onnx_dir, threads, relay_stdout=True)


# --------------------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------------------


def _ensure_export(args) -> dict | None:
    """Export to ONNX once (child process) unless ir_dir already holds an export; return the export info or None."""
    return peer_common.ensure_export(args, _has_export(Path(args.ir_dir)), "ONNX export", run_export_child)


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

    peer_common.check_latents(args, latents, pipe)

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
    call_kwargs = peer_common.call_kwargs(args, latents)
    return {
        "pipe": pipe,
        "timers": timers,
        "call_kwargs": call_kwargs,
        "load_s": load_s,
        "sessions": sessions,
        "precision": precision,
    }


def benchmark(args) -> dict:
    onnx_dir = Path(args.ir_dir)
    result: dict = {"pipeline": PIPELINE_NAME}

    export_info = _ensure_export(args)
    result["export_s"] = export_info["export_s"] if export_info else None
    result["export"] = export_info
    result["export_workarounds"] = peer_common.export_workarounds(onnx_dir)

    t0 = time.perf_counter()
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401  (timed import)

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    result["versions"] = peer_common.versions(VERSION_PACKAGES)

    latents = peer_common.load_latents(args.latents)
    state = _load(args, latents)
    pipe, timers, call_kwargs = state["pipe"], state["timers"], state["call_kwargs"]

    runs, stages, stage_calls, images = peer_common.timed_runs(
        args, pipe, timers, lambda: dict(call_kwargs, latents=torch.from_numpy(latents.copy()))
    )
    image_path = peer_common.save_image(args, images)

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
            "peak_rss_bytes": peer_common.maxrss_bytes(resource.RUSAGE_SELF),
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


def serve(args) -> int:
    """Keep the pipeline's sessions in memory and speak JSON lines, like benchmarks/worker.py: print
    {"event": "ready", "load_s", "precision"} once loaded, answer each {"cmd": "run", "save": PATH|null} with
    {"event": "run", "e2e_s", "stages"}, and {"cmd": "quit"} (or end of input) with
    {"event": "exit", "peak_rss_bytes"}."""
    proto = peer_common.protocol_stdout()
    emit = peer_common.emitter(proto)

    _ensure_export(args)  # child process: its memory does not count here
    t0 = time.perf_counter()
    import torch
    from optimum.onnxruntime import ORTStableDiffusionPipeline  # noqa: F401

    import_s = time.perf_counter() - t0
    torch.set_num_threads(args.threads)
    latents = peer_common.load_latents(args.latents)
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

    peer_common.serve_loop(emit, pipe, timers, call_kwargs, latents)
    emit(event="exit", peak_rss_bytes=peer_common.maxrss_bytes(resource.RUSAGE_SELF))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    peer_common.add_arguments(
        p,
        ir_dir_help="ONNX export folder: exported here on first use, reused after (name kept from "
        "optimum_intel_bench.py)",
        precision_help="accepted for compatibility with optimum_intel_bench.py and recorded; ONNX Runtime on CPU "
        "runs the exported fp32 graph either way",
        serve_help="keep the pipeline loaded and speak JSON lines on stdin/stdout "
        "(like benchmarks/worker.py); --runs, --warmup and --out are ignored",
    )
    args = p.parse_args(argv)
    peer_common.check_arguments(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.export_only:
        # Keep library chatter off stdout: the parent reads the last stdout line as the JSON result.
        proto = peer_common.protocol_stdout()
        peer_common.set_torch_threads(args.threads)
        info = export_onnx(Path(args.model), Path(args.ir_dir))
        info["peak_rss_bytes"] = peer_common.maxrss_bytes(resource.RUSAGE_SELF)
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
