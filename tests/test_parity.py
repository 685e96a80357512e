"""Every backend against diffusers' own pipelines on the same weights, scheduler and noise (fp32, max |diff| <= 1e-3)."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch
from conftest import BACKENDS, FAMILY_MODELS, SIZE, assert_not_degenerate
from PIL import Image

from export.replicas import replica_path
from turbo_runtime.pipeline import TurboPipeline, load_image
from turbo_runtime.sampler import NoiseSource

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
}


def init_image() -> Image.Image:
    """A deterministic picture with edges and gradients."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rgb = np.stack([x, y, ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1).astype(float)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def reference_pipes():
    pipes = {}
    for family, (t2i, i2i) in PIPELINES.items():
        base = getattr(diffusers, t2i).from_pretrained(replica_path(FAMILY_MODELS[family]))
        base.set_progress_bar_config(disable=True)
        img = getattr(diffusers, i2i).from_pipe(base)
        img.set_progress_bar_config(disable=True)
        pipes[family] = (base, img)
    return pipes


@pytest.fixture(scope="session")
def turbo_pipes(artifacts_of):
    made = {}

    def get(family: str, backend: str) -> TurboPipeline:
        if (family, backend) not in made:
            # f32 on OpenVINO: the CPU plugin would otherwise pick bf16 on this hardware.
            dtype = "float32" if backend != "onnxruntime" else None
            made[family, backend] = TurboPipeline.from_artifacts(artifacts_of[family], backend, dtype=dtype)
        return made[family, backend]

    return get


def feed_noise(monkeypatch, source: NoiseSource) -> None:
    """Make diffusers draw its noise from `source`, in the order our loop draws it."""
    import importlib

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.from_numpy(source.normal(tuple(shape))).to(dtype=dtype or torch.float32)

    for name in NOISE_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "randn_tensor", randn_tensor)


def reference(pipes, family, monkeypatch, seed, steps, image=None, strength=None) -> np.ndarray:
    base, img2img = pipes[family]
    source = NoiseSource(seed)
    latent_shape = (1, 4, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        if image is None:
            latents = torch.from_numpy(source.normal(latent_shape))
            feed_noise(monkeypatch, source)
            return base(
                PROMPT,
                num_inference_steps=steps,
                guidance_scale=0.0,
                latents=latents,
                height=SIZE,
                width=SIZE,
                output_type="np",
            ).images
        # diffusers samples from the VAE posterior; our encoder gives its mean, so hand diffusers that mean.
        pixels = torch.from_numpy(load_image(image, SIZE, SIZE))
        mean = base.vae.encode(pixels).latent_dist.mean * base.vae.config.scaling_factor
        feed_noise(monkeypatch, source)
        return img2img(
            PROMPT, image=mean, strength=strength, num_inference_steps=steps, guidance_scale=0.0, output_type="np"
        ).images


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", list(PIPELINES))
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_text_to_image_equals_diffusers(reference_pipes, turbo_pipes, monkeypatch, family, backend, steps):
    expected = reference(reference_pipes, family, monkeypatch, seed=11, steps=steps)
    actual = turbo_pipes(family, backend)(PROMPT, num_inference_steps=steps, seed=11, output_type="np").images
    assert actual.shape == expected.shape == (1, SIZE, SIZE, 3)
    assert_not_degenerate(expected)
    assert np.abs(actual - expected).max() <= TOLERANCE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", list(PIPELINES))
@pytest.mark.parametrize("steps,strength", [(1, 1.0), (2, 0.5), (4, 0.75)])
def test_image_to_image_equals_diffusers(reference_pipes, turbo_pipes, monkeypatch, family, backend, steps, strength):
    image = init_image()
    expected = reference(reference_pipes, family, monkeypatch, seed=5, steps=steps, image=image, strength=strength)
    result = turbo_pipes(family, backend)(
        PROMPT, image=image, strength=strength, num_inference_steps=steps, seed=5, output_type="np"
    )
    assert result.steps == int(steps * strength)
    assert_not_degenerate(expected)
    assert np.abs(result.images - expected).max() <= TOLERANCE


@pytest.mark.parametrize("family", list(PIPELINES))
def test_parity_is_sensitive_to_the_prompt(reference_pipes, turbo_pipes, monkeypatch, family):
    """The tolerance is far below what a different conditioning changes, so the parity tests can fail."""
    expected = reference(reference_pipes, family, monkeypatch, seed=11, steps=1)
    other = turbo_pipes(family, "onnxruntime")("a blue fox", num_inference_steps=1, seed=11, output_type="np").images
    assert np.abs(other - expected).max() > 10 * TOLERANCE
