"""The edge install: only the openvino and onnxruntime extras, no torch, diffusers or transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import flip_middle_byte
from PIL import Image

from turbo_runtime.pipeline import TurboPipeline

ROOT = Path(__file__).resolve().parent.parent


def _venv_with(folder: Path, extras: str) -> Path:
    """A fresh venv with turbo-runtime[extras] installed from this checkout; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    install = subprocess.run(
        [str(folder / "bin" / "pip"), "install", "-q", f"{ROOT}[{extras}]"], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return folder / "bin"


def test_edge_venv_generates_images_without_torch(tmp_path, sd_artifacts):
    venv = tmp_path / "edge"
    bin_dir = _venv_with(venv, "openvino,onnxruntime")
    assert (venv / "share" / "turbo-runtime" / "models.lock").read_text() == (ROOT / "models.lock").read_text()
    for heavy in ("torch", "diffusers", "transformers"):
        probe = subprocess.run([str(bin_dir / "python"), "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is installed in the edge venv"
    for backend in ("openvino", "onnxruntime"):
        out = tmp_path / f"{backend}.png"
        result = subprocess.run(
            [
                str(bin_dir / "turbo-run"),
                "--artifacts",
                str(sd_artifacts),
                "--backend",
                backend,
                "--prompt",
                "a red fox in the snow",
                "--seed",
                "9",
                "--dtype",
                "float32",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        here = TurboPipeline.from_artifacts(sd_artifacts, backend, dtype="float32")
        expected = here("a red fox in the snow", seed=9).images[0]
        diff = np.abs(np.asarray(Image.open(out), dtype=int) - np.asarray(expected, dtype=int))
        assert diff.max() <= 1  # the same loop and artifacts; at most a rounding step apart
    # Exporting needs the export extra, and says so.
    result = subprocess.run(
        [str(bin_dir / "turbo-run"), "--model", "tiny-sd-turbo", "--prompt", "x", "--out", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and 'pip install "turbo-runtime[export]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_onnxruntime_openvino_provider_in_its_own_venv(tmp_path, sd_artifacts):
    """onnxruntime-openvino replaces the onnxruntime package, so it gets a venv of its own."""
    bin_dir = _venv_with(tmp_path / "ort-openvino", "onnxruntime-openvino")
    expected = TurboPipeline.from_artifacts(sd_artifacts, "openvino", dtype="float32")("a red fox", seed=4).images[0]
    for dtype in ("float32", None):
        out = tmp_path / f"{dtype}.png"
        args = [str(bin_dir / "turbo-run"), "--artifacts", str(sd_artifacts), "--backend", "onnxruntime"]
        args += ["--device", "openvino", "--prompt", "a red fox", "--seed", "4", "--out", str(out), "--quiet"]
        env = {**os.environ, "TURBO_RUNTIME_CACHE": str(tmp_path / f"cache-{dtype}")}  # compiled afresh
        result = subprocess.run(args + (["--dtype", dtype] if dtype else []), capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        diff = np.abs(np.asarray(Image.open(out), dtype=int) - np.asarray(expected, dtype=int))
        if dtype == "float32":  # OpenVINO's CPU plugin behind ONNX Runtime: the openvino backend's image
            assert diff.max() <= 1
    # The provider reads each cached blob and then compiles again and rewrites it at every start (seen with
    # onnxruntime-openvino 1.24), so a blob changed on disk is replaced, never used. Should a version reuse its
    # blobs, this fails: its cache then needs the checks the openvino backend makes (files.checked_cache).
    blobs = sorted((tmp_path / "cache-float32" / "openvino-ep-cache").glob("*.blob"))
    assert len(blobs) == 3  # text encoder, UNet, VAE decoder: text-to-image loads no VAE encoder
    for blob in blobs:
        blob.chmod(0o644)
        flip_middle_byte(blob)
    changed = {blob: blob.read_bytes() for blob in blobs}
    out = tmp_path / "changed-cache.png"
    args = [str(bin_dir / "turbo-run"), "--artifacts", str(sd_artifacts), "--backend", "onnxruntime", "--device",
            "openvino", "--dtype", "float32", "--prompt", "a red fox", "--seed", "4", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "TURBO_RUNTIME_CACHE": str(tmp_path / "cache-float32")}
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert np.abs(np.asarray(Image.open(out), dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert all(blob.read_bytes() != changed[blob] for blob in blobs)
    # The plain onnxruntime package has no such provider, and the error names the extra.
    result = subprocess.run(
        [sys.executable, "-m", "turbo_runtime.cli", "--artifacts", str(sd_artifacts), "--backend", "onnxruntime",
         "--device", "openvino", "--prompt", "x", "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and 'pip install "turbo-runtime[onnxruntime-openvino]"' in result.stderr
