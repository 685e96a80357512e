"""Every backend against diffusers' own pipelines on the same weights, scheduler and noise (fp32, max |diff| <= 1e-3).

The torch backend and its references run on --torch-device (default cpu; cuda on a GPU), the others on the CPU.
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from conftest import BACKENDS, FAMILY_MODELS, SIZE, assert_not_degenerate
from PIL import Image

from export.replicas import replica_path
from turbo_runtime.pipeline import TurboPipeline, load_image
from turbo_runtime.sampler import SCHEDULERS, NoiseSource

TOLERANCE = 1e-3
PROMPT = "a red fox in the snow"
# Modules whose randn_tensor draws the img2img noise and the ancestral noise.
NOISE_MODULES = (
    "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
)
PIPELINES = {
    "sd-turbo": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sdxl-turbo": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "sd1": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"),
    "sdxl": ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
    "sdxl-refiner": (None, "StableDiffusionXLImg2ImgPipeline"),
}
TURBO = ("sd-turbo", "sdxl-turbo")
# Guided requests: plain guidance, a negative prompt, and guidance rescale.
GUIDED = {
    "sd1": [dict(guidance_scale=7.5), dict(guidance_scale=4.0, negative_prompt="blurry", guidance_rescale=0.7)],
    "sdxl": [dict(guidance_scale=5.0), dict(guidance_scale=3.0, negative_prompt="blurry")],
}


def init_image() -> Image.Image:
    """A deterministic picture with edges and gradients."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([x, y, ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(float)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def device_of(torch_device):
    """backend -> the device it and its diffusers reference run on."""
    return lambda backend: torch_device if backend == "torch" else "cpu"


@pytest.fixture(scope="session")
def reference_pipes():
    """(family, device) -> (text-to-image, image-to-image) diffusers pipelines on the tiny replica, loaded on first
    use."""
    made = {}

    def get(family: str, device: str = "cpu"):
        if (family, device) not in made:
            t2i, i2i = PIPELINES[family]
            img = getattr(diffusers, i2i).from_pretrained(replica_path(FAMILY_MODELS[family])).to(device)
            img.set_progress_bar_config(disable=True)
            base = getattr(diffusers, t2i).from_pipe(img) if t2i else None
            if base is not None:
                base.set_progress_bar_config(disable=True)
            made[family, device] = (base, img)
        return made[family, device]

    return get


@pytest.fixture(scope="session")
def turbo_pipes(artifacts_of, device_of):
    made = {}

    def get(family: str, backend: str, dtype: str | None = None) -> TurboPipeline:
        # f32 on OpenVINO: the CPU plugin would otherwise pick bf16 on this hardware.
        dtype = dtype or ("float32" if backend != "onnxruntime" else None)
        if (family, backend, dtype) not in made:
            device = device_of(backend) if backend == "torch" else None
            made[family, backend, dtype] = TurboPipeline.from_artifacts(
                artifacts_of[family], backend, device=device, dtype=dtype
            )
        return made[family, backend, dtype]

    return get


def feed_noise(monkeypatch, source: NoiseSource) -> None:
    """Make diffusers draw its noise from `source`, in the order our loop draws it."""
    import importlib

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(source.normal(tuple(shape))).to(device=device, dtype=dtype or torch.float32)

    for name in NOISE_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "randn_tensor", randn_tensor)


def with_scheduler(pipe, name: str | None):
    """The diffusers pipeline with its scheduler switched as --scheduler NAME switches ours."""
    if name is None:
        return pipe
    cls = getattr(diffusers, SCHEDULERS[name])
    return type(pipe).from_pipe(pipe, scheduler=cls.from_config(pipe.scheduler.config))


def diffusers_text_to_image(pipe, monkeypatch, seed: int, steps: int, size: int = SIZE, **kwargs) -> np.ndarray:
    """diffusers' text-to-image on the initial latents and per-step noise our loop draws from `seed`."""
    source = NoiseSource(seed)
    with torch.no_grad():
        latents = torch.from_numpy(source.normal((1, 4, size // 8, size // 8)))
        feed_noise(monkeypatch, source)
        return pipe(
            PROMPT, num_inference_steps=steps, latents=latents, height=size, width=size, output_type="np", **kwargs
        ).images


def reference(
    pipes, family, monkeypatch, seed, steps, image=None, strength=None, scheduler=None, device="cpu", **guidance
):
    base, img2img = pipes(family, device)
    guidance.setdefault("guidance_scale", 0.0)
    if image is None:
        return diffusers_text_to_image(with_scheduler(base, scheduler), monkeypatch, seed, steps, **guidance)
    source = NoiseSource(seed)
    with torch.no_grad():
        # diffusers samples from the VAE posterior; our encoder gives its mean, so hand diffusers that mean.
        pixels = torch.from_numpy(load_image(image, SIZE, SIZE)).to(device)
        mean = img2img.vae.encode(pixels).latent_dist.mean * img2img.vae.config.scaling_factor
        feed_noise(monkeypatch, source)
        return with_scheduler(img2img, scheduler)(
            PROMPT, image=mean, strength=strength, num_inference_steps=steps, output_type="np", **guidance
        ).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", TURBO)
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_text_to_image_equals_diffusers(reference_pipes, turbo_pipes, device_of, monkeypatch, family, backend, steps):
    expected = reference(reference_pipes, family, monkeypatch, seed=11, steps=steps, device=device_of(backend))
    actual = turbo_pipes(family, backend)(PROMPT, num_inference_steps=steps, seed=11, output_type="np").images
    assert actual.shape == expected.shape == (1, SIZE, SIZE, 3)
    assert_not_degenerate(expected)
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", TURBO)
@pytest.mark.parametrize("steps,strength", [(1, 1.0), (2, 0.5), (4, 0.75)])
def test_image_to_image_equals_diffusers(
    reference_pipes, turbo_pipes, device_of, monkeypatch, family, backend, steps, strength
):
    image = init_image()
    device = device_of(backend)
    expected = reference(
        reference_pipes, family, monkeypatch, seed=5, steps=steps, image=image, strength=strength, device=device
    )
    result = turbo_pipes(family, backend)(
        PROMPT, image=image, strength=strength, num_inference_steps=steps, seed=5, output_type="np"
    )
    assert result.steps == int(steps * strength)
    assert_not_degenerate(expected)
    assert np.abs(result.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family,guidance", [(f, g) for f, gs in GUIDED.items() for g in gs])
def test_guided_text_to_image_equals_diffusers(
    reference_pipes, turbo_pipes, device_of, monkeypatch, family, guidance, backend
):
    """SD 1.x with its DPM-Solver++ and SDXL base with Euler, under classifier-free guidance."""
    expected = reference(reference_pipes, family, monkeypatch, seed=3, steps=6, device=device_of(backend), **guidance)
    actual = turbo_pipes(family, backend)(PROMPT, num_inference_steps=6, seed=3, output_type="np", **guidance)
    assert_not_degenerate(expected)
    assert np.abs(actual.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_guidance_in_one_batch_2_call_equals_diffusers(
    reference_pipes, export_tiny, device_of, monkeypatch, family, backend
):
    """Artifacts whose UNet takes both branches at once (turbo-export --unet-batch 2) give the same images."""
    guidance = GUIDED[family][1]
    device = device_of(backend)
    expected = reference(reference_pipes, family, monkeypatch, seed=3, steps=4, device=device, **guidance)
    artifacts = export_tiny(FAMILY_MODELS[family], unet_batch=2)
    pipe = TurboPipeline.from_artifacts(
        artifacts,
        backend,
        device=device if backend == "torch" else None,
        dtype="float32" if backend != "onnxruntime" else None,
    )
    assert pipe.artifacts.unet_batch == 2
    actual = pipe(PROMPT, num_inference_steps=4, seed=3, output_type="np", **guidance).images
    assert np.abs(actual - expected).max() <= TOLERANCE
    unguided = reference(reference_pipes, family, monkeypatch, seed=3, steps=2, device=device, guidance_scale=1.0)
    actual = pipe(PROMPT, num_inference_steps=2, seed=3, output_type="np", guidance_scale=1.0).images
    assert np.abs(actual - unguided).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["sd1", "sdxl", "sdxl-refiner"])
def test_guided_image_to_image_equals_diffusers(reference_pipes, turbo_pipes, device_of, monkeypatch, family, backend):
    image = init_image()
    expected = reference(
        reference_pipes,
        family,
        monkeypatch,
        seed=4,
        steps=5,
        image=image,
        strength=0.6,
        guidance_scale=5.0,
        device=device_of(backend),
    )
    result = turbo_pipes(family, backend)(
        PROMPT, image=image, strength=0.6, num_inference_steps=5, guidance_scale=5.0, seed=4, output_type="np"
    )
    assert result.steps == 3
    assert_not_degenerate(expected)
    assert np.abs(result.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("family,scheduler", [("sdxl", "dpm++2m"), ("sd1", "euler-ancestral"), ("sd1", "euler")])
def test_switched_scheduler_equals_diffusers(reference_pipes, turbo_pipes, monkeypatch, family, scheduler):
    """--scheduler NAME equals diffusers with NAME's class made from the model's scheduler config."""
    expected = reference(reference_pipes, family, monkeypatch, seed=8, steps=5, scheduler=scheduler, guidance_scale=5.0)
    actual = turbo_pipes(family, "onnxruntime")(
        PROMPT, num_inference_steps=5, guidance_scale=5.0, seed=8, scheduler=scheduler, output_type="np"
    )
    assert np.abs(actual.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
def test_refiner_ensemble_equals_diffusers(reference_pipes, turbo_pipes, device_of, monkeypatch, backend):
    """SDXL base to denoising_end, latents handed to the refiner from denoising_start (ensemble of experts)."""
    base, _ = reference_pipes("sdxl", device_of(backend))
    _, refiner = reference_pipes("sdxl-refiner", device_of(backend))
    source = NoiseSource(9)
    with torch.no_grad():
        latents = torch.from_numpy(source.normal((1, 4, SIZE // 8, SIZE // 8)))
        feed_noise(monkeypatch, source)
        handed = base(
            PROMPT,
            num_inference_steps=8,
            denoising_end=0.7,
            latents=latents,
            height=SIZE,
            width=SIZE,
            output_type="latent",
        ).images
        expected = refiner(PROMPT, image=handed, num_inference_steps=8, denoising_start=0.7, output_type="np").images
        handed = handed.cpu()
    ours = turbo_pipes("sdxl", backend)
    ours_handed = ours(PROMPT, num_inference_steps=8, seed=9, denoising_end=0.7, output_type="latent").images
    assert np.abs(ours_handed - handed.numpy()).max() <= TOLERANCE * max(1.0, float(handed.abs().max()))
    result = ours(
        PROMPT,
        num_inference_steps=8,
        seed=9,
        refiner=turbo_pipes("sdxl-refiner", backend),
        high_noise_frac=0.7,
        output_type="np",
    )
    assert result.steps == 8
    # Of the 8 "leading" timesteps (876, 751, ..., 1) the base takes those >= 300, the refiner the rest.
    assert len(result.timings["unet"]) == 5 and len(result.timings["refiner_unet"]) == 3
    assert_not_degenerate(expected)
    assert np.abs(result.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("family", list(TURBO) + list(GUIDED))
def test_parity_is_sensitive_to_the_prompt(reference_pipes, turbo_pipes, monkeypatch, family):
    """The tolerance is far below what a different conditioning changes, so the parity tests can fail."""
    guidance = GUIDED.get(family, [{}])[0]
    expected = reference(reference_pipes, family, monkeypatch, seed=11, steps=2, **guidance)
    other = turbo_pipes(family, "onnxruntime")(
        "a blue fox", num_inference_steps=2, seed=11, output_type="np", **guidance
    ).images
    assert np.abs(other - expected).max() > 10 * TOLERANCE


@pytest.mark.parametrize("family", list(GUIDED))
def test_guidance_changes_the_image(turbo_pipes, family):
    """Guided and unguided runs differ, so the guided parity tests test guidance."""
    pipe = turbo_pipes(family, "onnxruntime")
    guided = pipe(PROMPT, num_inference_steps=2, seed=1, guidance_scale=7.0, output_type="np").images
    plain = pipe(PROMPT, num_inference_steps=2, seed=1, guidance_scale=1.0, output_type="np").images
    assert np.abs(guided - plain).max() > 10 * TOLERANCE


def test_sdxl_images_carry_the_watermark_as_in_diffusers(export_tiny, monkeypatch):
    """At 256 px and up diffusers watermarks SDXL images (invisible-watermark is installed for the tests): so do we."""
    size = 256
    pipe = TurboPipeline.from_artifacts(export_tiny("tiny-sdxl-turbo", formats=("onnx",), size=size), "onnxruntime")
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(replica_path("tiny-sdxl-turbo"))
    ref.set_progress_bar_config(disable=True)
    assert ref.watermark is not None
    expected = diffusers_text_to_image(ref, monkeypatch, seed=2, steps=1, size=size, guidance_scale=0.0)
    marked = pipe(PROMPT, num_inference_steps=1, seed=2, output_type="np").images
    plain = pipe(PROMPT, num_inference_steps=1, seed=2, output_type="np", watermark=False).images
    assert np.abs(marked - expected).max() <= TOLERANCE
    assert np.abs(plain - expected).max() > 10 * TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", TURBO)
def test_tiny_vae_equals_diffusers_with_autoencoder_tiny(export_tiny, device_of, monkeypatch, family, backend):
    """--vae tiny: diffusers' pipeline given the same AutoencoderTiny, text-to-image and image-to-image."""
    t2i, i2i = PIPELINES[family]
    device = device_of(backend)
    tiny = diffusers.AutoencoderTiny.from_pretrained(replica_path("tiny-taesd"))
    base = getattr(diffusers, t2i).from_pretrained(replica_path(FAMILY_MODELS[family]), vae=tiny).to(device)
    base.set_progress_bar_config(disable=True)
    img2img = getattr(diffusers, i2i).from_pipe(base, vae=tiny)
    img2img.set_progress_bar_config(disable=True)
    artifacts = export_tiny(FAMILY_MODELS[family], vae="tiny")
    pipe = TurboPipeline.from_artifacts(
        artifacts,
        backend,
        device=device if backend == "torch" else None,
        dtype="float32" if backend != "onnxruntime" else None,
    )
    assert pipe.artifacts.manifest["vae"]["id"] == "tiny-taesd"
    expected = diffusers_text_to_image(base, monkeypatch, seed=6, steps=2, guidance_scale=0.0)
    actual = pipe(PROMPT, num_inference_steps=2, seed=6, output_type="np").images
    assert_not_degenerate(expected)
    assert np.abs(actual - expected).max() <= TOLERANCE
    image = init_image()
    source = NoiseSource(7)
    with torch.no_grad():
        pixels = torch.from_numpy(load_image(image, SIZE, SIZE)).to(device)
        encoded = tiny.encode(pixels).latents * tiny.config.scaling_factor
        feed_noise(monkeypatch, source)
        expected = img2img(PROMPT, image=encoded, strength=0.5, num_inference_steps=2, guidance_scale=0.0,
                           output_type="np").images  # fmt: skip
    actual = pipe(PROMPT, image=image, strength=0.5, num_inference_steps=2, seed=7, output_type="np").images
    assert np.abs(actual - expected).max() <= TOLERANCE


def psnr_db(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of two images in [0, 1] once made uint8, as they are saved."""
    a, b = ((x * 255).round() for x in (image, reference))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("family", TURBO)
def test_torch_low_precision_drift(turbo_pipes, torch_device, record_property, family):
    """float16 on CUDA (bfloat16 on the CPU) against float32 on the same latents. The PSNR is recorded for
    benchmarks/gpu_check.py to report; the floor catches a broken cast, it is not the quality bound (40 dB, checked
    on the full-size replicas there)."""
    low = "float16" if torch_device.startswith("cuda") else "bfloat16"
    expected = turbo_pipes(family, "torch")(PROMPT, num_inference_steps=2, seed=11, output_type="np").images
    actual = turbo_pipes(family, "torch", low)(PROMPT, num_inference_steps=2, seed=11, output_type="np").images
    psnr = psnr_db(actual, expected)
    record_property("dtype", low)
    record_property("psnr_db", round(psnr, 2))
    assert_not_degenerate(actual)
    assert psnr >= 30.0
