"""Exact rewrites of two diffusers layers into forms a CPU runs faster, applied while a component is traced.

Each computes the same function as the layer it replaces (up to float rounding); the export checks the traced
graph against the untouched PyTorch module. Measured on the SD-Turbo VAE decoder at 512x512 with OpenVINO
(benchmarks/README.md, "Tuning by stage") and ONNX Runtime ("ONNX Runtime: the upsamplers as four output phases").

- GroupNorm with per-channel statistics. A framework's group norm reshapes (N, C, H, W) into (N, G, C/G * H * W)
  to normalise, which forces a planar memory layout: OpenVINO's CPU plugin reorders every activation from the
  blocked layout its AMX convolutions use and back, around each of the decoder's 30 group norms. Computing the
  mean and variance per channel over H, W and averaging them over each group on the (N, C, 1, 1) statistics
  gives the same result with reductions and element-wise ops that keep any layout.
- Nearest 2x upsampling followed by a 3x3 convolution, computed on the low-resolution input. Upsampled
  neighbours repeat the same input pixel, so each output pixel sees only a 2x2 window of the input, with the 3x3
  kernel's taps summed: 16 multiply-adds per input pixel and channel pair instead of 36, and no upsampled tensor
  in memory. For OpenVINO it is one stride-2 transposed convolution (4x4 kernel). That form gains nothing on ONNX
  Runtime's CPU provider, so the ONNX graph computes the four output phases (even or odd row and column) as one
  2x2 convolution with four times the output channels and interleaves them (DepthToSpace). ONNX Runtime's graph
  optimizer rejects the GroupNorm rewrite: the ONNX graph keeps the framework's group norm. The int8 VAE decoder
  of OpenVINO's graphs goes through ONNX Runtime's quantizer, which quantizes convolutions: its ONNX graph has
  the four phases and OpenVINO's group norms.
"""

from __future__ import annotations

import types
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

# How the 3 taps of a 3x3 kernel (dy = -1, 0, 1) along one axis sum into the 4 taps of the equivalent stride-2
# transposed convolution: output row 2i reads input rows i - 1 (tap 3: w[-1]) and i (tap 1: w[0] + w[1]); output
# row 2i + 1 reads rows i (tap 2: w[-1] + w[0]) and i + 1 (tap 0: w[1]).
_TRANSPOSED_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
# The same sums per output phase, over a 2x2 window of the input padded by one: even rows read padded rows i, i + 1
# (input rows i - 1: w[-1], and i: w[0] + w[1]), odd rows padded rows i + 1, i + 2 (i: w[-1] + w[0], i + 1: w[1]).
_PHASE_TAPS = _TRANSPOSED_TAPS[torch.tensor([[3, 1], [2, 0]])]  # (phase, window tap, 3x3 tap)


def _group_norm(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    n, c, groups = x.shape[0], x.shape[1], self.num_groups
    spatial = tuple(range(2, x.dim()))
    ones = (1,) * len(spatial)

    def per_group(stat: torch.Tensor) -> torch.Tensor:  # (N, C, 1, ...) per channel -> its group's, per channel
        grouped = stat.reshape(n, groups, c // groups).mean(-1, keepdim=True)
        return grouped.expand(n, groups, c // groups).reshape(n, c, *ones)

    centered = x - per_group(x.mean(dim=spatial, keepdim=True))
    variance = per_group((centered * centered).mean(dim=spatial, keepdim=True))
    scale = torch.rsqrt(variance + self.eps)
    if self.affine:
        return centered * (scale * self.weight.view(1, c, *ones)) + self.bias.view(1, c, *ones)
    return centered * scale


def _conv(upsample: nn.Module) -> nn.Conv2d:
    return upsample.conv if upsample.name == "conv" else upsample.Conv2d_0  # diffusers' two spellings


def transposed_weights(conv: nn.Conv2d) -> torch.Tensor:
    """The (C_in, C_out, 4, 4) kernel of the stride-2 transposed convolution equal to conv3x3(upsample2x(x))."""
    taps = _TRANSPOSED_TAPS.to(conv.weight.dtype)
    return torch.einsum("ky,oiyx,lx->iokl", taps, conv.weight, taps)


def phase_weights(conv: nn.Conv2d) -> torch.Tensor:
    """The (4 x C_out, C_in, 2, 2) kernel whose output channel p * C_out + o is output channel o of
    conv3x3(upsample2x(x)) at the phase p = 2 * (row parity) + (column parity), from a window offset by the phase."""
    taps = _PHASE_TAPS.to(conv.weight.dtype)
    kernel = torch.einsum("aky,oiyx,blx->aboikl", taps, conv.weight, taps)
    return kernel.reshape(4 * conv.out_channels, conv.in_channels, 2, 2)


def _upsample_transposed(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(hidden_states, self.rewritten_weight, self.rewritten_bias, stride=2, padding=1)


def _upsample_phases(self, hidden_states: torch.Tensor) -> torch.Tensor:
    n, _, h, w = hidden_states.shape
    phases = F.conv2d(hidden_states, self.rewritten_weight, self.rewritten_bias, padding=1)
    # (n, 4c, h + 1, w + 1): output pixel (2i + a, 2j + b) is phases[:, pc : (p + 1)c, i + a, j + b], p = 2a + b
    c = phases.shape[1] // 4
    windows = [phases[:, p * c : (p + 1) * c, p // 2 : p // 2 + h, p % 2 : p % 2 + w] for p in range(4)]
    return F.pixel_shuffle(torch.stack(windows, 2).reshape(n, 4 * c, h, w), 2)  # channel o * 4 + p -> its pixel


def _phase_bias(conv: nn.Conv2d) -> torch.Tensor | None:
    return None if conv.bias is None else conv.bias.repeat(4)


# format -> the rewritten convolution's weights and bias (buffers, so that they trace as initializers), its forward
_UPSAMPLE = {
    "openvino": (transposed_weights, lambda conv: conv.bias, _upsample_transposed),
    "onnx": (phase_weights, _phase_bias, _upsample_phases),
}


def _upsample(rewritten):
    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        h, w = hidden_states.shape[-2:]
        if output_size is not None and tuple(output_size) != (2 * h, 2 * w):
            return type(self).forward(self, hidden_states, output_size, *args, **kwargs)
        return rewritten(self, hidden_states)

    return forward


def _is_plain_upsample(module: nn.Module) -> bool:
    """diffusers' Upsample2D in its common form: nearest 2x, then a 3x3 convolution with padding 1, no norm."""
    if type(module).__name__ != "Upsample2D" or not module.use_conv or module.use_conv_transpose:
        return False
    conv = _conv(module)
    return (
        module.interpolate
        and module.norm is None
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


@contextmanager
def cpu_friendly(module: nn.Module, fmt: str, group_norm: bool | None = None):
    """Within the block, `module`'s plain 2x upsamplers (and, for OpenVINO, its group norms) trace as their
    CPU-friendly equivalents for the format `fmt` ("openvino" or "onnx"); `group_norm` overrides the format's
    choice (an ONNX graph that OpenVINO will run)."""
    norms = fmt == "openvino" if group_norm is None else group_norm
    weights, bias, rewritten = _UPSAMPLE[fmt]
    patched = []
    for sub in module.modules():
        if isinstance(sub, nn.GroupNorm) and norms:
            sub.forward = types.MethodType(_group_norm, sub)
            patched.append(sub)
        elif _is_plain_upsample(sub):
            sub.register_buffer("rewritten_weight", weights(_conv(sub)).detach(), persistent=False)
            b = bias(_conv(sub))
            sub.register_buffer("rewritten_bias", None if b is None else b.detach(), persistent=False)
            sub.forward = types.MethodType(_upsample(rewritten), sub)
            patched.append(sub)
    try:
        yield module
    finally:
        for sub in patched:
            del sub.forward
            sub._buffers.pop("rewritten_weight", None)
            sub._buffers.pop("rewritten_bias", None)
