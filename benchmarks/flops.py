"""How close each stage comes to the machine: FLOPs counted from the exported graph, and a matmul probe.

FLOPs are those of convolutions and matrix products (multiply and add count as two), read from the ONNX graph
with its static shapes; element-wise work is left out, so a stage's fraction of peak is a lower bound.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _dims(value_info) -> list[int]:
    return [d.dim_value for d in value_info.type.tensor_type.shape.dim]


def graph_flops(path: Path) -> int:
    """Convolution and matmul FLOPs of one ONNX model (weights are not loaded)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*graph.input, *graph.output, *graph.value_info]}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if weight and out:  # out: N, Cout, H, W; weight: Cout, Cin/groups, kh, kw
                total += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                k = (
                    a[0]
                    if node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
                    else a[-1]
                )
                total += 2 * int(np.prod(out)) * k
    return total


def stage_flops(artifacts_root: Path, manifest: dict) -> dict[str, int]:
    """FLOPs per component, from the ONNX artifacts (empty when they were not exported)."""
    if "onnx" not in manifest["formats"]:
        return {}
    return {
        name: graph_flops(artifacts_root / entry["files"]["onnx"][0]) for name, entry in manifest["components"].items()
    }


def matmul_peak(threads: int | None, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Achievable matmul throughput of this machine in TFLOP/s (float32 and bfloat16, PyTorch, `threads`)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    peaks = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
        peaks[name] = 2 * size**3 / min(times) / 1e12
    return peaks
