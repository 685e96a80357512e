"""What every API layer calls: the served model's identity, the key check, and generate (validate, queue, await)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from starlette.requests import HTTPConnection, Request

from turbo_runtime.errors import InputError
from turbo_runtime.pipeline import TurboPipeline, image_text
from turbo_runtime.serve.config import ServeSettings
from turbo_runtime.serve.errors import ApiError
from turbo_runtime.serve.generation import ImageRequest, ImageResult, encode_image
from turbo_runtime.serve.metrics import Metrics
from turbo_runtime.serve.worker import Overloaded, Worker

log = logging.getLogger("turbo_runtime.serve")


class ClientGone(Exception):
    """The client disconnected while its request waited; nobody reads the answer."""


class Service:
    def __init__(
        self,
        source: Callable[[], TurboPipeline],
        settings: ServeSettings,
        on_ready: Callable[[TurboPipeline, float], None] | None = None,
        on_failed: Callable[[Exception], None] | None = None,
    ):
        self.settings = settings
        self.draining = False  # set on SIGTERM: new requests get 503 while the running ones finish
        self.metrics = Metrics()
        self.worker = Worker(source, settings.max_queue, self.metrics, on_ready, on_failed)

    @property
    def pipeline(self) -> TurboPipeline:
        """The compiled pipeline, or 503 while it loads (or when it could not be loaded)."""
        pipeline = self.worker.pipeline
        if pipeline is None:
            if self.worker.error is not None:
                raise ApiError(503, f"the model could not be loaded: {self.worker.error}", code="not_ready")
            raise ApiError(
                503, "the model is still loading; retry shortly", code="not_ready", headers={"Retry-After": "5"}
            )
        return pipeline

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.pipeline.artifacts.model_id

    def info(self) -> dict:
        pipe = self.pipeline
        backend = pipe.backend
        return {
            "model": self.model_name,
            "family": pipe.family.name,
            "backend": backend.name,
            "device": str(backend.device),
            "precision": backend.inference_precision,
            "cpu_class": pipe.choice.cpu.name,
            "width": pipe.width,
            "height": pipe.height,
            "default_steps": pipe.family.default_steps,
            "guided": pipe.family.guided,
            "max_steps": self.settings.max_steps,
        }

    def check_key(self, connection: HTTPConnection) -> None:
        """401 unless the server has no key or the request carries "Authorization: Bearer KEY"."""
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header Authorization: Bearer KEY",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def key_matches(self, given: str) -> bool:
        key = self.settings.api_key
        return key is None or secrets.compare_digest(given.encode(), key.encode())

    def checked(self, request: ImageRequest) -> ImageRequest:
        return request.checked(self.pipeline.artifacts, self.settings)

    async def generate(self, request: ImageRequest, client: Request | None = None) -> ImageResult:
        """Validate, queue and wait for `request`; a queued request whose client leaves is dropped unrun."""
        request = self.checked(request)
        if self.draining:
            raise ApiError(
                503, "the server is shutting down; send the request to another instance", code="shutting_down"
            )
        try:
            future = self.worker.submit(request, self.settings.timeout)
        except Overloaded as e:
            raise ApiError(
                503,
                f"the server is busy ({self.settings.max_queue} requests are waiting); retry in {e.retry_after} s",
                code="overloaded",
                headers={"Retry-After": str(e.retry_after)},
            ) from None
        waiting = asyncio.wrap_future(future)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.timeout
        try:
            while not waiting.done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ApiError(504, f"no image within the server's timeout of {self.settings.timeout:g} s")
                await asyncio.wait({waiting}, timeout=min(0.1, remaining))
                if client is not None and not waiting.done() and await client.is_disconnected():
                    raise ClientGone
        finally:
            waiting.cancel()  # no-op when done; a queued job is skipped, a running one finishes unread
        try:
            result = waiting.result()
        except TimeoutError:
            raise ApiError(504, f"no image within the server's timeout of {self.settings.timeout:g} s") from None
        except InputError as e:
            raise ApiError(400, str(e)) from None
        except Exception as e:
            log.exception("generation failed")
            raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None
        self.metrics.observe(result.timings, len(result.images))
        return result

    async def encode(self, result: ImageResult, fmt: str = "png") -> list[bytes]:
        """The result's images as `fmt` bytes; PNGs carry turbo-run's text chunks. Off the event loop."""
        request, backend = result.request.pipeline_request(), self.pipeline.backend.name

        def encode_all() -> list[bytes]:
            return [
                encode_image(pixels, fmt, image_text(request, seed, result.steps, self.model_name, backend))
                for pixels, seed in zip(result.images, result.seeds)
            ]

        return await asyncio.to_thread(encode_all)
