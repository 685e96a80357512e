"""benchmarks/gpu_check.py, as far as a CPU takes it: the quick run end to end, the phase budget, the carried wheels.

The run itself (CUDA parity, the full-size replicas timed, torch.compile and CUDA graphs) needs the GPU machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check
from turbo_runtime.auto import FULL_QUALITY_PSNR_DB

ROOT = Path(__file__).resolve().parent.parent
PHASES = (
    "setup",
    "parity",
    "tiny-sd-turbo/eager",
    "prepare",
    "tiny-sd-turbo/compile-reduce-overhead",
    "tiny-sd-turbo/compile-default",
)


def test_quick_cpu_run_exercises_every_cpu_path_and_writes_the_results(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(out), "--device", "cpu", "--quick"]
    cmd += ["--no-install", "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[: len(PHASES)]] == list(PHASES)  # one line per phase, in turn
    assert lines[-1].startswith("gpu-check.json: complete in ")

    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log"]
    text = (out / "gpu-check.json").read_text()
    assert str(tmp_path) not in text and str(ROOT) not in text  # no machine paths in what is kept
    results = json.loads(text)
    assert results["schema"] == 1 and results["status"] == "complete"
    assert results["mode"] == {
        "device": "cpu",
        "quick": True,
        "models": ["tiny-sd-turbo"],
        "runs": 3,
        "warmup": 1,
        "budget_s": 150.0,
    }
    assert results["targets"]["sd-turbo-arch"]["e2e_ms"] == 25.0 and results["targets"]["fp16_psnr_db"] == 40.0
    assert {a["e2e_ms"].__repr__() for a in results["anchors"]} == {"207", "[39, 44]"}
    assert results["machine"]["versions"]["torch"] and results["machine"]["cuda_available"] is False
    phases = results["phases"]
    assert list(phases) == list(PHASES)
    assert all(p["status"] == "ok" for name, p in phases.items() if "compile" not in name), phases

    parity = phases["parity"]
    assert parity["passed"] == 2 and parity["failed"] == 0 and parity["low_precision_dtype"] == "bfloat16"
    assert parity["low_precision_psnr_db"]["sd-turbo"] >= 30.0

    variants = phases["tiny-sd-turbo/eager"]["variants"]
    assert list(variants) == ["fp32-eager", "bf16-eager", "bf16-channels-last", "bf16-cuda-graphs"]
    assert variants["bf16-cuda-graphs"] == {"status": "skipped", "note": "CUDA graphs need a CUDA device"}
    for name in ("fp32-eager", "bf16-eager", "bf16-channels-last"):
        v = variants[name]
        assert v["status"] == "ok" and v["repeatable"] is True
        assert 0 < v["e2e_ms"]["min"] <= v["e2e_ms"]["median"] <= v["e2e_ms"]["max"]
        assert set(v["stages_ms"]) == {"text_encoder", "unet", "vae_decoder"}
    assert variants["bf16-channels-last"]["options"] == {"dtype": "bfloat16", "channels_last": True}
    assert variants["fp32-eager"]["vs_fp32"] == {"max_abs": 0.0, "psnr_db": None}
    assert variants["bf16-eager"]["precision"] == "bf16" and variants["bf16-eager"]["vs_fp32"]["psnr_db"] >= 30.0
    for mode in ("reduce-overhead", "default"):
        compiled = phases[f"tiny-sd-turbo/compile-{mode}"]
        assert compiled["status"] == "skipped" and "torch.compile" in compiled["note"]
        assert compiled["variants"][f"bf16-compile-{mode}"]["status"] == "skipped"
    assert phases["prepare"]["models"]["tiny-sd-turbo"]["seconds"] >= 0

    summary = results["summary"]["tiny-sd-turbo"]
    assert set(summary["e2e_ms"]) == {"fp32-eager", "bf16-eager", "bf16-channels-last"}
    assert summary["best"]["variant"] in summary["e2e_ms"]
    assert summary["best"]["e2e_ms"] == min(summary["e2e_ms"].values())  # all three within 40 dB here
    assert summary["psnr_target_met"] is True and summary["target_met"] is None  # no target for a tiny replica

    log = (out / "gpu-check.log").read_text()
    for name in ("setup", "parity", "tiny-sd-turbo/eager", "prepare"):
        assert f"===== {name}\n" in log


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_phase_out_of_time_is_stopped_and_leaves_what_it_measured(tmp_path, monkeypatch):
    """The child and what it started are ended at the phase's budget; its partial results were saved meanwhile."""
    monkeypatch.setattr(gpu_check, "MIN_PHASE_S", 0.5)
    mode = gpu_check.Mode("cpu", True, gpu_check.QUICK_MODELS, 1, 0, 60.0)
    run = gpu_check.Run(tmp_path / "out", mode, None, tmp_path)
    partial, pid_file = tmp_path / "partial.json", tmp_path / "grandchild.pid"
    child = (
        "import json, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        f"open({str(partial)!r}, 'w').write(json.dumps({{'variants': {{'fp32-eager': {{'status': 'ok'}}}}}}))\n"
        "print('measured one variant', flush=True)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    entry = run.run_child("m/eager", [sys.executable, "-c", child], 4.0, lambda: gpu_check.read_json(partial))
    assert time.monotonic() - t0 < 20
    assert entry["status"] == "timed_out" and entry["budget_s"] == 4.0
    saved = json.loads((tmp_path / "out" / "gpu-check.json").read_text())["phases"]["m/eager"]
    assert saved == {"status": "running", "variants": {"fp32-eager": {"status": "ok"}}}
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(grandchild)
    assert "===== m/eager\nmeasured one variant\n" in (tmp_path / "out" / "gpu-check.log").read_text()


def test_a_phase_is_not_started_without_time_left(tmp_path):
    mode = gpu_check.Mode("cpu", True, gpu_check.QUICK_MODELS, 1, 0, 1.0)
    run = gpu_check.Run(tmp_path / "out", mode, None, tmp_path)
    entry = run.run_child("parity", [sys.executable, "-c", "raise SystemExit(3)"], 60.0)
    assert entry == {"status": "skipped", "note": "no time left in the run's budget"}


def test_the_newest_carried_wheel_of_each_missing_package_is_installed(tmp_path):
    names = [
        "diffusers-0.42.1-py3-none-any.whl",
        "diffusers-0.9.0-py3-none-any.whl",
        "diffusers-0.36.0-py3-none-any.whl",
        "pytest-9.2.0-py3-none-any.whl",
        "sortedcontainers-2.4.0-py2.py3-none-any.whl",
        "Pillow-13.0.0-cp311-cp311-manylinux_2_28_x86_64.whl",  # another Python's
        "tokenizers-0.23.3-cp39-abi3-manylinux_2_28_aarch64.whl",  # another processor's
        "not-a-wheel.whl",
    ]
    for name in names:
        (tmp_path / name).touch()
    carried = gpu_check.carried_wheels(tmp_path, "cp312", "x86_64")
    assert {d: [v for v, _ in vs] for d, vs in carried.items()} == {
        "diffusers": ["0.42.1", "0.36.0", "0.9.0"],
        "pytest": ["9.2.0"],
        "sortedcontainers": ["2.4.0"],
    }
    installed = {"pytest": "8.3.0"}.get
    to_install, present = gpu_check.install_plan(carried, installed)
    assert [w.name for w in to_install] == [names[0], names[4]]  # the machine's pytest is kept
    assert present == {"pytest": "8.3.0"}


def test_no_wheels_folder_installs_nothing(tmp_path):
    info = gpu_check.install_wheels(tmp_path / "missing", dict(os.environ), tmp_path / "pip.log")
    assert info["note"] == "no wheels folder: nothing installed"


def test_variants_map_to_backend_options():
    assert gpu_check.variant_options("fp32-eager", True) == {"dtype": "float32"}
    assert gpu_check.variant_options("fp16-cuda-graphs", True) == {
        "dtype": "float16",
        "cuda_graphs": True,
        "channels_last": True,
    }
    assert gpu_check.variant_options("fp16-compile-reduce-overhead", False) == {
        "dtype": "float16",
        "compile_mode": "reduce-overhead",
        "channels_last": False,
    }
    with pytest.raises(ValueError, match="unknown variant"):
        gpu_check.variant_options("fp16-turbo", False)
    assert gpu_check.FULL_QUALITY_PSNR_DB == FULL_QUALITY_PSNR_DB  # the bound turbo_runtime.auto holds to
