"""How close each stage comes to the machine: FLOPs counted from the exported graph, and a matmul probe.

FLOPs are those of convolutions, matrix products and attention (multiply and add count as two), read from the
OpenVINO IR, where every shape is static; element-wise work is left out, so a fraction of peak is a lower bound.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _shape(port) -> list[int]:
    return [d.get_length() for d in port.get_partial_shape()]


def op_flops(op) -> int:
    """FLOPs of one node of a static-shaped OpenVINO model: convolutions (transposed ones too), matrix products and
    attention; 0 for anything else."""
    kind = op.get_type_name()
    if kind in ("Convolution", "GroupConvolution"):
        weight = _shape(op.input(1))  # Cout, Cin, kh, kw (GroupConvolution: G, Cout/G, Cin/G, kh, kw)
        return 2 * int(np.prod(_shape(op.output(0)))) * int(np.prod(weight[-3:]))
    if kind == "ConvolutionBackpropData":  # each input element scatters into Cout x kh x kw outputs
        weight = _shape(op.input(1))  # Cin, Cout, kh, kw
        return 2 * int(np.prod(_shape(op.input(0)))) * int(np.prod(weight[1:]))
    if kind == "MatMul":
        a = _shape(op.input(0))
        k = a[-2] if op.get_attributes()["transpose_a"] else a[-1]
        return 2 * int(np.prod(_shape(op.output(0)))) * k
    if kind == "ScaledDotProductAttention":
        q, k = _shape(op.input(0)), _shape(op.input(1))  # ..., L, E and ..., S, E
        return 2 * 2 * int(np.prod(q)) * k[-2]  # Q K^T and the weighted sum of V
    return 0


def graph_flops(xml: Path) -> int:
    """Convolution, matmul and attention FLOPs of one OpenVINO IR, whose shapes are all static."""
    import openvino as ov

    return sum(op_flops(op) for op in ov.Core().read_model(str(xml)).get_ordered_ops())


def stage_flops(artifacts_root: Path, manifest: dict) -> dict[str, int]:
    """FLOPs per component, from the OpenVINO artifacts (empty when they were not exported)."""
    if "openvino" not in manifest["formats"]:
        return {}
    return {
        name: graph_flops(artifacts_root / entry["files"]["openvino"][0])
        for name, entry in manifest["components"].items()
    }


def per_stage(flops: dict[str, int]) -> dict[str, int]:
    """Component FLOPs grouped as the pipeline's stages: both SDXL text encoders count as text encoding."""
    text = sum(v for k, v in flops.items() if k.startswith("text_encoder"))
    return {"text_encoder": text, "unet": flops["unet"], "vae_decoder": flops["vae_decoder"]}


def matmul_peak(threads: int | None, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Achievable matmul throughput in TFLOP/s (TOP/s for int8) with PyTorch on `threads` threads:
    float32, bfloat16 and, where this torch build has a CPU kernel for it, int8 (int32 accumulation)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    kernels = {
        "float32": (torch.mm, lambda: torch.randn(size, size)),
        "bfloat16": (torch.mm, lambda: torch.randn(size, size, dtype=torch.bfloat16)),
        "int8": (getattr(torch, "_int_mm", None), lambda: torch.randint(-128, 128, (size, size), dtype=torch.int8)),
    }
    peaks = {}
    for name, (mm, make) in kernels.items():
        a, b = make(), make()
        try:
            mm(a, b)
        except (TypeError, RuntimeError, NotImplementedError):  # no int8 kernel in this build
            continue
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(a, b)
            times.append(time.perf_counter() - t0)
        peaks[name] = 2 * size**3 / min(times) / 1e12
    return peaks
