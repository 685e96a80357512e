"""Run each exported component beside its PyTorch module on the same inputs and measure the difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from turbo_runtime.errors import ParityError
from turbo_runtime.spec import PARITY_TOLERANCE, ComponentIO


def example_inputs(
    io: ComponentIO, input_ids: np.ndarray, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Inputs for tracing and checking: real token ids, unit-normal latents, a late timestep, SDXL time ids."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in io.inputs:
        if spec.name == "input_ids":
            value = input_ids
        elif spec.name == "timestep":
            value = np.full(spec.shape, 999.0, np.float32)
        elif spec.name == "time_ids":  # original size, crop, then target size or (refiner) an aesthetic score
            ids = [height, width, 0, 0, height, width] if spec.shape[1] == 6 else [height, width, 0, 0, 6.0]
            value = np.array([ids] * spec.shape[0], np.float32)
        elif spec.name == "image":
            value = rng.uniform(-1, 1, spec.shape).astype(np.float32)
        else:
            value = rng.standard_normal(spec.shape, dtype=np.float32)
        out.append(torch.from_numpy(np.ascontiguousarray(value)))
    return tuple(out)


def _as_list(out) -> list[np.ndarray]:
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().float().numpy() for o in outs]


def _run_onnx(path: Path, io: ComponentIO, feed: tuple) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run([t.name for t in io.outputs], {t.name: x.numpy() for t, x in zip(io.inputs, feed)})


def _run_openvino(path: Path, io: ComponentIO, feed: tuple) -> list[np.ndarray]:
    import openvino as ov

    # f32 inference so that the check measures the artifact, not the CPU's default bf16 arithmetic.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({t.name: x.numpy() for t, x in zip(io.inputs, feed)})
    return [result[compiled.output(t.name)] for t in io.outputs]


RUNNERS = {"onnx": _run_onnx, "openvino": _run_openvino}


def compare(reference: list[np.ndarray], actual: list[np.ndarray], precision: str) -> dict:
    """Worst output: max |actual - reference| and that error relative to max(1, max |reference|)."""
    max_abs = rel = 0.0
    for ref, got in zip(reference, actual):
        diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if got.shape == ref.shape else float("inf")
        max_abs = max(max_abs, diff)
        rel = max(rel, diff / max(1.0, float(np.max(np.abs(ref)))))
    return {"max_abs": max_abs, "relative": rel, "tolerance": PARITY_TOLERANCE[precision]}


def check_component(
    component: str, module: torch.nn.Module, example: tuple, io: ComponentIO, paths: dict[str, Path], precision: dict
) -> dict[str, dict]:
    """Parity figures per format; raises ParityError when one is beyond its precision's tolerance."""
    if not paths:  # nothing exported (artifacts for the torch backend alone): nothing to run the module against
        return {}
    with torch.no_grad():
        reference = _as_list(module(*example))
    figures = {}
    for fmt, path in paths.items():
        fig = compare(reference, RUNNERS[fmt](path, io, example), precision[fmt])
        if not fig["relative"] <= fig["tolerance"]:
            raise ParityError(
                f"{component} ({fmt}, {precision[fmt]}) differs from PyTorch by {fig['relative']:.3g} "
                f"(max abs {fig['max_abs']:.3g}), over the tolerance {fig['tolerance']:g}; artifacts not installed"
            )
        figures[fmt] = fig
    return figures
