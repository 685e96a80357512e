"""Where one component's time goes, stage by stage, against the machine; and what int8 would do to the VAE decoder.

    python -m benchmarks.stages ARTIFACTS [--component vae_decoder] [--threads 2] [--int8] [--out stages.json]

One call of the component's OpenVINO IR after a warm-up, timed by OpenVINO's per-node counters, grouped by stage
(the module in the node's name: up_blocks.2, mid_block, ...), each stage with its FLOPs (benchmarks.flops) and its
rate against an OpenVINO matmul probe at the same precision hint on as many threads.

--int8 (VAE decoder): the decoder quantized whole with NNCF, activations calibrated on latents that the
artifacts' own pipeline draws (float32, one step) from export.quantize's prompts, then the same with each stage
left unquantized; every variant decodes latents of other prompts, compared with the float32 decoder as uint8 images
(PSNR, the measure of the full-quality bound in turbo_runtime.auto): which stage, if any, the bound hinges on.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.bench import compare_images
from benchmarks.flops import op_flops
from turbo_runtime.artifacts import Artifacts

STAGE = re.compile(
    r"(mid_block|(?:up|down)_blocks\.\d+|layers\.\d+|conv_in|conv_out|conv_norm_out|post_quant_conv|time_embedding)"
)
TEST_PROMPTS = (
    "a lighthouse on a cliff at dawn",
    "a plate of fruit on a wooden table",
    "a child flying a kite",
    "an abstract painting in blue and orange",
)


def stage_of(node_name: str) -> str:
    found = STAGE.search(node_name)
    return found.group(1) if found else "other"


def _config(threads: int, precision: str | None) -> dict:
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    return config if precision is None else {**config, "INFERENCE_PRECISION_HINT": precision}


def _median_call(request, inputs: dict, repeats: int) -> float:
    request.infer(inputs)  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_probe(threads: int, precision: str, size: int = 2048) -> float:
    """TFLOP/s of one size x size x size matrix product in OpenVINO at `precision` on `threads` threads."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.constant(rng.standard_normal((size, size)).astype(np.float32))
    compiled = ov.Core().compile_model(
        ov.Model([ops.matmul(a, b, False, False)], [a]), "CPU", _config(threads, precision)
    )
    x = rng.standard_normal((size, size)).astype(np.float32)
    return 2 * size**3 / _median_call(compiled.create_infer_request(), {0: x}, 5) / 1e12


def _inputs(model) -> dict:
    """Plausible inputs for every parameter of a static-shaped component (token ids 0, timestep 999)."""
    rng = np.random.default_rng(0)
    inputs = {}
    for param in model.inputs:
        name, shape = param.get_any_name(), tuple(param.get_shape())
        if name == "input_ids":
            inputs[name] = np.zeros(shape, np.int64 if "64" in param.get_element_type().get_type_name() else np.int32)
        elif name == "timestep":
            inputs[name] = np.full(shape, 999.0, np.float32)
        else:
            inputs[name] = rng.standard_normal(shape).astype(np.float32)
    return inputs


def profile(xml: Path, threads: int) -> dict:
    """Seconds and FLOPs per stage of one call of the IR at `xml`, at the plugin's default precision."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    flops: dict[str, int] = defaultdict(int)
    for op in model.get_ordered_ops():
        flops[stage_of(op.get_friendly_name())] += op_flops(op)
    compiled = core.compile_model(model, "CPU", {**_config(threads, None), "PERF_COUNT": True})
    request = compiled.create_infer_request()
    seconds = _median_call(request, _inputs(model), 1)
    times: dict[str, float] = defaultdict(float)
    kinds: dict[str, float] = defaultdict(float)
    for node in request.profiling_info:
        times[stage_of(node.node_name)] += node.real_time.total_seconds()
        kinds[node.node_type] += node.real_time.total_seconds()
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {
        "seconds": seconds,
        "precision": precision.to_string() if isinstance(precision, ov.Type) else str(precision),
        "stages": {s: {"seconds": times[s], "gflop": flops[s] / 1e9} for s in sorted(times, key=lambda s: -times[s])},
        "kernels": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
    }


def pipeline_latents(artifacts: Path, prompts: tuple[str, ...]) -> list[np.ndarray]:
    """The latents the artifacts' own pipeline hands its VAE decoder, one per prompt (OpenVINO, float32)."""
    from turbo_runtime.pipeline import TurboPipeline

    pipe = TurboPipeline.from_artifacts(artifacts, "openvino", dtype="float32", vae_encoder=False)
    return [
        np.asarray(pipe(p, num_inference_steps=1, seed=100 + i, output_type="latent").images, np.float32)
        for i, p in enumerate(prompts)
    ]


def int8_decoders(xml: Path, artifacts: Path, threads: int, samples: int) -> dict:
    """PSNR against the float32 decoder and seconds per call: the plugin's default precision, the decoder in int8,
    and int8 with each stage left unquantized (its FakeQuantize nodes bypassed)."""
    import openvino as ov

    from export.quantize import CALIBRATION_PROMPTS, quantized_model

    core = ov.Core()
    calibration_prompts = CALIBRATION_PROMPTS[:samples]
    latents = pipeline_latents(artifacts, calibration_prompts + TEST_PROMPTS[: max(1, samples // 2)])
    calibration, test = latents[: len(calibration_prompts)], latents[len(calibration_prompts) :]

    def decode(model, precision: str | None = None) -> tuple[list[np.ndarray], float]:
        request = core.compile_model(model, "CPU", _config(threads, precision)).create_infer_request()
        images = []
        for x in test:
            out = request.infer({0: x})[0]
            images.append(np.clip(np.round((out / 2 + 0.5) * 255), 0, 255).astype(np.uint8))
        return images, _median_call(request, {0: test[0]}, 2)

    reference, _ = decode(core.read_model(str(xml)), "f32")
    model = core.read_model(str(xml))
    quantized = quantized_model(model, [{model.inputs[0].get_any_name(): x} for x in calibration], transformer=False)
    stages = sorted({stage_of(op.get_friendly_name()) for op in quantized.get_ordered_ops()} - {"other"})
    results = {}
    for name, model in [("unquantized", core.read_model(str(xml))), ("int8", quantized)] + [
        (f"int8, {stage} unquantized", _without_quantizers(quantized.clone(), stage)) for stage in stages
    ]:
        images, seconds = decode(model)
        results[name] = {
            "psnr_db": compare_images(np.stack(images), np.stack(reference))["psnr_db"],
            "seconds": seconds,
        }
    return results


def _without_quantizers(model, stage: str):
    """`model` with the FakeQuantize nodes feeding `stage`'s nodes (weights and activations) bypassed."""
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        consumers = [t.get_node() for t in op.output(0).get_target_inputs()]
        for node in list(consumers):
            if node.get_type_name() in ("Convert", "Reshape", "Transpose"):  # weight paths
                consumers += [t.get_node() for t in node.output(0).get_target_inputs()]
        if any(stage_of(c.get_friendly_name()) == stage for c in consumers):
            op.output(0).replace(op.input_value(0))
    return model


def table(report: dict) -> str:
    peak = report["probe_tflops"]
    lines = [
        f"{report['component']}: {report['seconds']:.3f} s per call in {report['precision']}, probe {peak:.2f} TFLOP/s",
        "| stage | s | GFLOP | TFLOP/s | of probe |",
        "|---|---|---|---|---|",
    ]
    for stage, s in report["stages"].items():
        rate = s["gflop"] / 1e3 / s["seconds"] if s["seconds"] else 0.0
        lines.append(f"| {stage} | {s['seconds']:.3f} | {s['gflop']:.0f} | {rate:.2f} | {100 * rate / peak:.0f} % |")
    if "int8" in report:
        lines += ["", "| variant | PSNR dB vs float32 | s per call |", "|---|---|---|"]
        lines += [f"| {k} | {v['psnr_db']:.2f} | {v['seconds']:.3f} |" for k, v in report["int8"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("artifacts", type=Path, help="turbo-export folder with OpenVINO IR")
    p.add_argument("--component", default="vae_decoder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--int8", action="store_true", help="VAE decoder: int8 variants against the float32 decoder")
    p.add_argument("--samples", type=int, default=8, help="calibration latents for --int8 (half as many tested)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    args = p.parse_args(argv)
    if args.int8 and args.component != "vae_decoder":
        p.error("--int8 applies to the VAE decoder")
    xml = Artifacts.load(args.artifacts).component_path(args.component, "openvino")
    report = {"component": args.component, "threads": args.threads, **profile(xml, args.threads)}
    report["probe_tflops"] = matmul_probe(args.threads, report["precision"])
    if args.int8:
        report["int8"] = int8_decoders(xml, args.artifacts, args.threads, args.samples)
    print(table(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
