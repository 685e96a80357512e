"""TurboPipeline: tokenizer + backend + sampler, one loop for every backend.

Text-to-image and image-to-image, classifier-free guidance for the guided families, and SDXL's ensemble of
experts (the base denoises the high-noise steps, the refiner the rest), each as diffusers computes it.
"""

from __future__ import annotations

import math
import numbers
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.auto import AUTO, Choice, choose
from turbo_runtime.backends import Backend, BackendOptions, Conditioning, create_backend
from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.errors import InputError
from turbo_runtime.sampler import NoiseSource, Sampler, scheduler_of
from turbo_runtime.spec import Family
from turbo_runtime.tokenizer import Tokenizer

OUTPUT_TYPES = ("pil", "np", "latent")
SEED_BOUND = 2**32  # seeds are integers in [0, 2**32), the range A1111 clients and numpy's legacy seeding use
MAX_IMAGES = 64  # images per call (prompts x num_images_per_prompt); more is a loop over calls
# SDXL refiner micro-conditioning: aesthetic score of the conditional and unconditional branch (diffusers' defaults).
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


@dataclass
class PipelineOutput:
    # prompt by prompt: PIL images; float32 N x H x W x 3 in [0, 1] ("np"); N x 4 x h x w ("latent")
    images: list | np.ndarray
    seed: int
    steps: int  # denoising steps actually run (base and refiner together)
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


@dataclass(frozen=True)
class Request:
    """What one call asks for, checked against the artifacts before any model runs."""

    prompt: str | list[str] = ""
    negative_prompt: str | list[str] | None = None
    steps: int | None = None  # None: the family's default
    guidance_scale: float | None = None  # None: the family's default (0 for turbo families)
    guidance_rescale: float = 0.0
    has_image: bool = False
    strength: float | None = None  # image-to-image; None: 0.5
    num_images: int = 1
    height: int | None = None
    width: int | None = None
    output_type: str = "pil"
    scheduler: str | None = None  # None: the model's, else the family's
    denoising_start: float | None = None  # refiner: start where the base stopped (replaces strength)
    denoising_end: float | None = None  # base: stop after this fraction of the noise schedule
    seed: int | None = None  # None: random

    @property
    def prompts(self) -> list[str]:
        """The prompt, or each prompt of a list; a call makes num_images images of each."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def negative_prompts(self) -> list[str | None]:
        """The negative prompt of each prompt: one for all, or one each."""
        if self.negative_prompt is None or isinstance(self.negative_prompt, str):
            return [self.negative_prompt] * len(self.prompts)
        return list(self.negative_prompt)

    @property
    def total_images(self) -> int:
        return len(self.prompts) * self.num_images

    def resolved(self, family: Family) -> Request:
        """Defaults filled in: the family's steps and guidance; image-to-image strength 0.5 and enough steps."""
        strength = self.strength
        if self.has_image and strength is None and self.denoising_start is None:
            strength = 0.5
        steps = self.steps
        if steps is None:
            steps = family.default_steps
            if strength is not None and 0 < strength <= 1:
                steps = max(steps, math.ceil(1 / strength))
        guidance = family.default_guidance if self.guidance_scale is None else self.guidance_scale
        return replace(self, steps=steps, strength=strength, guidance_scale=guidance)

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs for a scale above 1, as in diffusers."""
        return self.guidance_scale > 1

    def check_values(self) -> None:
        """Refuse what no model can serve (prompts, seed, number of images), before anything is exported or loaded."""
        check_text("prompt", self.prompt)
        if self.negative_prompt is not None:
            check_text("negative_prompt", self.negative_prompt)
            if not isinstance(self.negative_prompt, str) and len(self.negative_prompt) != len(self.prompts):
                raise InputError(
                    f"negative_prompt must hold one entry per prompt ({len(self.prompts)}), got "
                    f"{len(self.negative_prompt)}; or pass one string for all"
                )
        if self.seed is not None and not (is_integer(self.seed) and 0 <= self.seed < SEED_BOUND):
            raise InputError(f"seed must be an integer from 0 to {SEED_BOUND - 1}, got {self.seed!r}")
        if not isinstance(self.num_images, int) or self.num_images < 1:
            raise InputError(f"num_images_per_prompt must be at least 1, got {self.num_images}")
        if self.total_images > MAX_IMAGES:
            raise InputError(
                f"a call makes at most {MAX_IMAGES} images, got {len(self.prompts)} prompt(s) x "
                f"num_images_per_prompt {self.num_images}; call again for more"
            )

    def check(self, artifacts: Artifacts) -> None:
        """Refuse a request the artifacts cannot serve, before any model is loaded (call on a resolved request)."""
        self.check_values()
        family = artifacts.family
        steps = self.steps
        if not isinstance(steps, int) or steps < 1:
            raise InputError(f"num_inference_steps must be an integer of at least 1, got {steps}")
        sampler = Sampler.from_config(artifacts.scheduler_config, self.scheduler or default_scheduler(artifacts))
        if steps > sampler.num_train_timesteps:
            raise InputError(
                f"num_inference_steps must be at most the scheduler's {sampler.num_train_timesteps} training "
                f"timesteps, got {steps}"
            )
        if not family.guided:
            distilled = "the model was distilled to sample without classifier-free guidance"
            if self.guidance_scale != 0:
                raise InputError(f"guidance_scale must be 0 for {family.name}: {distilled} (got {self.guidance_scale})")
            if self.negative_prompt is not None:
                raise InputError(f"{family.name} takes no negative prompt: {distilled}, which a negative prompt steers")
        elif self.guidance_scale < 0:
            raise InputError(f"guidance_scale must be at least 0, got {self.guidance_scale}")
        elif self.negative_prompt is not None and not self.guided:
            raise InputError(
                f"a negative prompt needs classifier-free guidance: raise guidance_scale above 1 "
                f"(got {self.guidance_scale})"
            )
        if not 0 <= self.guidance_rescale <= 1:
            raise InputError(f"guidance_rescale must be in [0, 1], got {self.guidance_rescale}")
        if self.guidance_rescale and not self.guided:
            raise InputError("guidance_rescale applies to classifier-free guidance only: raise guidance_scale above 1")
        exported = (artifacts.height, artifacts.width)
        if (self.height or exported[0], self.width or exported[1]) != exported:
            raise InputError(
                f"the artifacts were exported for {exported[0]}x{exported[1]} (height x width), not "
                f"{self.height or exported[0]}x{self.width or exported[1]}; export again with --height/--width"
            )
        if self.output_type not in OUTPUT_TYPES:
            raise InputError(f"unknown output_type {self.output_type!r}; choose from: {', '.join(OUTPUT_TYPES)}")
        if family.needs_image and not self.has_image:
            raise InputError(
                f"{family.name} refines an image: pass an init image, or use it as the refiner of an SDXL base model"
            )
        for label in ("denoising_start", "denoising_end"):
            value = getattr(self, label)
            if value is not None and not 0 < value < 1:
                raise InputError(f"{label} must be in (0, 1), got {value}")
        if self.denoising_start is not None:
            if not self.has_image:
                raise InputError("denoising_start applies to image-to-image only: pass the latents to refine")
            if self.strength is not None:
                raise InputError("pass strength or denoising_start, not both: denoising_start replaces strength")
            if self.denoising_end is not None and self.denoising_start >= self.denoising_end:
                raise InputError(
                    f"denoising_start ({self.denoising_start}) must be below denoising_end ({self.denoising_end})"
                )
        if self.strength is not None and not self.has_image:
            raise InputError("strength applies to image-to-image only: pass an init image too")
        if self.strength is not None:
            if not 0 < self.strength <= 1:
                raise InputError(f"strength must be in (0, 1], got {self.strength}")
            if int(steps * self.strength) < 1:
                raise InputError(
                    f"num_inference_steps * strength must be at least 1 (got {steps} * {self.strength}): "
                    "image-to-image runs int(steps * strength) denoising steps; raise steps or strength"
                )


def image_text(request: Request, seed: int, steps: int, model: str, backend: str) -> dict[str, str]:
    """The PNG text chunks turbo-run and turbo-serve write, so an image says how to make it again."""
    text = {"prompt": request.prompt, "seed": str(seed), "steps": str(steps), "model": model, "backend": backend}
    text["software"] = "turbo-runtime"
    if request.guided:
        text["guidance_scale"] = str(request.guidance_scale)
    if request.negative_prompt is not None:
        text["negative_prompt"] = request.negative_prompt
    if request.scheduler:
        text["scheduler"] = request.scheduler
    if request.has_image:
        text["strength"] = str(request.strength)
    return text


def is_integer(value) -> bool:
    """An int (numpy's too) or a float with an integral value; not a bool."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_text(label: str, prompt) -> None:
    """A prompt is a string, or a non-empty list of strings, of Unicode text: control characters go to the tokenizer
    like any other character, a lone surrogate (from bytes that are not UTF-8 on a command line) is refused."""
    texts = prompt if isinstance(prompt, list | tuple) and prompt else [prompt]
    for text in texts:
        if not isinstance(text, str):
            got = type(text).__name__
            if text is not prompt:
                got = f"a {type(prompt).__name__} holding {got}"
            raise InputError(f"{label} must be a string or a non-empty list of strings, got {got}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(
                f"{label} is not valid text: lone surrogate U+{ord(text[e.start]):04X} at index {e.start} "
                "(on a command line: bytes that are not UTF-8)"
            ) from None


def default_scheduler(artifacts: Artifacts) -> str:
    """The scheduler the model ships when we run it, else the family's (small-sd's card: DPM-Solver++)."""
    return scheduler_of(artifacts.scheduler_config) or artifacts.family.scheduler


def step_range(sampler: Sampler, timesteps: np.ndarray, request: Request) -> tuple[int, int]:
    """Indices [first, last) of the schedule this request denoises, as diffusers picks them."""
    n, total = len(timesteps), sampler.num_train_timesteps
    first = 0
    if request.denoising_start is not None:  # the refiner: the steps below the base's cut-off
        cutoff = int(round(total - request.denoising_start * total))
        first = n - int((timesteps < cutoff).sum())
    elif request.strength is not None:
        first = n - min(int(request.steps * request.strength), n)
    last = n
    if request.denoising_end is not None:  # the base: the steps at or above the cut-off
        cutoff = int(round(total - request.denoising_end * total))
        last = first + int((timesteps[first:] >= cutoff).sum())
    if last <= first:
        raise InputError(
            f"no denoising step falls in this part of the schedule ({request.steps} steps, denoising_start "
            f"{request.denoising_start}, denoising_end {request.denoising_end}); raise num_inference_steps"
        )
    return first, last


def rescale_noise_cfg(noise_cfg: np.ndarray, noise_text: np.ndarray, guidance_rescale: float) -> np.ndarray:
    """Guidance rescale (Lin et al. 2023, section 3.4), as diffusers' rescale_noise_cfg."""
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = noise_text.std(axis=axes, keepdims=True, ddof=1)
    std_cfg = noise_cfg.std(axis=axes, keepdims=True, ddof=1)
    rescaled = noise_cfg * (std_text / std_cfg)
    return (guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg).astype(np.float32)


class TurboPipeline:
    """Generate images from exported artifacts on any backend, with a diffusers-shaped call."""

    def __init__(self, artifacts: Artifacts, backend: Backend, choice: Choice | None = None):
        self.artifacts = artifacts
        self.backend = backend
        # The CPU class and how the backend and precision were chosen (`auto`), or that they were given.
        self.choice = choice or Choice(detect_cpu(), backend.name, artifacts.precision, "given")
        self.family = artifacts.family
        self.tokenizers = [Tokenizer(artifacts.tokenizer_path(name)) for name in self.family.tokenizers]
        self.height, self.width = artifacts.height, artifacts.width
        self.latent_shape = artifacts.latent_shape
        self.options = artifacts.pipeline_options
        self.progress = False  # a progress bar over the denoising steps (turbo-run turns it on)
        # One call only (turbo-run): each component is released once the call is done with it, so the VAE
        # decoder's working memory reuses what the encoders and the UNet held (sd-turbo at full quality: peak RSS
        # 3.07 -> 2.66 GiB); a later call that needs a released component raises InputError.
        self.one_shot = False

    @classmethod
    def from_artifacts(
        cls,
        path: str | Path,
        backend: str = AUTO,
        device: str | None = None,
        dtype: str | None = None,
        threads: int | None = None,
        cache_dir: str | Path | None = None,
        vae_encoder: bool = True,
        compile_mode: str | None = None,
        cuda_graphs: bool = False,
        channels_last: bool = False,
    ) -> TurboPipeline:
        """Load and compile exported artifacts; `backend` "auto" takes the first of OpenVINO, ONNX Runtime and torch
        that is installed and reads them (turbo_runtime.auto). `vae_encoder=False` leaves the VAE encoder out:
        text-to-image only, with less memory and a shorter start. compile_mode, cuda_graphs and channels_last tune
        the torch backend's modules (BackendOptions)."""
        artifacts = Artifacts.load(path)
        choice = choose(backend, artifacts.precision, formats=artifacts.manifest["formats"], device=device)
        options = BackendOptions(
            device,
            dtype,
            threads,
            Path(cache_dir) if cache_dir else None,
            vae_encoder,
            compile_mode=compile_mode,
            cuda_graphs=cuda_graphs,
            channels_last=channels_last,
        )
        return cls(artifacts, create_backend(choice.backend, artifacts, options), choice)

    @classmethod
    def from_model(
        cls,
        model: str,
        backend: str = AUTO,
        height: int | None = None,
        width: int | None = None,
        precision: str = AUTO,
        quiet: bool = True,
        vae: str | None = None,
        **backend_options,
    ) -> TurboPipeline:
        """Export `model` on first use into the cache (keyed by source hash, shape and precision), then load it.

        height and width default to the model family's size (1024 for SDXL base and refiner, else 512); `vae`
        replaces the model's VAE by a tiny one ("tiny", or a replica, hub id or folder of an AutoencoderTiny).
        `backend` and `precision` "auto" take the fastest full-quality path for this CPU's class (turbo_runtime.auto).
        """
        from turbo_runtime.backends import backend_class
        from turbo_runtime.errors import MissingDependency
        from turbo_runtime.spec import default_formats

        choice = choose(backend, precision, device=backend_options.get("device"))
        fmt = backend_class(choice.backend).artifact_format  # a missing package fails before the export
        try:
            from export.exporter import ExportConfig, export_model
        except ImportError:
            raise MissingDependency('exporting needs the export extra: pip install "turbo-runtime[export]"') from None
        # A given precision gets both formats at once, so switching between ONNX Runtime and OpenVINO reuses one
        # export; a chosen one is the chosen backend's best, so only its format is written.
        formats = () if fmt is None else (fmt,) if "precision" in choice.chose else default_formats(choice.precision)
        size = dict(height=height, width=width)
        config = ExportConfig(model, formats=formats, precision=choice.precision, **size, vae=vae, quiet=quiet)
        pipe = cls.from_artifacts(export_model(config), choice.backend, **backend_options)
        pipe.choice = choice
        return pipe

    def __call__(
        self,
        prompt: str | list[str] = "",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | list[str] | None = None,
        guidance_rescale: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        image=None,
        strength: float | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        scheduler: str | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        refiner: TurboPipeline | None = None,
        high_noise_frac: float = 0.8,
        watermark: bool | None = None,
    ) -> PipelineOutput:
        """Text-to-image, or image-to-image when `image` is given (a picture, or latents to refine).

        `latents` is the initial Gaussian noise (as in diffusers); otherwise it is drawn from `seed`, so a seed
        gives the same noise on every backend. Image-to-image noises the encoded image to `strength` and runs
        the last int(num_inference_steps * strength) steps. Guided families run classifier-free guidance when
        guidance_scale > 1 (default: the family's). With `refiner`, this SDXL base denoises the first
        `high_noise_frac` of the schedule and the refiner the rest. `watermark`: SDXL outputs carry diffusers'
        invisible watermark when invisible-watermark is installed (None), always (True) or never (False).

        `prompt` may be a list: the images come prompt by prompt, `num_images_per_prompt` of each (at most
        MAX_IMAGES per call), and a list of negative prompts has one per prompt. The images are made one after
        another, each drawing its noise from the one generator seeded by `seed` (an integer in [0, 2**32)) in
        turn, so an image's noise depends only on the seed and its place in the call: `pipe(["a", "b"], seed=s)`
        gives `pipe("a", seed=s).images[0]`, then `pipe("b", seed=s, num_images_per_prompt=2).images[1]`.
        """
        # 1. Check inputs
        request = Request(
            prompt,
            negative_prompt,
            num_inference_steps,
            guidance_scale,
            guidance_rescale,
            image is not None,
            strength,
            num_images_per_prompt,
            height,
            width,
            output_type,
            scheduler,
            denoising_start,
            denoising_end,
            seed,
        ).resolved(self.family)
        if refiner is not None:
            check_refiner(self.artifacts, refiner.artifacts, request, high_noise_frac)
            request = replace(request, denoising_end=high_noise_frac)
        request.check(self.artifacts)
        image_latents = None
        if isinstance(image, np.ndarray):  # latents to refine, as diffusers takes them
            image_latents = self._check_latents("image latents", image, request.total_images)
            image = None
        if latents is not None:
            latents = self._check_latents("latents", latents, request.total_images)
        seed = secrets.randbelow(SEED_BOUND) if seed is None else int(seed)
        noise = NoiseSource(seed)
        if refiner is None:
            return self._generate(request, noise, latents, image, image_latents, watermark)
        # 2. Ensemble of experts: the base's latents, still noisy, go to the refiner, which goes on from there.
        base = self._generate(replace(request, output_type="latent"), noise, latents, None, None, False)
        refine = replace(
            request.resolved(refiner.family), has_image=True, denoising_start=high_noise_frac, denoising_end=None
        )
        refine.check(refiner.artifacts)
        out = refiner._generate(refine, noise, None, None, base.images, watermark)
        timings = {k: v for k, v in base.timings.items() if k != "total"}
        timings.update({f"refiner_{k}": v for k, v in out.timings.items() if k != "total"})
        timings["total"] = base.timings["total"] + out.timings["total"]
        return PipelineOutput(out.images, seed, base.steps + out.steps, timings)

    def _check_latents(self, label: str, value, n: int) -> np.ndarray:
        value = np.asarray(value, dtype=np.float32)
        if value.shape not in ((n, *self.latent_shape[1:]), self.latent_shape):
            raise InputError(f"{label} must have shape {(n, *self.latent_shape[1:])}, got {value.shape}")
        return value

    def encode_prompt(self, prompt: str) -> Conditioning:
        """One prompt through the tokenizers and text encoders: the conditioning before SDXL's time ids."""
        return self.backend.encode_text(tuple(tok(prompt) for tok in self.tokenizers))

    def _time_ids(self, negative: bool) -> np.ndarray:
        """SDXL micro-conditioning: original size, crop top-left, then target size or (refiner) aesthetic score."""
        h, w = self.height, self.width
        if self.options.get("requires_aesthetics_score"):
            return np.array([[h, w, 0, 0, NEGATIVE_AESTHETIC_SCORE if negative else AESTHETIC_SCORE]], np.float32)
        return np.array([[h, w, 0, 0, h, w]], np.float32)

    def _conditioning(
        self, prompt: str, negative_prompt: str | None, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        """The prompt's conditioning and, with guidance, the unconditional branch's."""
        cond = self.encode_prompt(prompt)
        uncond = None
        if guided:
            if negative_prompt is None and self.options.get("force_zeros_for_empty_prompt"):
                uncond = Conditioning(
                    np.zeros_like(cond.encoder_hidden_states),
                    None if cond.text_embeds is None else np.zeros_like(cond.text_embeds),
                )
            else:
                uncond = self.encode_prompt(negative_prompt or "")
        if cond.text_embeds is not None:
            cond = replace(cond, time_ids=self._time_ids(negative=False))
            if uncond is not None:
                uncond = replace(uncond, time_ids=self._time_ids(negative=True))
        return cond, uncond

    def _predict(self, x, t, cond: Conditioning, uncond: Conditioning | None, request: Request) -> np.ndarray:
        """The UNet's noise prediction, guided by the unconditional branch when there is one.

        Both branches go through one batch-2 call where the backend takes it (torch, or a UNet exported at batch
        2), else through two batch-1 calls; a UNet exported at batch 2 computes an unguided prediction twice."""
        batches = self.backend.unet_batches
        if 2 in batches and (uncond is not None or 1 not in batches):
            both = self.backend.predict_noise(np.concatenate([x, x]), t, Conditioning.concat(uncond or cond, cond))
            eps_uncond, eps = both[:1], both[1:]
        else:
            eps = self.backend.predict_noise(x, t, cond)
            eps_uncond = None if uncond is None else self.backend.predict_noise(x, t, uncond)
        if uncond is None:
            return eps
        guided = eps_uncond + np.float32(request.guidance_scale) * (eps - eps_uncond)
        if request.guidance_rescale > 0:
            guided = rescale_noise_cfg(guided, eps, request.guidance_rescale)
        return guided

    def _generate(
        self,
        request: Request,
        noise: NoiseSource,
        latents: np.ndarray | None,
        image: Any,
        image_latents: np.ndarray | None,
        watermark: bool | None,
    ) -> PipelineOutput:
        from tqdm import tqdm

        from turbo_runtime import watermark as wm

        scheduler = request.scheduler or default_scheduler(self.artifacts)
        sampler = Sampler.from_config(self.artifacts.scheduler_config, scheduler)
        mark = self.family.watermarked and watermark is not False and (watermark or wm.available())
        init_image = load_image(image, self.width, self.height) if image is not None else None
        timings: dict[str, Any] = {"unet": []}
        start = time.perf_counter()

        # 2. Encode each prompt (and negative prompt), once for all its images
        t0 = time.perf_counter()
        prompts = zip(request.prompts, request.negative_prompts)
        conditionings = [self._conditioning(p, negative, request.guided) for p, negative in prompts]
        timings["text_encoder"] = time.perf_counter() - t0
        if self.one_shot:
            self.backend.release(*self.family.text_encoders)

        # 3. Timesteps: all of them, the last int(steps * strength), or the part before / after a hand-over
        schedule = sampler.schedule(request.steps)
        first, last = step_range(sampler, schedule.timesteps, request)
        if init_image is not None:
            t0 = time.perf_counter()
            image_latents = self.backend.encode_image(init_image)
            timings["vae_encoder"] = time.perf_counter() - t0
            if self.one_shot:
                self.backend.release("vae_encoder")

        outputs = []
        bar = tqdm(total=request.total_images * (last - first), desc="denoise", unit="step", disable=not self.progress)
        for n in range(request.total_images):
            cond, uncond = conditionings[n // request.num_images]
            # 4. Initial latents: pure noise, the encoded image noised to the first step, or latents handed over.
            # Noise is drawn even when `latents` replaces it, so the ancestral noise depends only on the seed.
            if request.denoising_start is not None:
                x = image_latents[n : n + 1] if image_latents.shape[0] > 1 else image_latents
            else:
                x = noise.normal(self.latent_shape)
                if latents is not None:
                    x = latents[n : n + 1] if latents.shape[0] > 1 else latents
                if image_latents is None:
                    x = x * schedule.init_noise_sigma
                else:
                    clean = image_latents[n : n + 1] if image_latents.shape[0] > 1 else image_latents
                    x = sampler.add_noise(clean, x, schedule, first)

            # 5. Denoise
            history: list[np.ndarray] = []
            for i in range(first, last):
                t0 = time.perf_counter()
                model_input = sampler.scale_model_input(x, schedule, i)
                eps = self._predict(model_input, schedule.timesteps[i : i + 1], cond, uncond, request)
                x = sampler.step(schedule, i, eps, x, noise, history)
                timings["unet"].append(time.perf_counter() - t0)
                bar.update(1)
            outputs.append(x)
        bar.close()
        if self.one_shot:
            self.backend.release("unet")
        if request.output_type == "latent":
            outputs = [x[0] for x in outputs]
        else:  # 6. Decode (and watermark SDXL images, as diffusers does)
            t0 = time.perf_counter()
            for n, x in enumerate(outputs):
                decoded = self.backend.decode(x)
                if mark:
                    decoded = wm.apply_watermark(decoded)
                outputs[n] = np.clip(decoded[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
            timings["vae_decoder"] = time.perf_counter() - t0

        # 7. Convert
        result = np.stack(outputs).astype(np.float32)
        timings["total"] = time.perf_counter() - start
        images = to_pil(result) if request.output_type == "pil" else result
        return PipelineOutput(images, noise.seed, last - first, timings)


def check_refiner(base: Artifacts, refiner: Artifacts, request: Request, high_noise_frac: float) -> None:
    """The ensemble of experts: an SDXL base and an SDXL refiner of the same image size, split inside (0, 1)."""
    if base.family.name != "sdxl":
        raise InputError(f"a refiner follows an SDXL base model (family sdxl), not {base.family.name}")
    if refiner.family.name != "sdxl-refiner":
        raise InputError(f"the refiner must be an SDXL refiner (family sdxl-refiner), not {refiner.family.name}")
    if refiner.latent_shape != base.latent_shape:
        raise InputError(
            f"the refiner was exported for {refiner.height}x{refiner.width}, the base for {base.height}x{base.width}; "
            "export both at the same size"
        )
    if not 0 < high_noise_frac < 1:
        raise InputError(f"high_noise_frac must be in (0, 1), got {high_noise_frac}")
    if request.has_image or request.denoising_end is not None or request.output_type == "latent":
        raise InputError("with a refiner, the base generates from text: no image, denoising_end or latent output")
