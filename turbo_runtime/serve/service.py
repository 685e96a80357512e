"""What every API layer calls: the served model's identity, the key check, and generate (validate, queue, await)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from starlette.requests import HTTPConnection, Request

from turbo_runtime.errors import HealthError, InputError
from turbo_runtime.pipeline import TurboPipeline, image_text
from turbo_runtime.serve.config import ServeSettings
from turbo_runtime.serve.errors import ApiError
from turbo_runtime.serve.generation import ImageRequest, ImageResult, encode_image
from turbo_runtime.serve.metrics import Metrics
from turbo_runtime.serve.worker import Overloaded, Worker

log = logging.getLogger("turbo_runtime.serve")
CODEC_THREADS = 2
FAILURES_IN_A_ROW = 3  # generations that raised, one after another, before the health check fails


def _self_test(pipeline: TurboPipeline) -> None:
    cond = pipeline.encode_prompt("")
    if not np.isfinite(cond.encoder_hidden_states).all():
        raise HealthError("the text encoder's output is not finite")


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
        self.metrics = Metrics({"replica": settings.replica} if settings.replica else None)
        self.worker = Worker(source, settings.max_queue, self.metrics, on_ready, on_failed)
        # A pool of its own, started in full now: thread counts stay flat under load (a leak would show), and the
        # event loop's default executor is left to the libraries.
        self.codec = ThreadPoolExecutor(max_workers=CODEC_THREADS, thread_name_prefix="turbo-codec")
        started = threading.Barrier(CODEC_THREADS)
        for future in [self.codec.submit(started.wait) for _ in range(CODEC_THREADS)]:
            future.result()

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
        } | ({"replica": self.settings.replica} if self.settings.replica else {})

    async def check_health(self, timeout: float = 10.0) -> None:
        """Raise HealthError unless this server can generate, cheaply enough to ask every few seconds.

        While the worker is busy, its progress is the evidence (a job that runs past the request timeout is
        not progress); while it is idle, a self-test: the prompt "" through the tokenizers and text encoders on
        the worker thread, whose output must be finite. A full image would prove more and cost a UNet and VAE
        call per check at full size; those stages are proven once when a cluster replica starts (one warm-up
        image) and, after that, by the requests themselves: FAILURES_IN_A_ROW of them failing fails the check.
        """
        worker = self.worker
        if worker.error is not None:
            raise HealthError(f"the model could not be loaded: {worker.error}")
        if not worker.alive:
            raise HealthError("the worker thread has stopped")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not worker.ready:  # loading: a replica is not healthy before it can serve
            if loop.time() > deadline:
                raise HealthError(f"the model is still loading after {timeout:g} s")
            await asyncio.sleep(0.05)
        if worker.failed_in_a_row >= FAILURES_IN_A_ROW:
            raise HealthError(f"the last {worker.failed_in_a_row} generations failed: {worker.last_failure}")
        since = worker.running_since
        if since is not None:
            if time.monotonic() - since > self.settings.timeout:
                raise HealthError(f"one generation has run for more than the {self.settings.timeout:g} s timeout")
            return
        finished = worker.finished
        try:
            future = worker.call(_self_test, timeout)
        except Overloaded:  # the queue filled since: busy, and the running job is checked next time
            return
        waiting = asyncio.wrap_future(future)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            future.cancel()  # a self-test still queued is skipped
            if worker.finished > finished:  # queued behind requests that ran: busy, not stuck
                return
            raise HealthError(f"the self-test did not finish within {timeout:g} s") from None
        except HealthError:
            raise
        except Exception as e:
            raise HealthError(f"the self-test failed: {type(e).__name__}: {e}") from None

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

        return await self.off_loop(encode_all)

    async def off_loop(self, function, *args):
        """Run picture coding (PIL) beside the event loop, on the service's own two threads."""
        return await asyncio.get_running_loop().run_in_executor(self.codec, function, *args)

    def close(self, timeout: float | None = None) -> None:
        self.worker.close(timeout)
        self.codec.shutdown(wait=False)
