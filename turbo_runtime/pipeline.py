"""TurboPipeline: tokenizer + backend + sampler, one loop for every backend; text-to-image and image-to-image."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.backends import Backend, BackendOptions, create_backend
from turbo_runtime.errors import InputError
from turbo_runtime.sampler import NoiseSource, Sampler
from turbo_runtime.spec import Family
from turbo_runtime.tokenizer import Tokenizer

OUTPUT_TYPES = ("pil", "np")


@dataclass
class PipelineOutput:
    images: list | np.ndarray  # PIL images, or float32 N x H x W x 3 in [0, 1] for output_type="np"
    seed: int
    steps: int  # denoising steps actually run
    timings: dict[str, float | list[float]] = field(default_factory=dict)  # seconds per stage


def load_image(image, width: int, height: int) -> np.ndarray:
    """A PIL image or image file to NCHW float32 in [-1, 1] at the exported size (Lanczos, as diffusers)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, str | Path):
        try:
            with Image.open(image) as f:
                image = f.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(f"cannot read init image {image}: {e.strerror or e}") from None
    if not isinstance(image, Image.Image):
        raise InputError(f"image must be a PIL image or an image file path, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array.transpose(2, 0, 1)[None] * 2.0 - 1.0).astype(np.float32)


def to_pil(images: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]


def request_defaults(family: Family, steps: int | None, has_image: bool, strength: float | None):
    """Steps and strength left unset: the family's steps; for image-to-image strength 0.5 and enough steps."""
    if has_image and strength is None:
        strength = 0.5
    if steps is None:
        steps = family.default_steps
        if has_image and 0 < strength <= 1:
            steps = max(steps, math.ceil(1 / strength))
    return steps, strength


def check_request(
    artifacts: Artifacts,
    steps,
    guidance_scale: float = 0.0,
    strength: float | None = None,
    has_image: bool = False,
    num_images=1,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "pil",
) -> None:
    """Refuse a request the artifacts cannot serve, before any model is loaded."""
    family = artifacts.family
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"num_inference_steps must be an integer of at least 1, got {steps}")
    if guidance_scale != 0 and not family.guidance:
        raise InputError(
            f"guidance_scale must be 0 for {family.name}: the model was distilled to sample without "
            f"classifier-free guidance (got {guidance_scale})"
        )
    if not isinstance(num_images, int) or num_images < 1:
        raise InputError(f"num_images_per_prompt must be at least 1, got {num_images}")
    exported = (artifacts.height, artifacts.width)
    if (height or exported[0], width or exported[1]) != exported:
        raise InputError(
            f"the artifacts were exported for {exported[0]}x{exported[1]} (height x width), not "
            f"{height or exported[0]}x{width or exported[1]}; export again with --height/--width"
        )
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"unknown output_type {output_type!r}; choose from: {', '.join(OUTPUT_TYPES)}")
    if strength is not None and not has_image:
        raise InputError("strength applies to image-to-image only: pass an init image too")
    if has_image:
        if not 0 < strength <= 1:
            raise InputError(f"strength must be in (0, 1], got {strength}")
        if int(steps * strength) < 1:
            raise InputError(
                f"num_inference_steps * strength must be at least 1 (got {steps} * {strength}): "
                "image-to-image runs int(steps * strength) denoising steps; raise steps or strength"
            )


class TurboPipeline:
    """Generate images from exported artifacts on any backend, with a diffusers-shaped call."""

    def __init__(self, artifacts: Artifacts, backend: Backend):
        self.artifacts = artifacts
        self.backend = backend
        self.family = artifacts.family
        self.tokenizers = [Tokenizer(artifacts.tokenizer_path(name)) for name in self.family.tokenizers]
        self.sampler = Sampler.from_config(artifacts.scheduler_config)
        self.height, self.width = artifacts.height, artifacts.width
        self.latent_shape = artifacts.io("unet").inputs[0].shape

    @classmethod
    def from_artifacts(
        cls,
        path: str | Path,
        backend: str = "openvino",
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> TurboPipeline:
        artifacts = Artifacts.load(path)
        options = BackendOptions(device, dtype, threads, Path(cache_dir) if cache_dir else None)
        return cls(artifacts, create_backend(backend, artifacts, options))

    @classmethod
    def from_model(
        cls,
        model: str,
        backend: str = "openvino",
        height: int = 512,
        width: int = 512,
        precision: str = "fp32",
        quiet: bool = True,
        **backend_options,
    ) -> TurboPipeline:
        """Export `model` on first use into the cache (keyed by source hash, shape and precision), then load it."""
        from turbo_runtime.backends import backend_class
        from turbo_runtime.errors import MissingDependency
        from turbo_runtime.spec import FORMATS

        fmt = backend_class(backend).artifact_format
        try:
            from export.exporter import ExportConfig, export_model
        except ImportError:
            raise MissingDependency('exporting needs the export extra: pip install "turbo-runtime[export]"') from None
        # Both formats at once, so switching between ONNX Runtime and OpenVINO reuses one export.
        formats = FORMATS if fmt else ()
        if precision == "int8":
            formats = ("openvino",) if fmt else ()
        config = ExportConfig(model, formats=formats, precision=precision, height=height, width=width, quiet=quiet)
        return cls.from_artifacts(export_model(config), backend, **backend_options)

    def __call__(
        self,
        prompt: str = "",
        num_inference_steps: int | None = None,
        guidance_scale: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        image=None,
        strength: float | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
    ) -> PipelineOutput:
        """Text-to-image, or image-to-image when `image` is given.

        `latents` is the initial Gaussian noise (as in diffusers); otherwise it is drawn from `seed`, so a seed
        gives the same noise on every backend. Image-to-image noises the encoded image to `strength` and runs
        the last int(num_inference_steps * strength) steps.
        """
        # 1. Check inputs
        has_image = image is not None
        num_inference_steps, strength = request_defaults(self.family, num_inference_steps, has_image, strength)
        check_request(
            self.artifacts,
            num_inference_steps,
            guidance_scale,
            strength,
            has_image,
            num_images_per_prompt,
            height,
            width,
            output_type,
        )
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            expected = (num_images_per_prompt, *self.latent_shape[1:])
            if latents.shape not in (expected, self.latent_shape):
                raise InputError(f"latents must have shape {expected}, got {latents.shape}")
        init_image = load_image(image, self.width, self.height) if image is not None else None
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        noise = NoiseSource(seed)
        timings: dict[str, float | list[float]] = {"unet": []}
        start = time.perf_counter()

        # 2. Encode the prompt, once for all images
        t0 = time.perf_counter()
        cond = self.backend.encode_text(tuple(tok(prompt) for tok in self.tokenizers))
        if cond.text_embeds is not None:  # SDXL: original size, crop top-left, target size
            h, w = self.height, self.width
            cond = replace(cond, time_ids=np.array([[h, w, 0, 0, h, w]], np.float32))
        timings["text_encoder"] = time.perf_counter() - t0

        # 3. Timesteps: all of them, or for image-to-image the last int(steps * strength)
        schedule = self.sampler.schedule(num_inference_steps)
        first = 0
        image_latents = None
        if init_image is not None:
            first = num_inference_steps - min(int(num_inference_steps * strength), num_inference_steps)
            t0 = time.perf_counter()
            image_latents = self.backend.encode_image(init_image)
            timings["vae_encoder"] = time.perf_counter() - t0

        images = []
        for n in range(num_images_per_prompt):
            # 4. Initial latents: pure noise, or the encoded image noised to the first sigma
            # Drawn even when `latents` replaces it, so the ancestral noise that follows depends only on the seed.
            x = noise.normal(self.latent_shape)
            if latents is not None:
                x = latents[n : n + 1] if latents.shape[0] > 1 else latents
            x = x * schedule.init_noise_sigma if image_latents is None else image_latents + x * schedule.sigmas[first]

            # 5. Denoise
            for i in range(first, num_inference_steps):
                t0 = time.perf_counter()
                model_input = self.sampler.scale_model_input(x, schedule.sigmas[i])
                eps = self.backend.predict_noise(model_input, schedule.timesteps[i : i + 1], cond)
                x = self.sampler.step(schedule, i, eps, x, noise)
                timings["unet"].append(time.perf_counter() - t0)

            # 6. Decode
            t0 = time.perf_counter()
            decoded = self.backend.decode(x)
            timings.setdefault("vae_decoder", 0.0)
            timings["vae_decoder"] += time.perf_counter() - t0
            images.append(np.clip(decoded[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0))

        # 7. Convert
        result = np.stack(images).astype(np.float32)
        timings["total"] = time.perf_counter() - start
        return PipelineOutput(
            to_pil(result) if output_type == "pil" else result, seed, num_inference_steps - first, timings
        )
