"""The edge install: only the openvino and onnxruntime extras, no torch, diffusers or transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from turbo_runtime.pipeline import TurboPipeline

ROOT = Path(__file__).resolve().parent.parent


def test_edge_venv_generates_images_without_torch(tmp_path, sd_artifacts):
    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = subprocess.run(
        [str(bin_dir / "pip"), "install", "-q", f"{ROOT}[openvino,onnxruntime]"], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr[-3000:]
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
