"""OpenAI's Images API (/v1/images/generations, /v1/images/edits, /v1/models), so its official clients work as
they are. Extension fields: seed, steps, guidance_scale, negative_prompt, and strength for edits."""

from __future__ import annotations

import base64
import re
import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile

from turbo_runtime.serve.errors import ApiError
from turbo_runtime.serve.generation import MIME, ImageRequest, ImageResult, decode_image
from turbo_runtime.serve.service import Service


def service_of(request: Request) -> Service:
    return request.app.state.service


async def require_key(request: Request) -> None:  # async: a sync dependency would hop to a thread pool
    service_of(request).check_key(request)


router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


class ImageFields(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str
    model: str | None = None
    n: int | None = None
    size: str | None = None  # "WIDTHxHEIGHT" (the exported size) or "auto"
    response_format: Literal["b64_json", "url"] | None = None  # url: a data: URL holding the image
    output_format: Literal["png", "jpeg", "webp"] | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None

    def to_request(self, service: Service, **extra) -> ImageRequest:
        if self.model is not None and self.model != service.model_name:
            raise ApiError(
                404,
                f"model {self.model!r} is not served here; this server serves {service.model_name!r} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        pipe = service.pipeline
        exported = f"{pipe.width}x{pipe.height}"
        if self.size not in (None, "auto", exported):
            given = re.fullmatch(r"(\d+)x(\d+)", self.size)
            what = "a size WIDTHxHEIGHT" if given is None else "another size"
            raise ApiError(
                400,
                f"size must be {exported}, the size this model was exported for (got {self.size!r}: {what} needs "
                "an export at that size)",
                param="size",
            )
        return ImageRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            num_images=1 if self.n is None else self.n,
            **extra,
        )


class EditFields(ImageFields):
    strength: float | None = None


async def respond(service: Service, fields: ImageFields, result: ImageResult) -> dict:
    fmt = fields.output_format or "png"
    blobs = await service.encode(result, fmt)
    encoded = [base64.b64encode(blob).decode() for blob in blobs]
    if fields.response_format == "url":
        data = [{"url": f"data:{MIME[fmt]};base64,{b64}"} for b64 in encoded]
    else:
        data = [{"b64_json": b64} for b64 in encoded]
    for item, seed in zip(data, result.seeds):
        item["seed"] = seed
    pipe = service.pipeline
    return {
        "created": int(time.time()),
        "data": data,
        "output_format": fmt,
        "size": f"{pipe.width}x{pipe.height}",
        "timings": result.timings,
    }


@router.post("/images/generations")
async def generations(fields: ImageFields, request: Request) -> dict:
    service = service_of(request)
    result = await service.generate(fields.to_request(service), request)
    return await respond(service, fields, result)


@router.post("/images/edits")
async def edits(request: Request) -> dict:
    """Image-to-image: multipart `image` (or `image[]`) and `prompt`; `strength` in (0, 1] (default 0.5)."""
    service = service_of(request)
    async with request.form(max_files=2, max_fields=64) as form:
        files = [v for k, v in form.multi_items() if k in ("image", "image[]") and isinstance(v, UploadFile)]
        if "mask" in form:
            raise ApiError(400, "mask: inpainting is not supported; send an image and a prompt", param="mask")
        if len(files) != 1:
            raise ApiError(
                400,
                "image: send exactly one picture file as multipart/form-data field 'image', with a 'prompt'",
                param="image",
            )
        try:
            fields = EditFields.model_validate({k: v for k, v in form.items() if isinstance(v, str)})
        except ValidationError as e:
            raise RequestValidationError(e.errors()) from None
        data = await files[0].read()
    max_pixels = service.settings.max_image_pixels
    image = await service.off_loop(decode_image, data, max_pixels)
    result = await service.generate(fields.to_request(service, image=image, strength=fields.strength), request)
    return await respond(service, fields, result)


def _model(service: Service) -> dict:
    created = int(service.pipeline.artifacts.root.joinpath("manifest.json").stat().st_mtime)
    return {"id": service.model_name, "object": "model", "created": created, "owned_by": "turbo-runtime"}


@router.get("/models")
async def models(request: Request) -> dict:
    return {"object": "list", "data": [_model(service_of(request))]}


@router.get("/models/{model:path}")
async def model(model: str, request: Request) -> dict:
    service = service_of(request)
    if model != service.model_name:
        raise ApiError(404, f"model {model!r} is not served here", param="model", code="model_not_found")
    return _model(service)
