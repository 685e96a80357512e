"""The torch backend's tuning options (compile_mode, cuda_graphs, channels_last) and devices, on the CPU.

What needs CUDA (CUDA graphs, float16, torch.compile's timings) is checked by benchmarks/gpu_check.py on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from turbo_runtime.backends import torch_backend
from turbo_runtime.errors import BackendUnavailable, InputError
from turbo_runtime.pipeline import TurboPipeline

PROMPT = "a red fox in the snow"


@pytest.mark.parametrize(
    "backend,options,message",
    [
        ("onnxruntime", dict(compile_mode="default"), "compile_mode: options of the torch backend, not of onnxruntime"),
        ("openvino", dict(cuda_graphs=True, channels_last=True), "cuda_graphs, channels_last: options of the torch"),
        (
            "torch",
            dict(compile_mode="fast"),
            "unknown torch.compile mode 'fast'; choose from: default, reduce-overhead",
        ),
        ("torch", dict(cuda_graphs=True, compile_mode="default"), "give compile_mode 'reduce-overhead' alone"),
        ("torch", dict(cuda_graphs=True, device="cpu"), "cuda_graphs needs a CUDA device, not cpu"),
        ("torch", dict(device="mps"), "unknown torch device 'mps'; choose from: cpu, cuda, cuda:N"),
        ("torch", dict(device="gpu"), "unknown torch device 'gpu'"),
        ("torch", dict(dtype="float16", device="cpu"), "float16 runs only on CUDA with the torch backend"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_loading(sd_artifacts, monkeypatch, backend, options, message):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(torch_backend, "load_model", no_load)
    with pytest.raises(InputError) as refused:
        TurboPipeline.from_artifacts(sd_artifacts, backend, **options)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA device")
def test_cuda_without_a_cuda_device_says_so(sd_artifacts):
    with pytest.raises(BackendUnavailable, match="--device cuda:1 was asked for but this torch build sees no CUDA"):
        TurboPipeline.from_artifacts(sd_artifacts, "torch", device="cuda:1")


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_channels_last_equals_eager(artifacts_of, family):
    eager = TurboPipeline.from_artifacts(artifacts_of[family], "torch", device="cpu", dtype="float32")
    nhwc = TurboPipeline.from_artifacts(
        artifacts_of[family], "torch", device="CPU", dtype="float32", channels_last=True
    )
    assert nhwc.backend.device == "cpu"
    weight = nhwc.backend._modules["unet"].unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    expected = eager(PROMPT, num_inference_steps=2, seed=3, output_type="np").images
    actual = nhwc(PROMPT, num_inference_steps=2, seed=3, output_type="np").images
    assert np.abs(actual - expected).max() <= 1e-5


class _FakeCompile:
    """Stands in for torch.compile (minutes on two cores): records what was asked and counts the calls."""

    def __init__(self):
        self.asked: list[tuple[str, dict]] = []
        self.calls: dict[str, int] = {}

    def __call__(self, module, **kwargs):
        name = type(module).__name__
        self.asked.append((name, kwargs))
        self.calls[name] = 0

        def compiled(*inputs):
            self.calls[name] += 1
            return module(*inputs)

        return compiled


@pytest.mark.parametrize("family,batches", [("sd-turbo", (1,)), ("sd1", (2,))])
def test_compiled_components_are_compiled_and_warmed_up_in_the_constructor(artifacts_of, monkeypatch, family, batches):
    """Each component is compiled for static shapes and called WARMUP_CALLS times before the first image; the UNet
    takes the one batch its calls use (both branches at once under guidance), and the images stay the same."""
    fake = _FakeCompile()
    monkeypatch.setattr(torch_backend.torch, "compile", fake)
    pipe = TurboPipeline.from_artifacts(artifacts_of[family], "torch", device="cpu", compile_mode="reduce-overhead")
    assert {name for name, _ in fake.asked} == {"TextEncoder", "UNet", "VaeEncoder", "VaeDecoder"}
    assert all(kwargs == dict(mode="reduce-overhead", dynamic=False) for _, kwargs in fake.asked)
    assert set(fake.calls.values()) == {torch_backend.WARMUP_CALLS}
    assert pipe.backend.unet_batches == batches
    eager = TurboPipeline.from_artifacts(artifacts_of[family], "torch", device="cpu")
    requests = [dict(guidance_scale=5.0), dict(guidance_scale=1.0)] if family == "sd1" else [{}]
    for request in requests:  # guided, and a guided family's unguided call, which runs its branch twice
        expected = eager(PROMPT, num_inference_steps=2, seed=5, output_type="np", **request).images
        actual = pipe(PROMPT, num_inference_steps=2, seed=5, output_type="np", **request).images
        assert np.abs(actual - expected).max() <= 1e-6
    assert fake.calls["UNet"] == torch_backend.WARMUP_CALLS + 2 * len(requests)


def test_without_the_vae_encoder_none_is_compiled(sd_artifacts, monkeypatch):
    fake = _FakeCompile()
    monkeypatch.setattr(torch_backend.torch, "compile", fake)
    TurboPipeline.from_artifacts(sd_artifacts, "torch", device="cpu", compile_mode="default", vae_encoder=False)
    assert sorted(name for name, _ in fake.asked) == ["TextEncoder", "UNet", "VaeDecoder"]


def test_compile_failure_names_the_component_in_one_line(sd_artifacts, monkeypatch):
    def broken(module, **kwargs):
        def call(*inputs):
            raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\n(long log)")

        return call

    monkeypatch.setattr(torch_backend.torch, "compile", broken)
    with pytest.raises(BackendUnavailable) as failed:
        TurboPipeline.from_artifacts(sd_artifacts, "torch", device="cpu", compile_mode="default")
    assert str(failed.value) == (
        "torch.compile (mode default) of text_encoder failed on cpu: backend='inductor' raised:"
    )


def test_bfloat16_keeps_the_timestep_in_float32(sd_artifacts):
    """As diffusers hands it to the UNet: in bfloat16, timestep 999 would become 1000 before the time embedding."""
    pipe = TurboPipeline.from_artifacts(sd_artifacts, "torch", device="cpu", dtype="bfloat16")
    seen = []
    unet = pipe.backend._modules["unet"]
    hook = unet.register_forward_pre_hook(lambda module, args: seen.append((args[0].dtype, args[1].dtype, args[1])))
    try:
        pipe(PROMPT, seed=1, output_type="np")
    finally:
        hook.remove()
    (sample_dtype, timestep_dtype, timestep), *_ = seen
    assert sample_dtype == torch.bfloat16 and timestep_dtype == torch.float32
    assert float(timestep[0]) == 999.0
