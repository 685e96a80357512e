"""create_app: the FastAPI app that turbo-serve runs under uvicorn (and a cluster mounts): one code path."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from turbo_runtime.pipeline import TurboPipeline
from turbo_runtime.serve import a1111_api, openai_api, realtime
from turbo_runtime.serve.config import ServeSettings
from turbo_runtime.serve.errors import ApiError, error_body, error_response, validation_error
from turbo_runtime.serve.service import ClientGone, Service

log = logging.getLogger("turbo_runtime.serve")
STATIC = resources.files("turbo_runtime.serve") / "static"


def create_app(
    source: Callable[[], TurboPipeline],
    settings: ServeSettings | None = None,
    on_ready: Callable[[TurboPipeline, float], None] | None = None,
    on_failed: Callable[[Exception], None] | None = None,
) -> FastAPI:
    """The server for the pipeline `source` builds (in the worker thread, once, at start-up).

    `on_ready(pipeline, seconds)` and `on_failed(exception)` are called from the worker thread when loading ends.
    """
    settings = settings or ServeSettings()
    service = Service(source, settings, on_ready, on_failed)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.worker.start()
        yield
        service.close(timeout=settings.timeout)

    # No /docs page: FastAPI's loads its scripts from a CDN, and this server works offline; /openapi.json stays.
    app = FastAPI(title="turbo-runtime", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request.url.path, error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, validation_error(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, ApiError(error.status_code, str(error.detail)))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": read by nobody, counted in /metrics

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error in %s", request.url.path)
        return error_response(request.url.path, ApiError(500, f"internal error: {type(error).__name__}"))

    @app.get("/health", include_in_schema=False)
    async def health() -> dict:
        """The process is alive and its event loop answers."""
        return {"status": "ok"}

    @app.get("/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        """200 once the pipeline is compiled, 503 before (or when it failed to load)."""
        if service.draining:  # load balancers stop sending before the process goes
            return JSONResponse({"status": "draining"}, status_code=503)
        if service.worker.ready:
            return JSONResponse({"status": "ready", **service.info()})
        error = service.worker.error
        body = {"status": "failed", "error": error} if error else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        service.check_key(request)
        text = await asyncio.to_thread(service.metrics.render)  # appended sources may read over the network
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(openai_api.router)
    app.include_router(a1111_api.router)
    app.include_router(realtime.router)
    app.add_middleware(LimitBody, limit=settings.max_body_bytes)
    app.add_middleware(CountRequests, service=service)  # outside LimitBody: its 413s are counted too
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["x-turbo-replica"] if settings.replica else [],
        )
    if settings.replica:
        app.add_middleware(ReplicaHeader, replica=settings.replica)  # outermost: every answer says who answered
    return app


class ReplicaHeader:
    """Name the replica that answered, in the header x-turbo-replica of every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.header = app, (b"x-turbo-replica", replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


class LimitBody:
    """Refuse request bodies above `limit` bytes with 413, whether declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await self._refuse(scope, send)
        chunks, size = [], 0
        while True:  # read the whole (bounded) body first, so the app never sees a truncated one
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._refuse(scope, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = ApiError(413, f"the request body is larger than this server's limit of {self.limit} bytes")
        body = json.dumps(error_body(scope["path"], error)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class CountRequests:
    """Count HTTP requests by route template (not raw path: bounded label values) and status."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app, self.counter = app, service.metrics.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "other")
            self.counter.labels(path, str(status)).inc()
