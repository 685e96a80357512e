"""Shared fixtures: a private cache, tiny replicas exported once per session, diffusers references."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

SIZE = 128  # tests export at 128x128 (16x16 latents); the CLI default of 512 is exercised once
BACKENDS = ("torch", "onnxruntime", "openvino")
FAMILY_MODELS = {
    "sd-turbo": "tiny-sd-turbo",
    "sdxl-turbo": "tiny-sdxl-turbo",
    "sd1": "tiny-small-sd",
    "sdxl": "tiny-sdxl",
    "sdxl-refiner": "tiny-sdxl-refiner",
}
# The formats the session's exports write by default: those whose packages are installed (both, in CI). On a
# machine with PyTorch alone none is, and the torch backend reads none (--export-formats none says so anywhere).
INSTALLED_FORMATS = tuple(
    fmt
    for fmt, packages in {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino",)}.items()
    if all(importlib.util.find_spec(p) is not None for p in packages)
)
EXPORT_FORMATS = INSTALLED_FORMATS  # set from --export-formats in pytest_configure


# Property-based tests: the same examples on every run by default, so a red run is reproducible; the "explore"
# profile draws new ones (python -m pytest tests/test_fuzz.py --hypothesis-profile explore).
settings.register_profile("default", derandomize=True, max_examples=60)
settings.register_profile("explore", max_examples=500)
settings.load_profile("default")


def pytest_addoption(parser):
    parser.addoption(
        "--torch-device",
        default="cpu",
        help="device of the torch backend in the parity tests, and of the diffusers references it is compared "
        "with: cpu (default), cuda or cuda:N",
    )
    parser.addoption(
        "--export-formats",
        help="formats of the tiny exports: comma-separated, or none (default: those installed, "
        f"{','.join(INSTALLED_FORMATS) or 'none'}); tests of a backend whose format is left out fail",
    )


@pytest.fixture(scope="session")
def torch_device(request) -> str:
    return request.config.getoption("--torch-device")


def pytest_configure(config):
    global EXPORT_FORMATS
    given = config.getoption("--export-formats")
    if given is not None:
        EXPORT_FORMATS = () if given == "none" else tuple(f for f in given.split(",") if f)
    cache = Path(config.rootpath) / ".pytest_cache" / "turbo-runtime-cache"
    os.environ.setdefault("TURBO_RUNTIME_CACHE", str(cache))


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """Export a tiny replica once per session (default: SIZE x SIZE, EXPORT_FORMATS, fp32); returns its folder."""
    from export.exporter import ExportConfig, export_model

    made: dict[tuple, Path] = {}

    def get(
        model: str,
        precision: str = "fp32",
        formats: tuple[str, ...] | None = None,
        size: int = SIZE,
        unet_batch: int = 1,
        vae: str | None = None,
    ) -> Path:
        formats = EXPORT_FORMATS if formats is None else formats
        key = (model, precision, formats, size, unet_batch, vae)
        if key not in made:
            out = tmp_path_factory.mktemp("artifacts") / f"{model}-{precision}"
            config = ExportConfig(
                model, out, formats, precision, size, size, unet_batch=unet_batch, vae=vae, quiet=True
            )
            made[key] = export_model(config)
        return made[key]

    return get


@pytest.fixture(scope="session")
def sd_artifacts(export_tiny) -> Path:
    return export_tiny("tiny-sd-turbo")


@pytest.fixture(scope="session")
def sdxl_artifacts(export_tiny) -> Path:
    return export_tiny("tiny-sdxl-turbo")


class _ArtifactsOf(dict):
    """family -> its tiny replica's artifacts, exported on first use."""

    def __init__(self, export_tiny):
        super().__init__()
        self.export_tiny = export_tiny

    def __missing__(self, family: str) -> Path:
        self[family] = self.export_tiny(FAMILY_MODELS[family])
        return self[family]


@pytest.fixture(scope="session")
def artifacts_of(export_tiny):
    return _ArtifactsOf(export_tiny)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of the console scripts in a subprocess, as a user would."""
    exe = Path(sys.executable).parent / args[0]
    return subprocess.run(
        [str(exe), *args[1:]], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=600
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """Exit code, a single 'error:' line naming what was wrong, and no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def flip_middle_byte(path: Path) -> None:
    """Change one bit of a file in place, as a bad disk or a careless edit would."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))


def assert_not_degenerate(images: np.ndarray) -> None:
    """Parity on a constant or fully clipped image would prove nothing."""
    assert images.std() > 0.05
    assert ((images > 0.0) & (images < 1.0)).mean() > 0.9
