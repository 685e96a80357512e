"""The one request type every API translates into, its limits, and the image codecs at the HTTP edge."""

from __future__ import annotations

import base64
import binascii
import io
import secrets
from dataclasses import dataclass, field, replace

import numpy as np

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.errors import InputError
from turbo_runtime.pipeline import SEED_BOUND, Request
from turbo_runtime.serve.config import ServeSettings
from turbo_runtime.serve.errors import ApiError

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class ImageRequest:
    """What to generate, whichever API asked. Image i of a request uses seed + i, so each is reproducible alone."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None  # None: the model's default
    seed: int | None = None  # None: drawn at random when checked
    num_images: int = 1
    image: object | None = None  # a PIL image for image-to-image
    strength: float | None = None
    scheduler: str | None = None
    width: int | None = None  # None: the exported size
    height: int | None = None

    def checked(self, artifacts: Artifacts, settings: ServeSettings) -> ImageRequest:
        """This request with its defaults filled in, or ApiError 400 naming the field at fault."""
        if len(self.prompt) > settings.max_prompt_chars:
            raise ApiError(
                400, f"prompt is {len(self.prompt)} characters; the most this server takes is "
                f"{settings.max_prompt_chars}", param="prompt"
            )  # fmt: skip
        if self.negative_prompt is not None and len(self.negative_prompt) > settings.max_prompt_chars:
            raise ApiError(
                400, f"negative_prompt is longer than {settings.max_prompt_chars} characters", param="negative_prompt"
            )
        if not 1 <= self.num_images <= settings.max_images:
            raise ApiError(
                400, f"the number of images (n, batch_size) must be from 1 to {settings.max_images} on this server, "
                f"got {self.num_images}", param="n"
            )  # fmt: skip
        if self.steps is not None and not 1 <= self.steps <= settings.max_steps:
            raise ApiError(
                400, f"steps must be from 1 to {settings.max_steps} on this server, got {self.steps}", param="steps"
            )
        last_seed = SEED_BOUND - self.num_images  # image i uses seed + i
        if self.seed is not None and not 0 <= self.seed <= last_seed:
            raise ApiError(400, f"seed must be from 0 to {last_seed}, got {self.seed}", param="seed")
        try:
            resolved = self.pipeline_request().resolved(artifacts.family)
            resolved.check(artifacts)
        except InputError as e:
            raise ApiError(400, str(e)) from None
        if resolved.steps > settings.max_steps:  # a default raised to reach one image-to-image step
            raise ApiError(400, f"steps must be at most {settings.max_steps} on this server", param="steps")
        seed = secrets.randbelow(last_seed + 1) if self.seed is None else self.seed
        return replace(
            self, steps=resolved.steps, guidance_scale=resolved.guidance_scale, strength=resolved.strength, seed=seed
        )

    def pipeline_request(self) -> Request:
        return Request(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            has_image=self.image is not None,
            strength=self.strength,
            height=self.height,
            width=self.width,
            scheduler=self.scheduler,
            seed=self.seed,
        )


@dataclass
class ImageResult:
    request: ImageRequest  # as checked: defaults and the seed filled in
    images: list[np.ndarray]  # uint8 H x W x 3
    seeds: list[int]
    steps: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, summed over the images


def decode_image(data: bytes, max_pixels: int, param: str = "image"):
    """Uploaded bytes to an RGB PIL image; the format and the size are read from the header before decoding, so
    a small file that claims a huge picture (a decompression bomb) is refused without allocating it."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own guard, for headers far beyond ours
        raise ApiError(
            413, f"{param} claims more pixels than the {max_pixels} this server decodes", param=param
        ) from None
    except Exception:
        raise ApiError(400, f"{param} is not a picture: send a PNG, JPEG or WEBP file", param=param) from None
    if image.format not in UPLOAD_FORMATS:
        raise ApiError(400, f"{param} is {image.format}: send PNG, JPEG or WEBP", param=param)
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413, f"{param} is {width}x{height} pixels, more than the {max_pixels} this server decodes", param=param
        )
    try:
        image.load()
        return image.convert("RGB")
    except Exception:
        raise ApiError(400, f"{param} is a damaged {image.format} file", param=param) from None


def decode_base64_image(text: str, max_pixels: int, param: str = "image"):
    """A base64 picture, with or without a data: URL prefix."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param=param) from None
    return decode_image(data, max_pixels, param)


def encode_image(pixels: np.ndarray, fmt: str = "png", text: dict[str, str] | None = None, quality: int = 90) -> bytes:
    """uint8 H x W x 3 to PNG (with text chunks), JPEG or WEBP bytes."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "png":
        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        image.save(buffer, format=OUTPUT_FORMATS[fmt], quality=quality)
    return buffer.getvalue()
