"""Serving helpers shared by the tests: turbo-serve as a process or in a thread, a pipeline a test can hold,
and picture bytes (valid, damaged, or a header that claims a huge picture)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from conftest import SIZE
from PIL import Image

from turbo_runtime.pipeline import TurboPipeline


def decode(data: bytes | str) -> np.ndarray:
    if isinstance(data, str):
        data = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data)
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def png_text(data: bytes | str) -> dict:
    if isinstance(data, str):
        data = base64.b64decode(data)
    with Image.open(io.BytesIO(data)) as im:
        return dict(im.text)


def png_bytes(size=(SIZE, SIZE), seed=0) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header that claims width x height pixels, in a few dozen bytes (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


class Served:
    """A turbo-serve process: its URL, and its stderr (kept in a file: a full pipe would block the server)."""

    def __init__(self, url: str, proc: subprocess.Popen, stderr):
        self.url, self.proc, self._stderr = url, proc, stderr
        self.ready_line = ""

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()


@contextmanager
def serve_process(*args: str, ready: bool = True, env: dict | None = None):
    """turbo-serve on a free loopback port; stopped with SIGTERM at the end, which must exit 0."""
    exe = Path(sys.executable).parent / "turbo-serve"
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(
            [str(exe), "--port", "0", *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        served = Served("", proc, stderr)
        try:
            first = proc.stdout.readline()
            assert first.startswith("turbo-serve: listening on http://127.0.0.1:"), (first, served.stderr)
            served.url = first.split()[3].rstrip(";")
            if ready:
                served.ready_line = proc.stdout.readline()
                assert served.ready_line.startswith(f"ready: {served.url}/"), (served.ready_line, served.stderr)
            yield served
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
                assert proc.returncode == 0, served.stderr


class Held:
    """The real pipeline, behind a gate the test opens: it makes "the worker is busy" a fact, not a race."""

    def __init__(self, pipe: TurboPipeline):
        self.pipe = pipe
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.prompts: list[str] = []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, prompt, **kwargs):
        self.prompts.append(prompt)
        self.started.release()
        assert self.gate.wait(60)
        if prompt == "raise":
            raise RuntimeError("a fault injected by the test")
        return self.pipe(prompt, **kwargs)

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=30)


@contextmanager
def serve_in_thread(pipeline, source=None, **settings):
    import uvicorn

    from turbo_runtime.serve.app import create_app
    from turbo_runtime.serve.config import ServeSettings

    app = create_app(source or (lambda: pipeline), ServeSettings(**settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections wait in the backlog until uvicorn has started
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])))
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ready", timeout=5).status_code != 200 and source is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def damaged_copy(artifacts: Path, folder: Path) -> Path:
    """A copy of `artifacts` in `folder` whose ONNX UNet has its last byte flipped (the manifest unchanged)."""
    import shutil

    broken = folder / "broken"
    shutil.copytree(artifacts, broken)
    unet = broken / "onnx" / "unet" / "model.onnx"
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    unet.write_bytes(data)
    return broken
