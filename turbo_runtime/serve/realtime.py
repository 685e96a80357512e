"""Realtime generation over a WebSocket: the client sends requests as the user types, the server always works on
the newest one (latest wins: a request replaced before it starts is dropped, never queued behind).

Client to server, JSON text messages:
    {"type": "auth", "key": KEY}                  first, when the server has a key and no Authorization header came
    {"type": "generate", "id": 7, "prompt": "...", "seed": 1, "steps": 1, "strength": 0.5,
     "image": "data:image/jpeg;base64,...", "format": "jpeg"}     (all but prompt optional; seed -1: random)
    {"type": "save"}                              the last frame as a PNG with turbo-run's text chunks
Server to client:
    {"type": "hello", "model", "backend", "device", "precision", "width", "height", ...}
    {"type": "frame", "id", "seed", "steps", "timings", "mime"}, then the image as one binary message
    {"type": "png", "id", "seed"}, then the PNG as one binary message
    {"type": "error", "id", "status", "message"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, ValidationError

from turbo_runtime.serve.errors import ApiError, validation_error
from turbo_runtime.serve.generation import MIME, ImageRequest, ImageResult, decode_base64_image
from turbo_runtime.serve.service import Service

log = logging.getLogger("turbo_runtime.serve")
router = APIRouter()
ROUTE = "/realtime"
AUTH_WAIT = 10.0  # seconds a client without the header has to send its key


class FrameFields(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    id: int | str | None = None
    prompt: str = ""
    negative_prompt: str | None = None
    seed: int = -1
    steps: int | None = None
    guidance_scale: float | None = None
    strength: float | None = None
    image: str | None = None  # base64 or a data: URL
    format: Literal["jpeg", "png", "webp"] = "jpeg"


class Session:
    """One connection: a receiver that keeps only the newest request, and a generator that works through them."""

    def __init__(self, ws: WebSocket, service: Service):
        self.ws, self.service = ws, service
        self.pending: FrameFields | None = None
        self.wake = asyncio.Event()
        self.sending = asyncio.Lock()  # a header and its binary message go out together
        self.last: tuple[object, ImageResult] | None = None

    async def run(self) -> None:
        generator = asyncio.create_task(self._generate())
        try:
            await self._receive()
        finally:
            generator.cancel()  # a queued request of a closed connection is dropped unrun
            with contextlib.suppress(asyncio.CancelledError):
                await generator

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                data = json.loads(message.get("text") or "")
                if not isinstance(data, dict):
                    raise ValueError
            except ValueError:
                await self.error(None, ApiError(400, "send JSON objects as text messages"))
                continue
            kind = data.get("type", "generate")
            if kind == "generate":
                try:
                    fields = FrameFields.model_validate(data)
                except ValidationError as e:
                    await self.error(data.get("id"), validation_error(e.errors()))
                    continue
                if self.pending is not None:
                    self.service.metrics.skipped.labels("superseded").inc()
                self.pending = fields
                self.wake.set()
            elif kind == "save":
                await self._save()
            elif kind == "auth":  # a key sent to a server that needs none, or sent twice
                continue
            else:
                await self.error(data.get("id"), ApiError(400, f"unknown message type {kind!r}; send generate or save"))

    async def _generate(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            fields, self.pending = self.pending, None
            if fields is not None:
                await self._frame(fields)

    async def _frame(self, fields: FrameFields) -> None:
        service = self.service
        try:
            image = None
            if fields.image:
                max_pixels = service.settings.max_image_pixels
                image = await service.off_loop(decode_base64_image, fields.image, max_pixels)
            if fields.seed < -1:
                raise ApiError(400, f"seed must be -1 (random) or at least 0, got {fields.seed}", param="seed")
            request = ImageRequest(
                prompt=fields.prompt,
                negative_prompt=fields.negative_prompt,
                steps=fields.steps,
                guidance_scale=fields.guidance_scale,
                seed=None if fields.seed == -1 else fields.seed,
                image=image,
                strength=fields.strength,
            )
            result = await service.generate(request)
            blob = (await service.encode(result, fields.format))[0]
        except ApiError as e:
            await self.error(fields.id, e)
            return
        except Exception as e:  # this frame fails; the connection and its next requests go on
            log.exception("realtime frame failed")
            await self.error(fields.id, ApiError(500, f"internal error: {type(e).__name__}"))
            return
        self.last = (fields.id, result)
        header = {"type": "frame", "id": fields.id, "seed": result.seeds[0], "steps": result.steps}
        await self.send(header | {"timings": result.timings, "mime": MIME[fields.format]}, blob)
        service.metrics.requests.labels(ROUTE, "200").inc()

    async def _save(self) -> None:
        if self.last is None:
            await self.error(None, ApiError(400, "no frame to save yet"))
            return
        frame_id, result = self.last
        blob = (await self.service.encode(result, "png"))[0]
        await self.send({"type": "png", "id": frame_id, "seed": result.seeds[0]}, blob)

    async def send(self, header: dict, blob: bytes) -> None:
        async with self.sending:
            await send_json(self.ws, header)
            await self.ws.send_bytes(blob)

    async def error(self, frame_id, error: ApiError) -> None:
        self.service.metrics.requests.labels(ROUTE, str(error.status)).inc()
        async with self.sending:
            await send_json(
                self.ws, {"type": "error", "id": frame_id, "status": error.status, "message": error.message}
            )


async def send_json(ws: WebSocket, message: dict) -> None:
    """JSON with non-ASCII escaped: a client's id may hold a lone surrogate, which UTF-8 cannot carry."""
    await ws.send_text(json.dumps(message))


async def authorized(ws: WebSocket, service: Service) -> bool:
    """The Authorization header, or (browsers cannot set it) a first message {"type": "auth", "key": KEY}."""
    try:
        service.check_key(ws)
        return True
    except ApiError:
        pass
    try:
        first = json.loads(await asyncio.wait_for(ws.receive_text(), AUTH_WAIT))
    except (TimeoutError, ValueError, KeyError):
        first = None
    if isinstance(first, dict) and first.get("type") == "auth":
        key = first.get("key")
        if isinstance(key, str) and service.key_matches(key):
            return True
    message = (
        'missing or wrong API key: send {"type": "auth", "key": KEY} first, or the header Authorization: Bearer KEY'
    )
    await send_json(ws, {"type": "error", "id": None, "status": 401, "message": message})
    await ws.close(code=1008)  # policy violation
    return False


@router.websocket(ROUTE)
async def realtime(ws: WebSocket) -> None:
    service: Service = ws.app.state.service
    await ws.accept()
    with contextlib.suppress(WebSocketDisconnect):
        if not await authorized(ws, service):
            return
        try:
            info = service.info()
        except ApiError as e:  # still loading: the client retries
            await send_json(ws, {"type": "error", "id": None, "status": e.status, "message": e.message})
            await ws.close(code=1013)  # try again later
            return
        await send_json(ws, {"type": "hello", **info})
        await Session(ws, service).run()
