"""turbo-serve: the real server (a uvicorn process, or the same app in a thread where a test must hold the worker),
real clients (the official openai package, HTTP, WebSocket, headless Chromium), pixels against the pipeline."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import SIZE, assert_one_line_error, run_cli
from PIL import Image
from serving import Held, bomb_png, damaged_copy, decode, gif_bytes, png_bytes, png_text, serve_in_thread, serve_process

from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.pipeline import TurboPipeline

BACKEND = "onnxruntime"  # float32 on every CPU: the server's pixels equal the in-process pipeline's exactly
LIMITS = ["--max-queue", "4", "--max-steps", "8", "--max-images", "3", "--max-body-mb", "1"]


@pytest.fixture(scope="module")
def server(sd_artifacts):
    with serve_process("--artifacts", str(sd_artifacts), "--backend", BACKEND, *LIMITS) as served:
        yield served.url


@pytest.fixture(scope="module")
def pipe(sd_artifacts) -> TurboPipeline:
    return TurboPipeline.from_artifacts(sd_artifacts, BACKEND)


def expected(pipe: TurboPipeline, prompt: str, seed: int, steps: int = 1, **kwargs) -> np.ndarray:
    return np.asarray(pipe(prompt, num_inference_steps=steps, seed=seed, **kwargs).images[0])


def openai_client(url: str, key: str = "none"):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


# ---- OpenAI ----------------------------------------------------------------------------------------------------


def test_openai_client_generates_images_equal_to_the_pipeline(server, pipe):
    client = openai_client(server)
    result = client.images.generate(
        prompt="a red fox", n=2, size=f"{SIZE}x{SIZE}", response_format="b64_json", extra_body={"seed": 5, "steps": 2}
    )
    assert len(result.data) == 2
    for i, item in enumerate(result.data):
        image = decode(item.b64_json)
        assert image.shape == (SIZE, SIZE, 3)
        assert np.array_equal(image, expected(pipe, "a red fox", seed=5 + i, steps=2))  # image i: seed + i
    assert png_text(result.data[0].b64_json) == {
        "prompt": "a red fox",
        "seed": "5",
        "steps": "2",
        "model": "tiny-sd-turbo",
        "backend": BACKEND,
        "software": "turbo-runtime",
    }
    as_url = client.images.generate(prompt="a red fox", response_format="url", extra_body={"seed": 5, "steps": 2})
    assert as_url.data[0].url.startswith("data:image/png;base64,")
    assert np.array_equal(decode(as_url.data[0].url), decode(result.data[0].b64_json))
    jpeg = client.images.generate(prompt="a red fox", output_format="jpeg", extra_body={"seed": 5})
    assert base64.b64decode(jpeg.data[0].b64_json)[:3] == b"\xff\xd8\xff"
    assert [m.id for m in client.models.list().data] == ["tiny-sd-turbo"]


def test_openai_client_edits_an_image(server, pipe, tmp_path):
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes((96, 80)))
    client = openai_client(server)
    with open(init, "rb") as f:
        result = client.images.edit(image=f, prompt="a fox", extra_body={"strength": 0.5, "steps": 4, "seed": 9})
    image = decode(result.data[0].b64_json)
    assert image.shape == (SIZE, SIZE, 3)  # the init image is resized to the exported size
    with Image.open(init) as im:
        reference = expected(pipe, "a fox", seed=9, steps=4, image=im.convert("RGB"), strength=0.5)
    assert np.array_equal(image, reference)
    assert png_text(result.data[0].b64_json)["strength"] == "0.5"


@pytest.mark.parametrize(
    "body,status,param,fragment",
    [
        ({"prompt": "x", "size": "256x256"}, 400, "size", f"size must be {SIZE}x{SIZE}"),
        ({"prompt": "x", "size": "big"}, 400, "size", "a size WIDTHxHEIGHT"),
        ({"prompt": "x", "model": "dall-e-3"}, 404, "model", "this server serves 'tiny-sd-turbo'"),
        ({"prompt": "x", "n": 4}, 400, "n", "from 1 to 3 on this server, got 4"),
        ({"prompt": "x", "n": 0}, 400, "n", "got 0"),
        ({"prompt": "x", "steps": 9}, 400, "steps", "steps must be from 1 to 8"),
        ({"prompt": "x", "seed": -1}, 400, "seed", "seed must be from 0 to 4294967295"),
        ({"prompt": "x", "seed": 2**64}, 400, "seed", "got 18446744073709551616"),
        ({"prompt": "x", "guidance_scale": 7.5}, 400, None, "guidance_scale must be 0 for sd-turbo"),
        ({"prompt": "x", "negative_prompt": "fog"}, 400, None, "takes no negative prompt"),
        ({"prompt": "x" * 4001}, 400, "prompt", "the most this server takes is 4000"),
        ({"prompt": 5}, 400, "prompt", "valid string"),
        ({"n": 1}, 400, "prompt", "Field required"),
        ({"prompt": "x", "steps": 1.5}, 400, "steps", "valid integer"),
        ({"prompt": "x", "response_format": "gif"}, 400, "response_format", "'b64_json' or 'url'"),
        ([1, 2], 400, None, "the body must be a JSON object"),
    ],
)
def test_openai_bad_input_gets_openai_errors(server, body, status, param, fragment):
    response = httpx.post(f"{server}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_openai_client_raises_on_errors_and_the_server_keeps_serving(server, tmp_path):
    import openai

    client = openai_client(server)
    with pytest.raises(openai.BadRequestError, match="size must be"):
        client.images.generate(prompt="x", size="1024x1024")
    with pytest.raises(openai.NotFoundError):
        client.images.generate(prompt="x", model="dall-e-3")
    cases = {
        "not a picture": ("image", ("x.png", b"not an image", "image/png")),
        "is GIF": ("image", ("x.gif", gif_bytes(), "image/gif")),
        "claims more pixels than the 16777216": ("image", ("bomb.png", bomb_png(100_000, 100_000), "image/png")),
        "is 5000x5000 pixels, more than": ("image", ("big.png", bomb_png(5000, 5000), "image/png")),
    }
    for fragment, (field, upload) in cases.items():
        response = httpx.post(f"{server}/v1/images/edits", files={field: upload}, data={"prompt": "x"}, timeout=30)
        assert response.status_code in (400, 413) and fragment in response.json()["error"]["message"], response.text
    mask = {"image": ("a.png", png_bytes(), "image/png"), "mask": ("m.png", png_bytes(), "image/png")}
    response = httpx.post(f"{server}/v1/images/edits", files=mask, data={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "mask"
    response = httpx.post(f"{server}/v1/images/edits", json={"prompt": "x"}, timeout=30)
    assert response.status_code == 400 and "multipart/form-data" in response.json()["error"]["message"]
    response = httpx.post(
        f"{server}/v1/images/edits", files={"image": ("big.png", os.urandom(2 << 20), "image/png")}, timeout=30
    )
    assert response.status_code == 413 and "larger than this server's limit" in response.json()["error"]["message"]
    json_type = {"content-type": "application/json"}
    response = httpx.post(f"{server}/v1/images/generations", content=b"{not json", headers=json_type, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["message"] == "the body is not valid JSON"
    response = httpx.post(f"{server}/v1/images/generations", content=b'{"prompt": "x"}', timeout=30)
    assert response.status_code == 400 and "Content-Type: application/json" in response.json()["error"]["message"]
    assert httpx.get(f"{server}/v1/nothing", timeout=30).json()["error"]["message"] == "Not Found"
    assert client.images.generate(prompt="still serving", extra_body={"seed": 1}).data[0].b64_json


# ---- AUTOMATIC1111 ---------------------------------------------------------------------------------------------


def test_a1111_txt2img_and_img2img(server, pipe):
    body = {"prompt": "a castle", "steps": 2, "seed": 11, "batch_size": 2, "cfg_scale": 1, "sampler_name": "Euler"}
    response = httpx.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    info = json.loads(result["info"])
    assert info["all_seeds"] == [11, 12] and info["steps"] == 2 and info["sd_model_name"] == "tiny-sd-turbo"
    assert result["parameters"]["prompt"] == "a castle" and result["parameters"]["batch_size"] == 2
    for b64, seed in zip(result["images"], info["all_seeds"]):
        assert np.array_equal(decode(b64), expected(pipe, "a castle", seed=seed, steps=2))

    random_seed = httpx.post(f"{server}/sdapi/v1/txt2img", json={"prompt": "x", "seed": -1}, timeout=60).json()
    seed = json.loads(random_seed["info"])["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    assert np.array_equal(decode(random_seed["images"][0]), expected(pipe, "x", seed=seed))

    init = base64.b64encode(png_bytes(seed=3)).decode()
    body = {"prompt": "x", "init_images": [f"data:image/png;base64,{init}"], "denoising_strength": 0.5, "steps": 2}
    response = httpx.post(f"{server}/sdapi/v1/img2img", json={**body, "seed": 4}, timeout=60)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.5 and info["steps"] == 1  # int(2 * 0.5) steps run
    with Image.open(io.BytesIO(png_bytes(seed=3))) as im:
        reference = expected(pipe, "x", seed=4, steps=2, image=im.convert("RGB"), strength=0.5)
    assert np.array_equal(decode(response.json()["images"][0]), reference)

    models = httpx.get(f"{server}/sdapi/v1/sd-models", timeout=30).json()
    assert [m["model_name"] for m in models] == ["tiny-sd-turbo"] and len(models[0]["sha256"]) == 64


@pytest.mark.parametrize(
    "route,body,fragment",
    [
        ("txt2img", {"prompt": "x", "width": 512}, f"width must be {SIZE}"),
        ("txt2img", {"prompt": "x", "cfg_scale": 7}, "guidance_scale must be 0 for sd-turbo"),
        ("txt2img", {"prompt": "x", "sampler_name": "DDIM"}, "unknown sampler 'DDIM'"),
        ("txt2img", {"prompt": "x", "batch_size": 2, "n_iter": 2}, "from 1 to 3 on this server, got 4"),
        ("txt2img", {"prompt": "x", "seed": -7}, "seed must be -1 (random) or at least 0"),
        ("txt2img", {"prompt": "x", "steps": "many"}, "steps: Input should be a valid integer"),
        ("txt2img", {"prompt": "x", "cfg_scale": float("nan")}, "cfg_scale: Input should be a finite number"),
        ("img2img", {"prompt": "x", "init_images": ["%%%"]}, "init_images is not valid base64"),
        ("img2img", {"prompt": "x", "init_images": []}, "init_images must hold one picture, got 0"),
        ("img2img", {"prompt": "x", "init_images": ["AAAA"], "mask": "AAAA"}, "inpainting (mask) is not supported"),
        ("img2img", {"prompt": "x"}, "init_images: Field required"),
    ],
)
def test_a1111_bad_input(server, route, body, fragment):
    response = httpx.post(
        f"{server}/sdapi/v1/{route}", content=json.dumps(body), headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Bad Request" and fragment in response.json()["detail"]


# ---- concurrency, health, metrics ------------------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_image_and_health_stays_fast(server, pipe):
    def one(seed: int) -> tuple[int, np.ndarray]:
        response = httpx.post(f"{server}/v1/images/generations", json={"prompt": "a fox", "seed": seed}, timeout=120)
        if response.status_code == 503:  # the queue holds 4: a full queue is a valid answer, retried here
            time.sleep(float(response.headers["retry-after"]) / 10)
            return one(seed)
        assert response.status_code == 200, response.text
        return seed, decode(response.json()["data"][0]["b64_json"])

    # /health is timed from a process of its own: in this one, the clients' threads would hold the GIL.
    probe = (
        "import httpx, json, sys, time\n"
        "times = []\n"
        "with httpx.Client() as client:\n"
        f"    client.get('{server}/health')\n"  # the connection is made before the timing starts
        "    while sys.stdin.readline().strip() == 'more':\n"
        "        start = time.perf_counter()\n"
        f"        assert client.get('{server}/health').status_code == 200\n"
        "        times.append(time.perf_counter() - start)\n"
        "        time.sleep(0.02)\n"
        "print(json.dumps(times))\n"
    )
    prober = subprocess.Popen([sys.executable, "-c", probe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    done = threading.Event()

    def pace() -> None:
        while not done.is_set():
            prober.stdin.write("more\n")
            prober.stdin.flush()
            time.sleep(0.05)
        prober.stdin.write("stop\n")
        prober.stdin.flush()

    pacer = threading.Thread(target=pace)
    pacer.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # 8 clients x 4 requests
            results = list(pool.map(one, [100 + i for i in range(32)]))
    finally:
        done.set()
        pacer.join()
    health = json.loads(prober.communicate(timeout=30)[0])
    for seed, image in results:
        assert np.abs(image.astype(int) - expected(pipe, "a fox", seed=seed).astype(int)).max() <= 1
    assert len(health) >= 3 and max(health) < 0.1, health


def test_metrics_count_requests_stages_and_images(server):
    httpx.post(f"{server}/v1/images/generations", json={"prompt": "x", "n": 2}, timeout=60)
    text = httpx.get(f"{server}/metrics", timeout=10).text
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[0] != "#"}
    assert values['turbo_requests_total{route="/v1/images/generations",status="200"}'] >= 1
    assert values["turbo_images_generated_total"] >= 2
    for stage in ("queue", "text_encoder", "unet", "vae_decoder", "total"):
        assert values[f'turbo_stage_seconds_count{{stage="{stage}"}}'] >= 1
    assert "turbo_queue_depth 0.0" in text and "turbo_ready 1.0" in text
    assert values["process_resident_memory_bytes"] > 0


# ---- the same app in a thread, with a pipeline a test can hold ---------------------------------------------------


def skipped(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f'turbo_requests_skipped_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_ready_is_503_while_loading(pipe):
    loaded = threading.Event()

    def slow_source() -> TurboPipeline:
        assert loaded.wait(60)
        return pipe

    with serve_in_thread(None, source=slow_source) as url:
        time.sleep(0.2)  # the server listens; the worker is loading
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200
        assert httpx.get(f"{url}/ready", timeout=5).json() == {"status": "loading"}
        response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "x"}, timeout=5)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "not_ready"
        loaded.set()
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{url}/ready", timeout=5)).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ready.json()["status"] == "ready" and ready.json()["backend"] == BACKEND
        assert ready.json()["cpu_class"] == detect_cpu().name


def test_full_queue_answers_503_and_a_gone_client_is_skipped(pipe):
    held = Held(pipe)
    with serve_in_thread(held, max_queue=1) as url:
        held.gate.clear()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            busy = pool.submit(httpx.post, f"{url}/v1/images/generations", json={"prompt": "first"}, timeout=60)
            held.wait_started()  # the worker holds "first"; the queue has room for one
            gone = pool.submit(httpx.post, f"{url}/v1/images/generations", json={"prompt": "gone"}, timeout=0.5)
            time.sleep(0.2)  # "gone" is queued
            full = httpx.post(f"{url}/v1/images/generations", json={"prompt": "refused"}, timeout=10)
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
            assert full.json()["error"]["code"] == "overloaded"
            with pytest.raises(httpx.TimeoutException):
                gone.result()  # the client gives up and disconnects while its request waits
            time.sleep(0.5)  # the server notices within its 0.1 s poll
            held.gate.set()
            assert busy.result().status_code == 200
        after = httpx.post(f"{url}/v1/images/generations", json={"prompt": "after"}, timeout=60)
        assert after.status_code == 200
        assert held.prompts == ["first", "after"]  # "gone" was dropped before it ran; "refused" never queued
        assert skipped(url, "cancelled") == 1


def test_a_failing_request_gets_500_alone(pipe):
    held = Held(pipe)
    with serve_in_thread(held) as url:
        response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "raise"}, timeout=60)
        assert response.status_code == 500
        assert "RuntimeError: a fault injected by the test" in response.json()["error"]["message"]
        response = httpx.post(f"{url}/sdapi/v1/txt2img", json={"prompt": "raise"}, timeout=60)
        assert response.status_code == 500 and response.json()["error"] == "Internal Server Error"
        assert httpx.post(f"{url}/v1/images/generations", json={"prompt": "ok"}, timeout=60).status_code == 200


def test_timeout_answers_504(pipe):
    held = Held(pipe)
    with serve_in_thread(held, timeout=0.5) as url:
        held.gate.clear()
        response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "slow"}, timeout=30)
        held.gate.set()
        assert response.status_code == 504 and "timeout of 0.5 s" in response.json()["error"]["message"]


# ---- health: what a cluster asks every replica -----------------------------------------------------------------


def test_health_check_self_test_and_failures_in_a_row(pipe):
    """What a cluster asks each replica every few seconds (Service.check_health), without a cluster."""
    import asyncio

    from turbo_runtime.errors import HealthError
    from turbo_runtime.serve.config import ServeSettings
    from turbo_runtime.serve.generation import ImageRequest
    from turbo_runtime.serve.service import FAILURES_IN_A_ROW, Service

    class Breakable:
        def __init__(self):
            self.broken = False

        def __getattr__(self, name):
            return getattr(pipe, name)

        def encode_prompt(self, prompt):
            if self.broken:
                raise RuntimeError("the engine is gone")
            return pipe.encode_prompt(prompt)

        def __call__(self, *args, **kwargs):
            if self.broken:
                raise RuntimeError("the engine is gone")
            return pipe(*args, **kwargs)

    breakable = Breakable()
    service = Service(lambda: breakable, ServeSettings())
    service.worker.start()

    async def scenario() -> None:
        await service.check_health()
        breakable.broken = True
        with pytest.raises(HealthError, match="the self-test failed: RuntimeError: the engine is gone"):
            await service.check_health()
        breakable.broken = False
        await service.check_health()
        breakable.broken = True
        for seed in range(FAILURES_IN_A_ROW):
            with pytest.raises(Exception, match="generation failed"):
                await service.generate(ImageRequest("x", seed=seed))
        breakable.broken = False  # the self-test passes, but the requests failed one after another
        with pytest.raises(HealthError, match=f"the last {FAILURES_IN_A_ROW} generations failed: RuntimeError"):
            await service.check_health()
        await service.generate(ImageRequest("x", seed=0))
        await service.check_health()

    try:
        asyncio.run(scenario())
    finally:
        service.worker.close(timeout=30)


# ---- realtime --------------------------------------------------------------------------------------------------


def test_realtime_latest_wins(pipe):
    from websockets.sync.client import connect

    held = Held(pipe)
    with serve_in_thread(held) as url, connect(url.replace("http", "ws") + "/realtime") as ws:
        hello = json.loads(ws.recv())
        assert hello["type"] == "hello" and hello["model"] == "tiny-sd-turbo" and hello["width"] == SIZE
        held.gate.clear()
        for i in range(10):  # faster than the server can generate: it is held while the first one runs
            ws.send(json.dumps({"type": "generate", "id": i, "prompt": f"fox {i}", "seed": i, "format": "png"}))
            if i == 0:
                held.wait_started()
        time.sleep(0.3)  # all ten have arrived
        held.gate.set()
        frames = []
        while not frames or frames[-1][0]["id"] != 9:
            header = json.loads(ws.recv(timeout=60))
            assert header["type"] == "frame", header
            frames.append((header, ws.recv(timeout=60)))
        assert [h["id"] for h, _ in frames] == [0, 9]  # 1 to 8 were replaced before they started: dropped
        header, blob = frames[-1]
        assert header["seed"] == 9 and header["timings"]["unet"] > 0 and header["mime"] == "image/png"
        assert np.array_equal(decode(blob), expected(pipe, "fox 9", seed=9))
        assert held.prompts == ["fox 0", "fox 9"]
        assert skipped(url, "superseded") == 8

        ws.send(json.dumps({"type": "save"}))
        assert json.loads(ws.recv(timeout=30)) == {"type": "png", "id": 9, "seed": 9}
        assert png_text(ws.recv(timeout=30))["prompt"] == "fox 9"

        image = "data:image/png;base64," + base64.b64encode(png_bytes(seed=2)).decode()
        ws.send(json.dumps({"id": "i2i", "prompt": "x", "seed": 1, "steps": 2, "strength": 0.5, "image": image}))
        header = json.loads(ws.recv(timeout=60))
        assert header["type"] == "frame" and header["steps"] == 1 and header["timings"]["vae_encoder"] > 0
        assert ws.recv(timeout=30)[:3] == b"\xff\xd8\xff"  # JPEG by default

        ws.send(json.dumps({"id": 1, "prompt": "x", "steps": 99}))
        assert json.loads(ws.recv(timeout=30)) == {
            "type": "error",
            "id": 1,
            "status": 400,
            "message": "steps must be from 1 to 50 on this server, got 99",
        }
        ws.send("not json")
        assert json.loads(ws.recv(timeout=30))["message"] == "send JSON objects as text messages"


def test_api_key_guards_every_api_and_the_websocket(pipe):
    from websockets.sync.client import connect

    with serve_in_thread(pipe, api_key="s3cret") as url:
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # probes need no key
        assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the page asks for the key itself
        for method, route in [("POST", "/v1/images/generations"), ("GET", "/v1/models"), ("GET", "/sdapi/v1/sd-models"),
                              ("POST", "/sdapi/v1/txt2img"), ("GET", "/metrics")]:  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                response = httpx.request(method, url + route, json={"prompt": "x"}, headers=headers, timeout=10)
                assert response.status_code == 401, (route, headers, response.text)
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["code"] == (
            "invalid_api_key"
        )
        assert openai_client(url, "s3cret").images.generate(prompt="x").data[0].b64_json
        ws_url = url.replace("http", "ws") + "/realtime"
        with connect(ws_url) as ws:
            ws.send(json.dumps({"type": "auth", "key": "wrong"}))
            assert json.loads(ws.recv(timeout=10))["status"] == 401
            with pytest.raises(Exception, match="1008"):
                ws.recv(timeout=10)
        with connect(ws_url) as ws:
            ws.send(json.dumps({"type": "auth", "key": "s3cret"}))
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
        with connect(ws_url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"


# ---- the page, in a real browser -------------------------------------------------------------------------------


def test_page_in_headless_chromium(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=flags)
        try:
            page = browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            page.wait_for_selector("#status.ready", timeout=30_000)
            assert "tiny-sd-turbo" in page.inner_text("#info") and BACKEND in page.inner_text("#info")
            page.fill("#seed", "7")
            page.type("#prompt", "a lighthouse at dusk", delay=20)  # regenerates as it is typed
            page.wait_for_function(
                "document.querySelector('#frame').dataset.frameId && document.querySelector('#frame').complete"
                " && document.querySelector('#frame').naturalWidth > 0 && !document.querySelector('#status.busy')",
                timeout=60_000,
            )
            assert page.inner_text("#timing").split(" ms per frame")[0].isdigit(), page.inner_text("#timing")
            shot = tmp_path / "page.png"
            page.screenshot(path=str(shot))
            frame = np.asarray(Image.open(io.BytesIO(page.locator("#frame").screenshot())).convert("RGB"))
            assert frame.std() > 20  # a picture, not a blank or flat box
            with page.expect_download(timeout=30_000) as download:
                page.click("#download")
            saved = tmp_path / "saved.png"
            download.value.save_as(saved)
            with Image.open(saved) as im:
                assert im.text["prompt"] == "a lighthouse at dusk" and im.text["seed"] == "7"
            page.click("#refine")
            page.wait_for_function("document.querySelector('#timing').textContent.includes('2 steps')", timeout=60_000)
            assert not errors, errors
        finally:
            browser.close()


# ---- the command line ------------------------------------------------------------------------------------------


def test_every_backend_serves_the_pipelines_pixels(sd_artifacts):
    for backend in ("torch", "openvino"):
        args = ["--artifacts", str(sd_artifacts), "--backend", backend, "--dtype", "float32"]
        with serve_process(*args) as served:
            response = httpx.post(f"{served.url}/v1/images/generations", json={"prompt": "x", "seed": 3}, timeout=120)
            assert response.status_code == 200, response.text
            local = TurboPipeline.from_artifacts(sd_artifacts, backend, dtype="float32")
            served = decode(response.json()["data"][0]["b64_json"])
            assert np.abs(served.astype(int) - expected(local, "x", seed=3).astype(int)).max() <= 1


def test_default_backend_is_chosen_for_the_cpu_and_reported(sd_artifacts):
    """No --backend: auto takes OpenVINO (installed, and the artifacts hold its IR); the ready line names the CPU
    class, --verbose the reason, /ready both."""
    with serve_process("--artifacts", str(sd_artifacts), "--verbose") as served:
        assert "on openvino CPU " in served.ready_line and f"cpu class {detect_cpu().name};" in served.ready_line
        ready = httpx.get(f"{served.url}/ready", timeout=5).json()
        assert (ready["backend"], ready["cpu_class"]) == ("openvino", detect_cpu().name)
        assert f"cpu class: {detect_cpu()}; backend openvino, precision fp32: " in served.stderr


def test_a_failed_load_exits_2_with_the_reason(tmp_path, sd_artifacts):
    broken = damaged_copy(sd_artifacts, tmp_path)
    with serve_process("--artifacts", str(broken), "--backend", BACKEND, ready=False) as served:
        assert served.proc.wait(timeout=120) == 2
        assert "onnx/unet/model.onnx was modified" in served.stderr and "Traceback" not in served.stderr


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--artifacts", "NOWHERE"], ["does not exist", "turbo-export MODEL --out"]),
        (["--artifacts", "ART", "--backend", "tensorrt"], ["unknown backend 'tensorrt'"]),
        (["--artifacts", "ART", "--vae", "tiny"], ["export options, for --model"]),
        (["--artifacts", "ART", "--max-queue", "0"], ["max_queue must be at least 1, got 0"]),
        (["--artifacts", "ART", "--port", "70000"], ["--port must be from 0 to 65535"]),
        (["--artifacts", "ART", "--port", "TAKEN"], ["cannot listen on 127.0.0.1:"]),
    ],
)
def test_cli_bad_input(tmp_path, sd_artifacts, args, fragments):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        subst = {"NOWHERE": str(tmp_path / "none"), "ART": str(sd_artifacts), "TAKEN": str(taken.getsockname()[1])}
        result = run_cli("turbo-serve", *[subst.get(a, a) for a in args])
    assert_one_line_error(result, *fragments)


def test_load_benchmark_runs_locust_against_the_server(tmp_path, sd_artifacts):
    """benchmarks/serve_bench.py end to end, briefly: the in-process call, locust, the page in Chromium."""
    frames = 1 if shutil.which("chromium") else 0
    args = ["--artifacts", str(sd_artifacts), "--backend", BACKEND, "--users", "1", "2", "--duration", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.serve_bench", *args, "--calls", "2", "--frames", str(frames),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["users"] for r in results["load"]] == [1, 2]
    assert all(r["requests"] > 0 and r["failures"] == 0 and r["p50_ms"] > 0 for r in results["load"])
    overhead = results["overhead"]
    assert overhead["in_process_median_s"] > 0 and overhead["http_median_s"] > overhead["server_pipeline_median_s"]
    assert "| 2 |" in result.stdout and (not frames or results["browser"]["median_s"] > 0)
