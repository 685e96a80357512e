"""turbo-export: artifacts, manifest, sources, reuse and rebuild, atomic output, precisions, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIZE, assert_one_line_error, run_cli

from export.exporter import ExportConfig, default_out, export_model
from export.replicas import build_pipeline, replica_path
from turbo_runtime.auto import FULL_QUALITY_PSNR_DB, POLICIES, export_choice
from turbo_runtime.errors import ArtifactError, SourceError
from turbo_runtime.files import sha256_file
from turbo_runtime.pipeline import TurboPipeline
from turbo_runtime.spec import PARITY_TOLERANCE

SMALL = ("--height", str(SIZE), "--width", str(SIZE), "--quiet")


def files_on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}


@pytest.mark.parametrize("model", ["tiny-sd-turbo", "tiny-sdxl-turbo"])
def test_cli_export_writes_every_format_with_hashes(tmp_path, model):
    out = tmp_path / "art"
    result = run_cli("turbo-export", model, "--out", str(out), "--precision", "fp32", *SMALL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == files_on_disk(out)
    for rel, digest in manifest["files"].items():
        assert sha256_file(out / rel) == digest
    components = ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    if model == "tiny-sdxl-turbo":
        components.insert(1, "text_encoder_2")
        assert [t["name"] for t in manifest["components"]["unet"]["inputs"]] == [
            "sample",
            "timestep",
            "encoder_hidden_states",
            "text_embeds",
            "time_ids",
        ]
        assert (out / "tokenizer_2" / "tokenizer.json").is_file()
    assert list(manifest["components"]) == components
    assert manifest["formats"] == ["onnx", "openvino"]
    assert (manifest["height"], manifest["width"], manifest["precision"]) == (SIZE, SIZE, "fp32")
    assert manifest["model"]["kind"] == "replica" and len(manifest["model"]["source_hash"]) == 64
    assert {"torch", "onnx", "openvino", "diffusers"} <= set(manifest["tools"])
    for name, entry in manifest["components"].items():
        assert (out / entry["files"]["onnx"][0]).name == "model.onnx"
        assert entry["files"]["openvino"] == [f"openvino/{name}.xml", f"openvino/{name}.bin"]
        for fmt in ("onnx", "openvino"):
            assert entry["parity"][fmt]["relative"] <= PARITY_TOLERANCE["fp32"]
    assert manifest["components"]["unet"]["inputs"][0]["shape"] == [1, 4, SIZE // 8, SIZE // 8]


def test_cli_export_defaults_to_the_cpus_full_quality_precision():
    """--precision auto (the default) exports the chosen backend's format at a concrete precision, into a folder keyed
    by it, so a second run reuses it; --verbose says what was chosen and why."""
    choice, formats = export_choice(None)
    args = ("turbo-export", "tiny-sd-turbo", "--height", str(SIZE), "--width", str(SIZE), "--verbose")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip())
    assert out == default_out("tiny-sd-turbo", SIZE, SIZE, choice.precision)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["precision"], manifest["formats"]) == (choice.precision, list(formats))
    assert f"cpu class: {choice.cpu}; precision {choice.precision} for {formats[0]}: {choice.reason}" in result.stderr
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout == result.stdout and "reusing artifacts" in again.stderr


# Every (backend, export precision) the decision table can pick; the torch backend computes float32 whatever it is.
AUTO_PATHS = sorted({(b, p) for policy in POLICIES.values() for b, p, _ in policy.precisions if b != "torch"})


@pytest.mark.parametrize("backend,precision", AUTO_PATHS)
def test_what_auto_chooses_stays_within_the_full_quality_bound(export_tiny, sd_artifacts, backend, precision):
    """Each path the decision table can pick, in each arithmetic its backend may run it in here, gives the image of
    float32 on the same latents within FULL_QUALITY_PSNR_DB (measured at full size in benchmarks/README.md; here on
    the tiny replica)."""
    art = sd_artifacts if precision == "fp32" else export_tiny("tiny-sd-turbo", precision, ("onnx", "openvino"))
    reference = TurboPipeline.from_artifacts(sd_artifacts, "openvino", dtype="float32")
    expected = np.asarray(reference("a red fox", seed=3).images[0], dtype=np.float64)
    dtypes = [None] if backend == "onnxruntime" else ["float32", None]  # float32, and bf16 where the CPU has it
    for dtype in dtypes:
        image = TurboPipeline.from_artifacts(art, backend, dtype=dtype)("a red fox", seed=3).images[0]
        mse = np.mean((np.asarray(image, dtype=np.float64) - expected) ** 2)
        psnr = 10 * np.log10(255**2 / mse) if mse else np.inf
        assert psnr >= FULL_QUALITY_PSNR_DB, (backend, precision, dtype, psnr)


def test_saved_folder_exports_exactly_like_the_replica(tmp_path, sd_artifacts):
    folder = tmp_path / "folder"
    build_pipeline("tiny-sd-turbo").save_pretrained(folder)
    out = export_model(
        ExportConfig(str(folder), out=tmp_path / "art", precision="fp32", height=SIZE, width=SIZE, quiet=True)
    )
    ours, replica = (json.loads((d / "manifest.json").read_text()) for d in (out, sd_artifacts))
    assert ours["model"]["kind"] == "folder" and ours["model"]["variant"] is None
    component_files = {k: v for k, v in replica["files"].items() if k.startswith(("onnx/", "openvino/"))}
    assert component_files and all(ours["files"][k] == v for k, v in component_files.items())


def test_fp16_variant_folder_exports_and_agrees(tmp_path, sd_artifacts):
    folder = tmp_path / "fp16"
    build_pipeline("tiny-sd-turbo").to(torch.float16).save_pretrained(folder, variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    out = export_model(
        ExportConfig(str(folder), out=tmp_path / "art", precision="fp32", height=SIZE, width=SIZE, quiet=True)
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["variant"] == "fp16"
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in manifest["model"]["files"]
    for entry in manifest["components"].values():  # the check ran against the same (fp16-rounded) weights
        assert entry["parity"]["openvino"]["relative"] <= PARITY_TOLERANCE["fp32"]
    a = TurboPipeline.from_artifacts(out, "onnxruntime")("a fox", seed=1, output_type="np").images
    b = TurboPipeline.from_artifacts(sd_artifacts, "onnxruntime")("a fox", seed=1, output_type="np").images
    assert 0 < np.abs(a - b).max() < 0.05  # fp16 rounding of the weights, nothing more


def test_reuse_when_unchanged_and_rebuild_when_the_source_changes(tmp_path):
    folder = tmp_path / "folder"
    shutil.copytree(replica_path("tiny-sd-turbo"), folder)
    config = ExportConfig(
        str(folder), out=tmp_path / "art", height=SIZE, width=SIZE, formats=("onnx",), precision="fp32", quiet=True
    )
    out = export_model(config)
    first = json.loads((out / "manifest.json").read_text())
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert export_model(config) == out and (out / "manifest.json").stat().st_mtime_ns == stamp

    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_out.bias += 0.5
    unet.save_pretrained(folder / "unet")
    export_model(config)
    second = json.loads((out / "manifest.json").read_text())
    assert second["model"]["source_hash"] != first["model"]["source_hash"]
    assert second["files"]["onnx/unet/model.onnx"] != first["files"]["onnx/unet/model.onnx"]
    assert second["files"]["onnx/text_encoder/model.onnx"] == first["files"]["onnx/text_encoder/model.onnx"]
    assert not [p for p in tmp_path.glob(".art.*") if p.is_dir()]  # no temporary or old folders left beside it

    # Artifacts of an older exporter (graphs traced without later rewrites) are rebuilt, not reused.
    second["exporter_revision"] -= 1
    (out / "manifest.json").write_text(json.dumps(second))
    export_model(config)
    assert json.loads((out / "manifest.json").read_text())["exporter_revision"] == second["exporter_revision"] + 1


def test_a_changed_byte_is_refused_by_the_runtime(tmp_path, sd_artifacts):
    copy = tmp_path / "art"
    shutil.copytree(sd_artifacts, copy)
    weights = copy / "openvino" / "unet.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"unet\.bin was modified"):
        TurboPipeline.from_artifacts(copy, "openvino")
    TurboPipeline.from_artifacts(copy, "onnxruntime")  # the ONNX files are intact
    result = run_cli(
        "turbo-run",
        "--artifacts",
        str(copy),
        "--backend",
        "openvino",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert_one_line_error(result, "unet.bin was modified", "export again")
    assert not (tmp_path / "x.png").exists()


def assert_int8_activations(xml: Path, linear_layers: bool = True) -> None:
    """Every convolution and matrix product of the IR (linear layers included) takes its activations through a
    FakeQuantize, so the CPU plugin runs it in int8; the weights are stored int8 (dequantized by a Multiply)."""
    import openvino as ov

    def source(value):
        node = value.get_node()
        while node.get_type_name() in ("Reshape", "Transpose", "Convert"):
            node = node.input_value(0).get_node()
        return node.get_type_name()

    ops = [op for op in ov.Core().read_model(xml).get_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    linear = [op for op in ops if "linear" in op.get_friendly_name()]
    assert ops and bool(linear) == linear_layers
    assert {op.get_friendly_name(): (source(op.input_value(0)), source(op.input_value(1))) for op in ops} == {
        op.get_friendly_name(): ("FakeQuantize", "Multiply") for op in ops
    }


def assert_int8_convolutions(onnx_file: Path, float_file: Path, tmp: Path) -> None:
    """ONNX Runtime runs every convolution of the int8 VAE decoder as QLinearConv (int8 weights and activations)
    but the three kept in float32 (export.quantize.ONNX_DECODER_FLOAT), which the float32 graph holds too, and
    interleaves each upsampler's phases in uint8: stacked by QLinearConcat, no float32 Concat left."""
    import onnx
    import onnxruntime as ort

    from export.quantize import ONNX_DECODER_FLOAT

    convs = [n.name for n in onnx.load(str(float_file), load_external_data=False).graph.node if n.op_type == "Conv"]
    assert set(ONNX_DECODER_FLOAT) <= set(convs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # fuses Q/DQ pairs
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    ops = [n.op_type for n in nodes]
    floats = len(ONNX_DECODER_FLOAT)
    assert (ops.count("QLinearConv"), ops.count("Conv")) == (len(convs) - floats, floats)
    producer = {out: n for n in nodes for out in n.output}
    interleaved = [producer[producer[n.input[0]].input[0]].op_type for n in nodes if n.op_type == "DepthToSpace"]
    assert interleaved == ["QLinearConcat"] * 3 and "Concat" not in ops  # (phases, reshaped) -> DepthToSpace


def assert_openvino_int8_convolutions(xml: Path) -> None:
    """OpenVINO's CPU plugin runs every convolution of the int8 VAE decoder on uint8 activations but the three kept
    in float32 (export.quantize.ONNX_DECODER_FLOAT)."""
    import openvino as ov

    from export.quantize import ONNX_DECODER_FLOAT

    runtime = ov.Core().compile_model(str(xml), "CPU").get_runtime_model()
    convs = {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in runtime.get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    floats = [name for name in convs if name.removesuffix("/WithoutBiases") in ONNX_DECODER_FLOAT]
    assert len(floats) == len(ONNX_DECODER_FLOAT) and len(convs) > len(floats)
    assert {name: precision in ("u8", "i8") for name, precision in convs.items()} == {
        name: name not in floats for name in convs
    }


def assert_tables_compiled_in_float16(xml: Path) -> None:
    """A text encoder's lookup tables reach the CPU plugin's compiled model as float16: an int8 table in a
    quantized model is folded back into float32 when it compiles."""
    import openvino as ov

    def kind(node) -> str:
        return node.get_rt_info()["layerType"].astype(str)

    runtime = ov.Core().compile_model(str(xml), "CPU").get_runtime_model()
    tables = [
        op.input_value(0).get_element_type()
        for op in runtime.get_ordered_ops()
        if kind(op) == "Gather" and kind(op.input_value(0).get_node()) == "Const"
    ]
    assert tables and all(t == ov.Type.f16 for t in tables), tables


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_quiet_int8_export_prints_only_the_path(tmp_path, fmt):
    """NNCF draws its progress on stdout, the calibration its progress bar on stderr; turbo-export keeps stdout for
    the artifacts path, and --quiet keeps stderr for errors."""
    out = tmp_path / "art"
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), "--precision", "int8", "--format", fmt,
                     *SMALL)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n" and result.stderr == ""


def test_int8_hybrid_export_leaves_no_compile_cache_behind(tmp_path):
    """Calibration compiles the float32 IR in the export's temporary folder: none of it stays in the shared
    compile cache, where no later start would find it, nor among the artifacts."""
    cache, out = tmp_path / "cache", tmp_path / "art"
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), "--precision", "int8-hybrid",
                     "--format", "openvino", *SMALL, env={"TURBO_RUNTIME_CACHE": str(cache)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (cache / "replicas").is_dir() and not list(cache.glob("openvino-cache/*/*"))
    listed = {*json.loads((out / "manifest.json").read_text())["files"], "manifest.json"}
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == listed


@pytest.mark.parametrize(
    "precision,formats",
    [("fp16", ("onnx", "openvino")), ("int8", ("onnx", "openvino")), ("int8-hybrid", ("openvino",))],
)
def test_low_precision_exports_stay_within_their_tolerance(export_tiny, sd_artifacts, precision, formats, tmp_path):
    out = export_tiny("tiny-sd-turbo", precision, formats)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["formats"] == list(formats)
    for name, entry in manifest["components"].items():
        for fmt in formats:
            expected = "fp32" if fmt == "onnx" and name.startswith("vae") else precision  # VAE float32 in ONNX
            if precision == "int8" and fmt == "openvino":  # OpenVINO's int8: fp16 weights...
                expected = "fp16"
            if precision == "int8" and name == "vae_decoder":  # ...and int8's decoder calibrated, in both formats
                expected = "int8"
            if precision == "int8-hybrid" and name.startswith("vae"):  # int8 weights (the model's own VAE)
                expected = "int8"
            assert entry["precision"][fmt] == expected
            assert entry["parity"][fmt]["relative"] <= PARITY_TOLERANCE[expected]
    if precision == "int8-hybrid":  # activations quantized too, calibrated during the export
        for name in ("text_encoder", "unet"):
            assert_int8_activations(out / "openvino" / f"{name}.xml")
        assert_tables_compiled_in_float16(out / "openvino" / "text_encoder.xml")
    weights = [f for f in manifest["files"] if f.endswith(".bin")]
    size = sum((out / f).stat().st_size for f in weights)
    assert size < 0.6 * sum((sd_artifacts / f).stat().st_size for f in weights)  # weights are stored compressed
    if precision == "int8" and "onnx" in formats:  # matrix multiplications quantized per call by ONNX Runtime
        import onnx

        ops = {node.op_type for node in onnx.load(str(out / "onnx" / "unet" / "model.onnx")).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "ConvInteger" not in ops
        decoder = Path("onnx", "vae_decoder", "model.onnx")
        assert_int8_convolutions(out / decoder, sd_artifacts / decoder, tmp_path)
    if precision == "int8" and "openvino" in formats:
        assert_openvino_int8_convolutions(out / "openvino" / "vae_decoder.xml")
    for fmt, backend in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        if fmt in formats:
            low, ref = (
                TurboPipeline.from_artifacts(d, backend, dtype="float32")("a fox", seed=2, output_type="np").images
                for d in (out, sd_artifacts)
            )
            assert np.abs(low - ref).mean() < 0.05, backend


def test_int8_hybrid_quantizes_a_tiny_vaes_decoder_too(export_tiny):
    """The fast path: TAESD's decoder in int8 too, calibrated on the pipeline's own latents; its encoder with int8
    weights; the image close to the float32 export's with the same tiny VAE."""
    out = export_tiny("tiny-sd-turbo", "int8-hybrid", ("openvino",), vae="tiny")
    manifest = json.loads((out / "manifest.json").read_text())
    precision = {name: entry["precision"]["openvino"] for name, entry in manifest["components"].items()}
    assert precision == {"text_encoder": "int8-hybrid", "unet": "int8-hybrid", "vae_encoder": "int8",
                         "vae_decoder": "int8-hybrid"}  # fmt: skip
    for name, entry in manifest["components"].items():
        assert entry["parity"]["openvino"]["relative"] <= PARITY_TOLERANCE[precision[name]], name
    assert_int8_activations(out / "openvino" / "unet.xml")
    assert_int8_activations(out / "openvino" / "vae_decoder.xml", linear_layers=False)
    low, ref = (
        TurboPipeline.from_artifacts(d, "openvino", dtype="float32")("a fox", seed=2, output_type="np").images
        for d in (out, export_tiny("tiny-sd-turbo", vae="tiny"))
    )
    assert np.abs(low - ref).mean() < 0.05


# ---- hub ids through models.lock, with a local Hugging Face cache and no network ----

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hugging Face cache holding acme/tiny-sd-turbo at REVISION, and a lock that pins it."""
    from export.sources import folder_files
    from turbo_runtime.spec import get_family

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny-sd-turbo" / "snapshots" / REVISION
    shutil.copytree(replica_path("tiny-sd-turbo"), snapshot)
    (snapshot / "replica.json").unlink()
    (cache / "models--acme--tiny-sd-turbo" / "refs").mkdir()
    (cache / "models--acme--tiny-sd-turbo" / "refs" / "main").write_text(REVISION)
    files, _ = folder_files(snapshot, get_family("sd-turbo"))
    pins = {f: sha256_file(snapshot / f) for f in files}
    lock = tmp_path / "models.lock"

    def write_lock(files: dict[str, str]) -> None:
        lines = [
            '[models."acme/tiny-sd-turbo"]',
            'repo = "acme/tiny-sd-turbo"',
            f'revision = "{REVISION}"',
            'family = "sd-turbo"',
            '[models."acme/tiny-sd-turbo".files]',
        ]
        lock.write_text("\n".join([*lines, *(f'"{k}" = "{v}"' for k, v in files.items())]) + "\n")

    write_lock(pins)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TURBO_RUNTIME_LOCK": str(lock)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env, pins, write_lock


def test_hub_id_exports_from_the_cache_at_the_pinned_revision(hub, tmp_path):
    env, pins, _ = hub
    out = tmp_path / "art"
    result = run_cli("turbo-export", "acme/tiny-sd-turbo", "--out", str(out), "--format", "onnx", *SMALL, env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads((out / "manifest.json").read_text())["model"]
    assert (model["kind"], model["revision"], model["files"]) == ("hub", REVISION, pins)


def test_hub_hash_mismatch_is_refused(hub, tmp_path):
    env, pins, write_lock = hub
    write_lock({**pins, "unet/diffusion_pytorch_model.safetensors": "0" * 64})
    result = run_cli("turbo-export", "acme/tiny-sd-turbo", "--out", str(tmp_path / "art"), *SMALL, env=env)
    actual = pins["unet/diffusion_pytorch_model.safetensors"]
    assert_one_line_error(result, "sha256 mismatch", "unet/diffusion_pytorch_model.safetensors", "0" * 64, actual)
    assert not (tmp_path / "art").exists()


def test_hub_without_network_or_cache_names_the_folder_alternative(hub, tmp_path):
    env, _, _ = hub
    shutil.rmtree(env["HF_HUB_CACHE"])
    result = run_cli("turbo-export", "acme/tiny-sd-turbo", "--out", str(tmp_path / "art"), *SMALL, env=env)
    assert_one_line_error(result, "acme/tiny-sd-turbo", "offline", "pass its folder")


def test_update_lock_pins_the_resolved_revision_and_hashes(hub, tmp_path):
    import tomllib

    env, pins, _ = hub
    Path(env["TURBO_RUNTIME_LOCK"]).write_text("")
    result = run_cli("turbo-export", "--update-lock", "acme/tiny-sd-turbo", "--family", "sd-turbo", env=env)
    assert result.returncode == 0, result.stderr
    entry = tomllib.loads(Path(env["TURBO_RUNTIME_LOCK"]).read_text())["models"]["acme/tiny-sd-turbo"]
    assert (entry["revision"], entry["family"], entry["files"]) == (REVISION, "sd-turbo", pins)
    result = run_cli(
        "turbo-export", "acme/tiny-sd-turbo", "--out", str(tmp_path / "art"), "--format", "onnx", *SMALL, env=env
    )
    assert result.returncode == 0, result.stderr


def test_the_lock_parses_and_pins_every_file():
    from export.sources import read_lock

    lock = read_lock()
    complete = {"stabilityai/sd-turbo", "stabilityai/sdxl-turbo", "stabilityai/stable-diffusion-xl-base-1.0"}
    partial = {"stabilityai/stable-diffusion-xl-refiner-1.0", "OFA-Sys/small-stable-diffusion-v0"}
    assert complete | partial | {"madebyollin/taesd", "madebyollin/taesdxl"} <= set(lock)
    for model, entry in lock.items():
        assert len(entry["revision"]) == 40
        assert all(len(d) == 64 for d in entry["files"].values())
        if model in complete:
            assert any(f.startswith("unet/") and f.endswith(".safetensors") for f in entry["files"])


def test_a_partly_pinned_entry_asks_for_update_lock(hub, tmp_path):
    env, pins, write_lock = hub
    write_lock({k: v for k, v in pins.items() if k.startswith("unet/")})
    result = run_cli("turbo-export", "acme/tiny-sd-turbo", "--out", str(tmp_path / "art"), *SMALL, env=env)
    assert_one_line_error(result, "pins only part of the files", "turbo-export --update-lock acme/tiny-sd-turbo")
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    "replica,family,other", [("tiny-sdxl", "sdxl", "sdxl-turbo"), ("tiny-sdxl-turbo", "sdxl-turbo", "sdxl")]
)
def test_folder_family_is_told_by_the_scheduler_or_given(tmp_path, replica, family, other):
    """A turbo model and its guided base share a pipeline class; the turbo one samples from the last timestep."""
    from export.sources import resolve

    folder = tmp_path / "model"
    shutil.copytree(replica_path(replica), folder)
    assert resolve(str(folder)).family.name == family
    assert resolve(str(folder), family=other).family.name == other
    with pytest.raises(SourceError, match=f"{replica} is a {family} model; --family {other} applies to folders only"):
        resolve(replica, family=other)


# ---- bad input: one line, exit 2, nothing written ----


def _broken_folder(tmp_path: Path, remove: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(replica_path("tiny-sd-turbo"), folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return folder


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["no-such-model"], ["unknown model 'no-such-model'", "tiny-sd-turbo", "stabilityai/sd-turbo", "folder"]),
        (["tiny-sd-turbo", "--height", "100"], ["height must be a multiple of 8", "100"]),
        (["tiny-sd-turbo", "--width", "56"], ["width must be a multiple of 8 and at least 64", "56"]),
        (["tiny-sd-turbo", "--format", "tflite"], ["unknown format 'tflite'", "onnx, openvino"]),
        (["tiny-sd-turbo", "--precision", "int4"], ["unknown precision 'int4'", "fp32, fp16, int8, int8-hybrid"]),
        (["tiny-sd-turbo", "--precision", "int8-hybrid", "--format", "onnx"], ["int8-hybrid", "--format openvino"]),
        (["tiny-sd-turbo", "--unet-batch", "3"], ["--unet-batch must be 1 or 2, got 3"]),
        (["tiny-sd-turbo", "--unet-batch", "2"], ["--unet-batch 2 is for classifier-free guidance", "sd-turbo"]),
        (["tiny-sd-turbo", "--family", "sd1"], ["tiny-sd-turbo is a sd-turbo model; --family sd1 applies to folders"]),
        (["tiny-sd-turbo", "--vae", "tiny-sdxl"], ["tiny-sdxl is a sdxl model, not a tiny VAE (AutoencoderTiny)"]),
        (["tiny-sd-turbo", "--vae", "no-such-vae"], ["unknown model 'no-such-vae'"]),
        (["tiny-taesd"], ["tiny-taesd is a tiny VAE, not a pipeline: pass it with --vae"]),
    ],
)
def test_bad_arguments(tmp_path, args, fragments):
    result = run_cli("turbo-export", *args, "--out", str(tmp_path / "art"), "--quiet")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize(
    "remove,fragments",
    [
        ("model_index.json", ["not a diffusers model folder", "model_index.json is missing"]),
        ("unet/diffusion_pytorch_model.safetensors", ["unet/diffusion_pytorch_model.safetensors is missing"]),
        ("tokenizer", ["tokenizer/ is missing"]),
        ("vae/config.json", ["vae/config.json is missing"]),
    ],
)
def test_incomplete_folders(tmp_path, remove, fragments):
    folder = _broken_folder(tmp_path, remove)
    result = run_cli("turbo-export", str(folder), "--out", str(tmp_path / "art"), "--quiet")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "art").exists()


def test_pickled_weights_need_allow_pickle(tmp_path):
    folder = tmp_path / "model"
    pipe = build_pipeline("tiny-sd-turbo")
    pipe.save_pretrained(folder, safe_serialization=False)
    result = run_cli("turbo-export", str(folder), "--out", str(tmp_path / "art"), *SMALL)
    assert_one_line_error(result, "pickled .bin weights", "--allow-pickle")
    result = run_cli(
        "turbo-export", str(folder), "--out", str(tmp_path / "art"), "--allow-pickle", "--format", "onnx", *SMALL
    )
    assert result.returncode == 0, result.stderr


def test_output_folder_holding_something_else(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), "--format", "onnx", *SMALL)
    assert_one_line_error(result, "does not hold turbo-runtime artifacts", "--force")
    assert (out / "notes.txt").read_text() == "keep me"
    result = run_cli("turbo-export", "tiny-sd-turbo", "--out", str(out), "--format", "onnx", "--force", *SMALL)
    assert result.returncode == 0, result.stderr
    assert not (out / "notes.txt").exists() and (out / "manifest.json").is_file()


@pytest.mark.parametrize("package", ["openvino", "onnx", "diffusers"])
def test_missing_package_names_the_extra(tmp_path, package):
    code = (
        f"import sys; sys.modules[{package!r}] = None; from export.cli import main; "
        f"sys.exit(main(['tiny-sd-turbo', '--out', {str(tmp_path / 'art')!r}, '--precision', 'fp32', '--quiet']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert_one_line_error(result, f"needs the {package} package", 'pip install "turbo-runtime[export]"')
    assert not (tmp_path / "art").exists()


def test_vae_folder_must_hold_an_autoencoder_tiny(tmp_path):
    result = run_cli("turbo-export", "tiny-sd-turbo", "--vae", str(replica_path("tiny-sd-turbo")), "--out",
                     str(tmp_path / "art"), "--quiet")  # fmt: skip
    assert_one_line_error(result, "is not a tiny VAE folder", "AutoencoderTiny")
    assert not (tmp_path / "art").exists()


def test_resolve_refuses_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(SourceError, match="is a file"):
        from export.sources import resolve

        resolve(str(f))


def test_installed_artifacts_follow_the_umask(sd_artifacts):
    """Readable by whoever the umask lets read them, as any folder made with mkdir would be (not mkdtemp's 0700)."""
    import os
    import stat

    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(sd_artifacts.stat().st_mode) == 0o777 & ~umask
