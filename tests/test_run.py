"""turbo-run and the Python API: round trips through the real CLI, cross-backend agreement, bad input."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, SIZE, assert_one_line_error, run_cli
from PIL import Image

from turbo_runtime.artifacts import Artifacts
from turbo_runtime.auto import choose
from turbo_runtime.backends import create_backend
from turbo_runtime.cpu import detect as detect_cpu
from turbo_runtime.errors import InputError
from turbo_runtime.pipeline import MAX_IMAGES, TurboPipeline
from turbo_runtime.sampler import NoiseSource
from turbo_runtime.spec import PARITY_TOLERANCE


def png_text(path) -> dict:
    with Image.open(path) as im:
        return dict(im.text)


def test_default_command_generates_an_image_from_the_builtin_replica(tmp_path):
    """The README's quickstart: export on first use at the default 512x512 and this CPU's full-quality precision,
    then generate, no download."""
    result = run_cli(
        "turbo-run",
        "--model",
        "tiny-sd-turbo",
        "--backend",
        "openvino",
        "--prompt",
        "a red fox in the snow",
        "--out",
        "fox.png",
        "--seed",
        "7",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "fox.png") as im:
        assert im.size == (512, 512) and im.mode == "RGB"
    text = png_text(tmp_path / "fox.png")
    choice = choose("openvino")  # the precision was left to auto: the PNG says what it chose and why
    assert text.pop("choice") == str(choice) and choice.chose == ("precision",)
    assert text == {
        "prompt": "a red fox in the snow",
        "seed": "7",
        "steps": "1",
        "model": "tiny-sd-turbo",
        "backend": "openvino",
        "software": "turbo-runtime",
        "cpu_class": detect_cpu().name,
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_round_trip_on_each_backend(tmp_path, sdxl_artifacts, backend):
    out = tmp_path / "fox.png"
    result = run_cli(
        "turbo-run",
        "--artifacts",
        str(sdxl_artifacts),
        "--backend",
        backend,
        "--prompt",
        "a fox",
        "--seed",
        "3",
        "--steps",
        "2",
        "--num-images",
        "2",
        "--out",
        str(out),
        "--verbose",
        # float32: random tiny weights make bf16 arithmetic a coin toss; the default precision has its own tests
        "--dtype",
        "float32",
    )
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / "fox-0.png", tmp_path / "fox-1.png"]
    assert result.stdout.split() == [str(p) for p in paths]
    assert re.search(r"unet \d+\.\d{3}( \+ \d+\.\d{3})+ s", result.stderr) and "vae decode" in result.stderr  # timings
    first, second = (np.asarray(Image.open(p)) for p in paths)
    assert first.shape == (SIZE, SIZE, 3) and not np.array_equal(first, second)
    assert png_text(paths[0])["backend"] == backend and png_text(paths[0])["steps"] == "2"
    # Backend given: the class and the precision are reported, and no choice is recorded
    assert f"cpu class: {detect_cpu()}; backend {backend}, precision fp32 (computing in f32): given" in result.stderr
    assert png_text(paths[0])["cpu_class"] == detect_cpu().name and "choice" not in png_text(paths[0])


def test_cli_auto_backend_takes_what_the_artifacts_hold(tmp_path, export_tiny):
    """The default --backend auto: OpenVINO where its files are, else ONNX Runtime, with the reason logged and saved."""
    onnx_only = export_tiny("tiny-sd-turbo", "fp32", ("onnx",))
    result, out = _run(onnx_only, tmp_path, "--verbose", "--seed", "2")
    assert result.returncode == 0, result.stderr
    choice = png_text(out)["choice"]
    assert choice.startswith("backend onnxruntime, precision fp32: openvino: the artifacts hold no openvino files; ")
    assert f"cpu class: {detect_cpu()}; backend onnxruntime, precision fp32 (computing in f32): " in result.stderr
    assert png_text(out)["backend"] == "onnxruntime"
    expected = TurboPipeline.from_artifacts(onnx_only, "onnxruntime")("x", seed=2).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_cli_image_to_image(tmp_path, sd_artifacts):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(init)
    out = tmp_path / "out.png"
    result = run_cli(
        "turbo-run",
        "--artifacts",
        str(sd_artifacts),
        "--backend",
        "onnxruntime",
        "--prompt",
        "x",
        "--image",
        str(init),
        "--strength",
        "0.5",
        "--steps",
        "4",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert png_text(out)["strength"] == "0.5" and png_text(out)["steps"] == "2"
    assert Image.open(out).size == (SIZE, SIZE)  # the init image is resized to the exported shape


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_backends_agree_and_share_the_seed_noise(artifacts_of, family):
    images = {}
    for backend in BACKENDS:
        pipe = TurboPipeline.from_artifacts(
            artifacts_of[family], backend, dtype=None if backend == "onnxruntime" else "float32"
        )
        images[backend] = pipe("a red fox", num_inference_steps=2, seed=42, output_type="np").images
        noise = NoiseSource(42).normal(pipe.latent_shape)
        explicit = pipe("a red fox", num_inference_steps=2, seed=42, latents=noise, output_type="np").images
        np.testing.assert_array_equal(explicit, images[backend])  # seeded noise == explicit latents
    for backend in BACKENDS[1:]:
        assert np.abs(images[backend] - images["torch"]).max() <= PARITY_TOLERANCE["fp32"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pipeline_without_its_vae_encoder_draws_the_same_and_refuses_an_image(sd_artifacts, backend):
    full = TurboPipeline.from_artifacts(sd_artifacts, backend)
    lean = TurboPipeline.from_artifacts(sd_artifacts, backend, vae_encoder=False)
    assert "vae_encoder" in full.backend.components and "vae_encoder" not in lean.backend.components
    expected = full("a fox", seed=4, output_type="np").images
    assert np.array_equal(lean("a fox", seed=4, output_type="np").images, expected)
    with pytest.raises(InputError, match=r"^this pipeline was loaded without its VAE encoder \(vae_encoder=False\)"):
        lean("a fox", image=full("a fox", seed=4).images[0], strength=0.5, seed=4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_one_shot_pipeline_frees_each_component_after_use_and_draws_the_same(artifacts_of, backend):
    family = "sdxl-turbo" if backend == "openvino" else "sd-turbo"  # two text encoders, on one backend
    kept = TurboPipeline.from_artifacts(artifacts_of[family], backend)
    expected = kept(["a fox", "a hare"], num_images_per_prompt=2, seed=4, output_type="np").images
    picture = kept("a fox", seed=4).images[0]
    for image in (None, picture):
        once = TurboPipeline.from_artifacts(artifacts_of[family], backend, vae_encoder=image is not None)
        once.one_shot = True  # as turbo-run loads and calls it
        if image is None:
            drawn = once(["a fox", "a hare"], num_images_per_prompt=2, seed=4, output_type="np").images
            assert np.array_equal(drawn, expected)
        else:
            drawn = once("a fox", image=image, strength=0.5, seed=4, output_type="np").images
            assert np.array_equal(drawn, kept("a fox", image=image, strength=0.5, seed=4, output_type="np").images)
            with pytest.raises(InputError, match=r"^vae_encoder was released after its last use"):
                once.backend.encode_image(np.zeros((1, 3, SIZE, SIZE), np.float32))
        assert once.backend.components == ("vae_decoder",)
        with pytest.raises(InputError, match=rf"^{kept.family.text_encoders[0]} was released after its last use"):
            once("a fox", seed=4)
    assert kept.backend.components == kept.family.components


def test_openvino_defaults_to_the_hardware_precision_and_honours_dtype(sd_artifacts):
    default = TurboPipeline.from_artifacts(sd_artifacts, "openvino").backend
    f32 = TurboPipeline.from_artifacts(sd_artifacts, "openvino", dtype="float32").backend
    assert f32.inference_precision == "f32"
    assert default.inference_precision in ("bf16", "f16", "f32")


def test_same_seed_same_image_and_prompt_truncation(sd_artifacts, caplog):
    pipe = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")
    a = pipe("fox", seed=1, output_type="np").images
    assert np.array_equal(a, pipe("fox", seed=1, output_type="np").images)
    assert not np.array_equal(a, pipe("fox", seed=2, output_type="np").images)
    assert pipe("", seed=1, output_type="np").images.shape == a.shape  # an empty prompt is valid
    long = " ".join(["fox"] * 100)
    with caplog.at_level("WARNING"):
        out = pipe(long, seed=1, output_type="np")
    assert "longer than 77 tokens" in caplog.text
    assert np.array_equal(out.images, pipe(" ".join(["fox"] * 75), seed=1, output_type="np").images)
    pil = pipe("fox", seed=1, num_images_per_prompt=2)
    assert len(pil.images) == 2 and pil.images[0].size == (SIZE, SIZE) and pil.seed == 1


def test_backend_refuses_wrong_shapes(sd_artifacts):
    art = Artifacts.load(sd_artifacts)
    backend = create_backend("onnxruntime", art)
    with pytest.raises(
        InputError,
        match=r"vae_decoder input 'latent' has shape \(1, 4, 8, 8\), the exported static shape is \(1, 4, 16, 16\)",
    ):
        backend.decode(np.zeros((1, 4, 8, 8), np.float32))


def _run(artifacts, tmp_path, *args):
    out = tmp_path / "out.png"
    result = run_cli("turbo-run", "--artifacts", str(artifacts), "--prompt", "x", "--out", str(out), *args)
    return result, out


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--backend", "tensorrt"], ["unknown backend 'tensorrt'", "torch, onnxruntime, openvino"]),
        (["--steps", "0"], ["at least 1", "got 0"]),
        (["--steps", "100000"], ["num_inference_steps must be at most the scheduler's 1000 training timesteps"]),
        (["--num-images", "0"], ["num_images_per_prompt must be at least 1"]),
        (["--guidance-scale", "7.5"], ["guidance_scale must be 0 for sd-turbo", "without classifier-free guidance"]),
        (["--height", "256"], ["exported for 128x128", "not 256x128", "--height/--width"]),
        (["--image", "INIT", "--strength", "0"], ["strength must be in (0, 1], got 0.0"]),
        (["--image", "INIT", "--strength", "1.5"], ["strength must be in (0, 1], got 1.5"]),
        (["--image", "INIT", "--strength", "0.3", "--steps", "2"], ["num_inference_steps * strength", "2 * 0.3"]),
        (["--image", "MISSING"], ["init image", "does not exist"]),
        (["--image", "GARBAGE"], ["cannot read init image"]),
        (["--strength", "0.5"], ["strength applies to image-to-image only"]),
        (["--dtype", "int4"], ["unknown dtype 'int4'"]),
        (["--vae", "tiny"], ["--vae is an export option, for --model"]),
        (["--backend", "onnxruntime", "--device", "tpu"], ["unknown onnxruntime device 'tpu'"]),
        (["--device", "CPU"], ["--device CPU names a device of one backend: give --backend with it"]),
    ],
)
def test_bad_input(tmp_path, sd_artifacts, args, fragments):
    init, garbage = tmp_path / "init.png", tmp_path / "garbage.png"
    Image.new("RGB", (SIZE, SIZE)).save(init)
    garbage.write_bytes(b"not an image")
    subst = {"INIT": str(init), "MISSING": str(tmp_path / "nope.png"), "GARBAGE": str(garbage)}
    result, out = _run(sd_artifacts, tmp_path, *[subst.get(a, a) for a in args])
    assert_one_line_error(result, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".out.png*"))


def _unwritable_folder(tmp_path) -> Path:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permission bits; Linux's /proc takes no new files from anyone
        if not sys.platform.startswith("linux"):
            pytest.skip("running as root: no folder refuses files")
        return Path("/proc")
    return folder


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--seed", "-5"], ["seed must be an integer from 0 to 4294967295, got -5"]),
        (["--seed", "4294967296"], ["seed must be an integer from 0 to 4294967295, got 4294967296"]),
        (["--num-images", "100000"], ["a call makes at most 64 images", "num_images_per_prompt 100000"]),
        (["--prompt", os.fsdecode(b"caf\xe9")], ["prompt is not valid text: lone surrogate U+DCE9 at index 3"]),
        (["--out", "{tmp}/shots"], ["shots is a folder; name a PNG file in it", "shots/image.png"]),
        (["--out", "{tmp}/shots.png"], ["shots.png is a folder"]),
        (["--out", "{tmp}/new/"], ["new/ is a folder"]),
        (["--out", "{tmp}/notes.txt/x.png"], ["notes.txt is not a folder"]),
        (["--out", "{tmp}/notes.txt/sub/x.png"], ["notes.txt is not a folder"]),
        (["--out", "{locked}/x.png"], ["cannot write", "no file can be created in"]),
    ],
)
def test_refused_before_anything_is_exported_or_loaded(tmp_path, args, fragments):
    """Seed, image count, prompt and --out need no model: refused before the export of --model, writing nothing."""
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots.png").mkdir()
    (tmp_path / "notes.txt").write_text("")
    locked = _unwritable_folder(tmp_path) if "{locked}/x.png" in args else None
    args = [a.format(tmp=tmp_path, locked=locked) for a in args]
    before = sorted(tmp_path.rglob("*"))
    cache = tmp_path / "cache"
    result = run_cli(
        "turbo-run", "--model", "tiny-sd-turbo", "--height", str(SIZE), "--width", str(SIZE), "--backend",
        "onnxruntime", "--prompt", "x", "--out", str(tmp_path / "out.png"), *args,
        env={"TURBO_RUNTIME_CACHE": str(cache)},
    )  # fmt: skip
    assert_one_line_error(result, *fragments)
    assert sorted(tmp_path.rglob("*")) == before and not cache.exists()


def test_cli_creates_missing_out_folders_and_takes_control_characters(tmp_path, sd_artifacts):
    """--out in folders that do not exist yet creates them; control characters in a prompt go to the tokenizer."""
    out = tmp_path / "new" / "sub" / "fox.png"
    prompt = "a\tred\x07fox\x1b"
    result = run_cli(
        "turbo-run", "--artifacts", str(sd_artifacts), "--backend", "onnxruntime", "--prompt", prompt, "--seed", "3",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert png_text(out)["prompt"] == prompt
    expected = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")(prompt, seed=3).images[0]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_api_refuses_bad_seeds_prompts_and_counts(sd_artifacts):
    pipe = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")
    bad = [
        (dict(seed="x"), "seed must be an integer from 0 to 4294967295, got 'x'"),
        (dict(seed=-5), "seed must be an integer from 0 to 4294967295, got -5"),
        (dict(seed=True), "got True"),
        (dict(seed=1.5), "got 1.5"),
        (dict(seed=2**32), "got 4294967296"),
        (dict(prompt=None), "prompt must be a string or a non-empty list of strings, got NoneType"),
        (dict(prompt=3), "got int"),
        (dict(prompt=[]), "non-empty list of strings, got list"),
        (dict(prompt=["a", b"b"]), "got a list holding bytes"),
        (dict(prompt="fox\ud800"), "prompt is not valid text: lone surrogate U+D800 at index 3"),
        (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt must hold one entry per prompt (2), got 1"),
        (dict(negative_prompt=["x\udfff"]), "negative_prompt is not valid text: lone surrogate U+DFFF"),
        (dict(num_inference_steps=1001), "at most the scheduler's 1000 training timesteps, got 1001"),
        (dict(num_images_per_prompt=MAX_IMAGES + 1), f"at most {MAX_IMAGES} images, got 1 prompt(s)"),
        (dict(prompt=["a", "b"], num_images_per_prompt=33), "got 2 prompt(s) x num_images_per_prompt 33"),
    ]
    for kwargs, message in bad:
        with pytest.raises(InputError, match=re.escape(message)):
            pipe(**{"prompt": "fox", **kwargs})
    image = pipe("fox", seed=3, output_type="np").images
    for seed in (3.0, np.int64(3)):  # an integral float and numpy's integers are seeds too
        out = pipe("fox", seed=seed, output_type="np")
        assert out.seed == 3 and np.array_equal(out.images, image)
    assert pipe("a\x00b\x07", seed=0, output_type="np").images.shape == (1, SIZE, SIZE, 3)  # control characters


def test_a_list_of_prompts_draws_each_image_in_turn_from_the_seed(sd_artifacts):
    """As documented in __call__: images prompt by prompt, the n-th taking the generator's n-th draws."""
    pipe = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")
    images = pipe(["a fox", "a castle"], seed=5, num_images_per_prompt=2, output_type="np").images
    assert images.shape == (4, SIZE, SIZE, 3)
    fox = pipe("a fox", seed=5, num_images_per_prompt=4, output_type="np").images
    castle = pipe("a castle", seed=5, num_images_per_prompt=4, output_type="np").images
    np.testing.assert_array_equal(images, np.concatenate([fox[:2], castle[2:]]))
    np.testing.assert_array_equal(images[0], pipe("a fox", seed=5, output_type="np").images[0])
    assert not np.array_equal(images[2], pipe("a castle", seed=5, output_type="np").images[0])  # its own noise


def test_a_list_of_prompts_with_negative_prompts_under_guidance(artifacts_of):
    pipe = TurboPipeline.from_artifacts(artifacts_of["sd1"], "onnxruntime")
    call = dict(num_inference_steps=2, guidance_scale=6.0, seed=9, output_type="np")
    images = pipe(["a fox", "a castle"], negative_prompt=["fog", "rain"], **call).images
    one = pipe("a fox", negative_prompt="fog", **call).images[0]
    two = pipe("a castle", negative_prompt="rain", num_images_per_prompt=2, **call).images[1]
    np.testing.assert_array_equal(images, np.stack([one, two]))
    shared = pipe(["a fox", "a castle"], negative_prompt="fog", **call).images  # one string for all prompts
    np.testing.assert_array_equal(shared[0], one)


def test_missing_artifacts_give_the_export_command(tmp_path, export_tiny):
    onnx_only = export_tiny("tiny-sd-turbo", "fp32", ("onnx",))
    result, out = _run(onnx_only, tmp_path, "--backend", "openvino")
    assert_one_line_error(result, "holds no openvino artifacts", "turbo-export tiny-sd-turbo --format openvino")
    result, out = _run(tmp_path / "nowhere", tmp_path)
    assert_one_line_error(result, "does not exist", "turbo-export MODEL --out")
    copy = tmp_path / "copy"
    shutil.copytree(onnx_only, copy)
    (copy / "onnx" / "unet" / "model.onnx").unlink()
    result, out = _run(copy, tmp_path, "--backend", "onnxruntime")
    assert_one_line_error(result, "onnx/unet/model.onnx is missing")
    assert not out.exists()


@pytest.mark.parametrize(
    "backend,package,extra",
    [("openvino", "openvino", "openvino"), ("onnxruntime", "onnxruntime", "onnxruntime"), ("torch", "torch", "torch")],
)
def test_missing_backend_package_names_the_extra(tmp_path, sd_artifacts, backend, package, extra):
    code = (
        f"import sys; sys.modules[{package!r}] = None; from turbo_runtime.cli import main; "
        f"sys.exit(main(['--artifacts', {str(sd_artifacts)!r}, '--backend', {backend!r}, '--prompt', 'x', "
        f"'--out', {str(tmp_path / 'o.png')!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(result, f'pip install "turbo-runtime[{extra}]"')
    assert not (tmp_path / "o.png").exists()


def test_cli_refiner_ensemble_matches_the_api(tmp_path, artifacts_of):
    """--refiner with --high-noise-frac through the real CLI equals the Python API's ensemble of experts."""
    out = tmp_path / "castle.png"
    args = ["--prompt", "a castle", "--negative-prompt", "fog", "--steps", "6", "--seed", "5", "--out", str(out)]
    base, refiner = str(artifacts_of["sdxl"]), str(artifacts_of["sdxl-refiner"])
    result = run_cli(
        "turbo-run", "--artifacts", base, "--refiner", refiner, "--high-noise-frac", "0.6", "--backend", "onnxruntime",
        "--scheduler", "euler-ancestral", *args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = png_text(out)
    assert text["refiner"] == "tiny-sdxl-refiner" and text["high_noise_frac"] == "0.6"
    assert text["negative_prompt"] == "fog" and text["guidance_scale"] == "5.0" and text["steps"] == "6"
    pipe = TurboPipeline.from_artifacts(base, "onnxruntime")
    expected = pipe(
        "a castle", negative_prompt="fog", num_inference_steps=6, seed=5, scheduler="euler-ancestral",
        refiner=TurboPipeline.from_artifacts(refiner, "onnxruntime"), high_noise_frac=0.6,
    ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_cli_guided_sd1_with_a_scheduler(tmp_path, artifacts_of):
    out = tmp_path / "sd1.png"
    result = run_cli(
        "turbo-run", "--artifacts", str(artifacts_of["sd1"]), "--backend", "openvino", "--dtype", "float32",
        "--prompt", "x", "--steps", "3", "--guidance-scale", "6", "--guidance-rescale", "0.5", "--scheduler", "euler",
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert png_text(out)["scheduler"] == "euler" and png_text(out)["guidance_scale"] == "6.0"


@pytest.mark.parametrize(
    "family,args,fragments",
    [
        ("sd-turbo", ["--negative-prompt", "fog"], ["sd-turbo takes no negative prompt", "without classifier-free"]),
        ("sd1", ["--scheduler", "ddim"], ["unknown scheduler 'ddim'", "euler, euler-ancestral, dpm++2m"]),
        ("sd1", ["--guidance-scale", "1", "--negative-prompt", "fog"], ["negative prompt needs classifier-free"]),
        ("sd1", ["--guidance-rescale", "1.5"], ["guidance_rescale must be in [0, 1], got 1.5"]),
        ("sdxl", ["--refiner", "REFINER", "--high-noise-frac", "1.2"], ["high_noise_frac must be in (0, 1), got 1.2"]),
        ("sdxl", ["--refiner", "REFINER", "--high-noise-frac", "0"], ["high_noise_frac must be in (0, 1), got 0.0"]),
        ("sdxl", ["--high-noise-frac", "0.5"], ["--high-noise-frac applies with --refiner only"]),
        ("sdxl", ["--refiner", "SD1"], ["the refiner must be an SDXL refiner (family sdxl-refiner), not sd1"]),
        ("sd1", ["--refiner", "REFINER"], ["a refiner follows an SDXL base model (family sdxl), not sd1"]),
        ("sdxl-refiner", [], ["sdxl-refiner refines an image: pass an init image"]),
    ],
)
def test_guided_bad_input(tmp_path, artifacts_of, family, args, fragments):
    subst = {"REFINER": str(artifacts_of["sdxl-refiner"]), "SD1": str(artifacts_of["sd1"])}
    result, out = _run(artifacts_of[family], tmp_path, *[subst.get(a, a) for a in args])
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_cli_model_with_the_tiny_vae(tmp_path):
    """--model MODEL --vae tiny exports with TAESD in place of the VAE on first use, then generates."""
    out = tmp_path / "fast.png"
    result = run_cli(
        "turbo-run", "--model", "tiny-sd-turbo", "--vae", "tiny", "--height", str(SIZE), "--width", str(SIZE),
        "--backend", "onnxruntime", "--prompt", "x", "--seed", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (SIZE, SIZE)


def _rss_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_mapped_weight_pages_are_released_and_still_readable(tmp_path):
    """Read-only mappings leave this process' resident set and read back the file's bytes; a writable private
    mapping keeps its writes (releasing it would lose them)."""
    import mmap

    from turbo_runtime.files import release_mappings, releasing_mappings

    weights = tmp_path / "weights" / "unet.bin"
    weights.parent.mkdir()
    data = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8)
    weights.write_bytes(data.tobytes())
    with open(weights, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert int(view[::4096].sum()) > 0  # touch every page: now resident
        before = _rss_file_bytes()
        assert release_mappings([tmp_path / "elsewhere"]) == 0
        assert release_mappings([weights.parent]) >= 64 << 20
        assert before - _rss_file_bytes() > 48 << 20
        assert np.array_equal(view, data)  # the file's bytes when touched again
        assert int(view[::4096].sum()) > 0
        with releasing_mappings([weights.parent], interval=0.01):
            time.sleep(0.1)  # released while the block runs, and at its end
        assert before - _rss_file_bytes() > 48 << 20
        del view
    with open(weights, "r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as private:
        private[:4] = b"\x00\x01\x02\x03"
        assert release_mappings([weights.parent]) == 0
        assert private[:4] == b"\x00\x01\x02\x03" and private[4:8] == data[4:8].tobytes()
    assert np.array_equal(np.fromfile(weights, dtype=np.uint8), data)
