"""AUTOMATIC1111's web UI API (/sdapi/v1/...), which most Stable Diffusion clients and editor plugins speak."""

from __future__ import annotations

import base64
import json
import time

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from turbo_runtime.serve.errors import ApiError
from turbo_runtime.serve.generation import ImageRequest, ImageResult, decode_base64_image
from turbo_runtime.serve.openai_api import require_key, service_of
from turbo_runtime.serve.service import Service

router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(require_key)])

# A1111 sampler names of the schedulers turbo-runtime runs.
SAMPLERS = {"Euler": "euler", "Euler a": "euler-ancestral", "DPM++ 2M": "dpm++2m"}


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None  # None: the model's default (A1111's 20 would be wasted on a turbo model)
    cfg_scale: float | None = None  # None: the model's; at most 1 means no guidance, as in A1111
    seed: int = -1  # -1: random
    width: int | None = None  # None: the exported size
    height: int | None = None
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older spelling of sampler_name

    def to_request(self, service: Service, **extra) -> ImageRequest:
        pipe = service.pipeline
        for label, value, exported in (("width", self.width, pipe.width), ("height", self.height, pipe.height)):
            if value not in (None, exported):
                raise ApiError(400, f"{label} must be {exported}, the size this model was exported for; got {value}")
        sampler = self.sampler_name or self.sampler_index
        if sampler is not None and sampler not in SAMPLERS:
            raise ApiError(400, f"unknown sampler {sampler!r}; this server runs: {', '.join(SAMPLERS)}")
        if self.seed < -1:
            raise ApiError(400, f"seed must be -1 (random) or at least 0, got {self.seed}")
        guidance = self.cfg_scale
        if guidance is not None and guidance <= 1 and not pipe.family.guided:
            guidance = 0.0  # A1111's CFG scale 1 is no guidance, which is what a turbo model samples with
        guided = guidance is None and pipe.family.guided or guidance is not None and guidance > 1
        return ImageRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt if guided and self.negative_prompt else None,
            steps=self.steps,
            guidance_scale=guidance,
            seed=None if self.seed == -1 else self.seed,
            num_images=self.batch_size * self.n_iter,
            scheduler=SAMPLERS[sampler] if sampler else None,
            **extra,
        )


class Img2Img(Txt2Img):
    init_images: list[str]
    denoising_strength: float = 0.75
    mask: str | None = None


async def respond(service: Service, body: Txt2Img, result: ImageResult) -> dict:
    blobs = await service.encode(result)
    request, pipe = result.request, service.pipeline
    info = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(blobs),
        "negative_prompt": request.negative_prompt or "",
        "seed": result.seeds[0],
        "all_seeds": result.seeds,
        "width": pipe.width,
        "height": pipe.height,
        "sampler_name": body.sampler_name or body.sampler_index or "",
        "cfg_scale": request.guidance_scale,
        "steps": result.steps,
        "batch_size": body.batch_size,
        "sd_model_name": service.model_name,
        "backend": pipe.backend.name,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "timings": result.timings,
    }
    if request.image is not None:
        info["denoising_strength"] = request.strength
    return {
        "images": [base64.b64encode(blob).decode() for blob in blobs],
        "parameters": body.model_dump(exclude={"init_images"}),
        "info": json.dumps(info),
    }


@router.post("/txt2img")
async def txt2img(body: Txt2Img, request: Request) -> dict:
    service = service_of(request)
    result = await service.generate(body.to_request(service), request)
    return await respond(service, body, result)


@router.post("/img2img")
async def img2img(body: Img2Img, request: Request) -> dict:
    service = service_of(request)
    if body.mask:
        raise ApiError(400, "inpainting (mask) is not supported; send init_images without a mask")
    if len(body.init_images) != 1:
        raise ApiError(400, f"init_images must hold one picture, got {len(body.init_images)}")
    image = await service.off_loop(
        decode_base64_image, body.init_images[0], service.settings.max_image_pixels, "init_images"
    )
    result = await service.generate(body.to_request(service, image=image, strength=body.denoising_strength), request)
    return await respond(service, body, result)


def _checkpoint(service: Service) -> dict:
    digest = service.pipeline.artifacts.manifest["model"]["source_hash"]  # the exported model's files
    name = service.model_name
    return {
        "title": f"{name} [{digest[:10]}]",
        "model_name": name,
        "hash": digest[:10],
        "sha256": digest,
        "filename": name,
        "config": None,
    }


@router.get("/sd-models")
async def sd_models(request: Request) -> list[dict]:
    return [_checkpoint(service_of(request))]


@router.get("/samplers")
async def samplers(request: Request) -> list[dict]:
    return [{"name": name, "aliases": [ours], "options": {}} for name, ours in SAMPLERS.items()]


@router.get("/options")
async def options(request: Request) -> dict:
    return {"sd_model_checkpoint": _checkpoint(service_of(request))["title"], "samples_format": "png"}


@router.post("/options")
async def set_options(body: dict, request: Request) -> None:
    """Clients select a checkpoint here; this server has one, so only its own name is accepted."""
    checkpoint = _checkpoint(service_of(request))
    wanted = body.get("sd_model_checkpoint")
    if wanted is not None and wanted not in (checkpoint["title"], checkpoint["model_name"]):
        raise ApiError(400, f"this server serves {checkpoint['title']!r} only, not {wanted!r}")
