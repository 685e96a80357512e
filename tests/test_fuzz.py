"""Hostile input, generated: every request the HTTP APIs, the WebSocket or turbo-run's arguments can be sent gets
its image or a 4xx (exit code 2) with a one-line message; never a 500, a traceback or a hang, and the server
answers a normal request right after each."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import bomb_png, gif_bytes, png_bytes, serve_in_thread

from turbo_runtime.pipeline import TurboPipeline

EXAMPLES = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text that breaks naive handling: control characters, lone surrogates, NUL, right-to-left marks, huge strings.
nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Cc", "Cs", "Cf", "Zl", "Zp"]), max_size=20),
    st.sampled_from(["\ud800", "a\udcffb", "\x00", "\u202e", "x" * 100_000, "", " ", "Ω" * 5000]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 3, 4, -1, 2**31, 2**32, 2**63, 1e308, -0.0, 0.5, 1.0]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
field = st.one_of(nasty_text, numbers, json_values)
OPENAI_FIELDS = ["prompt", "n", "size", "response_format", "output_format", "model", "seed", "steps",
                 "guidance_scale", "negative_prompt", "quality"]  # fmt: skip
A1111_FIELDS = ["prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "batch_size", "n_iter",
                "sampler_name", "denoising_strength", "init_images", "mask"]  # fmt: skip


def bodies(fields: list[str]):
    """Anything JSON can say, and mostly objects with the API's own field names holding odd values."""
    shaped = st.fixed_dictionaries({}, optional={name: field for name in fields})
    return st.one_of(json_values, shaped, shaped, shaped)


pictures = st.one_of(
    st.binary(max_size=64),
    st.just(png_bytes((8, 8))),
    st.just(png_bytes((8, 8))[:40]),  # truncated
    st.just(gif_bytes()),
    st.just(bomb_png(100_000, 100_000)),
    st.just(bomb_png(5000, 5000)),
    st.just(b"\xff\xd8\xff\xe0" + b"\x00" * 30),  # a JPEG that stops after its marker
)


@pytest.fixture(scope="module")
def url(sd_artifacts):
    pipe = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")
    with serve_in_thread(pipe, max_steps=4, max_images=2, max_body_bytes=1 << 20) as url:
        yield url


def check(response: httpx.Response, url: str) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        message = body["error"]["message"] if isinstance(body["error"], dict) else body["detail"]
        assert message and "\n" not in message and "Traceback" not in message, message
    # The server still serves.
    normal = httpx.post(f"{url}/v1/images/generations", json={"prompt": "fox", "seed": 1}, timeout=60)
    assert normal.status_code == 200, normal.text


def post_json(url: str, route: str, body) -> httpx.Response:
    content = json.dumps(body, ensure_ascii=True)  # NaN and Infinity go out as JavaScript spells them
    return httpx.post(url + route, content=content, headers={"content-type": "application/json"}, timeout=60)


@EXAMPLES
@given(body=bodies(OPENAI_FIELDS))
def test_openai_generations_take_any_json(url, body):
    check(post_json(url, "/v1/images/generations", body), url)


@EXAMPLES
@given(body=bodies(A1111_FIELDS), route=st.sampled_from(["/sdapi/v1/txt2img", "/sdapi/v1/img2img"]))
def test_a1111_takes_any_json(url, body, route):
    check(post_json(url, route, body), url)


@EXAMPLES
@given(
    picture=pictures,
    as_data_url=st.booleans(),
    strength=st.one_of(st.none(), numbers),
    steps=st.one_of(st.none(), st.integers(-2, 6)),
)
def test_a1111_img2img_takes_any_picture(url, picture, as_data_url, strength, steps):
    encoded = base64.b64encode(picture).decode()
    body = {"prompt": "x", "init_images": [f"data:image/png;base64,{encoded}" if as_data_url else encoded]}
    if strength is not None:
        body["denoising_strength"] = strength
    if steps is not None:
        body["steps"] = steps
    check(post_json(url, "/sdapi/v1/img2img", body), url)


@EXAMPLES
@given(
    picture=st.one_of(st.none(), pictures),
    field_name=st.sampled_from(["image", "image[]", "mask", "file"]),
    form=st.dictionaries(st.sampled_from(OPENAI_FIELDS + ["strength"]), nasty_text, max_size=4),
)
def test_openai_edits_take_any_multipart(url, picture, field_name, form):
    files = None if picture is None else {field_name: ("upload.png", picture, "image/png")}
    form = {k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}  # multipart carries bytes
    check(httpx.post(f"{url}/v1/images/edits", files=files, data=form, timeout=60), url)


@EXAMPLES
@given(raw=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "multipart/form-data",
                                                                   "text/plain", "multipart/form-data; boundary=x"]))  # fmt: skip
def test_any_bytes_with_any_content_type(url, raw, content_type):
    for route in ("/v1/images/generations", "/v1/images/edits", "/sdapi/v1/txt2img"):
        response = httpx.post(url + route, content=raw, headers={"content-type": content_type}, timeout=60)
        check(response, url)


@EXAMPLES
@given(messages=st.lists(st.one_of(nasty_text, bodies(["type", "id", "prompt", "seed", "steps", "strength", "image",
                                                       "format", "key"]).map(json.dumps)), min_size=1, max_size=4))  # fmt: skip
def test_realtime_takes_any_message(url, messages):
    from websockets.sync.client import connect

    with connect(url.replace("http", "ws") + "/realtime", max_size=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "hello"
        for message in messages:
            ws.send(message.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
        ws.send(json.dumps({"type": "generate", "id": "last", "prompt": "fox", "seed": 1}))
        while True:  # every message gets a frame, an error or nothing (replaced); the last one its frame
            reply = ws.recv(timeout=60)
            if isinstance(reply, bytes):
                continue
            reply = json.loads(reply)
            assert reply["type"] in ("frame", "error", "png"), reply
            if reply["type"] == "error":
                assert reply["status"] < 500 and "\n" not in reply["message"], reply
            if reply.get("id") == "last" and reply["type"] == "frame":
                break


# ---- turbo-run's arguments -------------------------------------------------------------------------------------

arg_text = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "0x10", "1_000", " 3", "", "３"]),
    st.text(max_size=8),
)
# Counts: junk, small valid values, and values past the bounds; never a valid count that runs for minutes.
counts = st.one_of(arg_text.filter(lambda t: not t.strip().isdigit()), st.integers(1, 3).map(str),
                   st.sampled_from(["1001", "65", "100000", str(2**64)]))  # fmt: skip
OPTIONS = {
    "--seed": arg_text,
    "--steps": counts,
    "--num-images": counts,
    "--strength": arg_text,
    "--guidance-scale": arg_text,
    "--height": arg_text,
    "--width": arg_text,
    "--backend": st.sampled_from(["onnxruntime", "ONNXRUNTIME", "", "tensorrt"]),
    "--dtype": st.sampled_from(["float32", "int4", ""]),
    "--scheduler": st.sampled_from(["euler", "dpm++2m", "ddim", ""]),
    "--image": st.sampled_from(["INIT", "MISSING", "GARBAGE"]),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=nasty_text.filter(lambda t: len(t) < 1000),
    options=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=4).flatmap(
        lambda chosen: st.fixed_dictionaries({name: OPTIONS[name] for name in chosen})
    ),
)
def test_turbo_run_arguments(tmp_path_factory, sd_artifacts, prompt, options):
    from turbo_runtime.cli import main

    work = tmp_path_factory.mktemp("run")
    (work / "init.png").write_bytes(png_bytes())
    (work / "garbage.png").write_bytes(b"not an image")
    paths = {"INIT": "init.png", "MISSING": "missing.png", "GARBAGE": "garbage.png"}
    argv = ["--artifacts", str(sd_artifacts), "--backend", "onnxruntime", "--prompt", prompt, "--quiet"]
    argv += ["--out", str(work / "out.png")]
    for name, value in options.items():
        argv += [name, str(work / paths[value]) if name == "--image" else value]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a usage line and its error line
            code = e.code
    text = stderr.getvalue()
    assert code in (0, 2), (argv, code, text)
    assert "Traceback" not in text, text
    written = sorted(p.name for p in work.iterdir())
    if code == 2:
        assert len([line for line in text.splitlines() if "error:" in line]) == 1, text
        assert written == ["garbage.png", "init.png"], written  # nothing written, nothing half-written
    else:
        assert "out.png" in written or "out-0.png" in written
        assert not [name for name in written if name.startswith(".")], written


def test_fuzzing_covers_the_edges(url):
    """The strategies reach what they claim: NaN and a lone surrogate in JSON bodies are refused as 4xx."""
    nan = post_json(url, "/v1/images/generations", {"prompt": "x", "guidance_scale": math.nan})
    assert nan.status_code == 400 and nan.json()["error"]["param"] == "guidance_scale"
    surrogate = post_json(url, "/v1/images/generations", {"prompt": "a\ud800"})
    assert surrogate.status_code == 400 and "lone surrogate" in surrogate.json()["error"]["message"]
