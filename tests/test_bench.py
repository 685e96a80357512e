"""turbo-bench on a tiny replica: the JSON, the table and the chart are produced and traceable to raw runs; a
worker that dies is reported, the others measured; workers are grouped by their peak memory."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, run_cli

from benchmarks.bench import MEMORY_MARGIN, Worker, WorkerFailed, fits_beside
from benchmarks.worker import reported_precision
from turbo_runtime.cpu import detect as detect_cpu


def test_bench_writes_json_table_and_chart(tmp_path):
    out = tmp_path / "bench"
    result = run_cli(
        "turbo-bench",
        "--model",
        "tiny-sd-turbo",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--height",
        str(SIZE),
        "--width",
        str(SIZE),
        "--peers",
        "diffusers",
        "optimum-intel",
        "--no-peer-setup",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report) >= {"created", "config", "machine", "artifacts", "groups", "raw", "results", "skipped"}
    assert {"cpu", "cores", "versions"} <= set(report["machine"])
    assert report["machine"]["cpu_class"] == detect_cpu().name  # every result says which class it measured
    assert set(report["results"]) == {"torch", "onnxruntime", "openvino", "diffusers"}
    assert "optimum-intel" in report["skipped"]  # a missing peer is listed, not dropped
    assert "`python benchmarks/peers/setup.py optimum-intel`" in report["skipped"]["optimum-intel"]
    for name, r in report["results"].items():
        raw = report["raw"][name]
        assert len(raw["runs"]) == 3
        e2e = sorted(run["e2e_s"] for run in raw["runs"])
        assert r["end_to_end_s"] == {"median": e2e[1], "min": e2e[0], "max": e2e[2], "n": 3}
        assert r["unet_step_s"]["n"] == 3  # one step per run
        assert r["peak_rss_bytes"] > 0 and r["startup_cold_s"] > 0 and r["startup_warm_s"] > 0
        assert r["peak_rss_warm_bytes"] > 0  # the second start's own peak, read when its worker closed
        # to the end of the first UNet call: start-up, text encoding and one UNet step of the first run
        assert r["first_unet_cold_s"] > r["startup_cold_s"]
        assert r["first_unet_warm_s"] > r["startup_warm_s"]
        assert r["end_to_end_s"]["median"] >= r["unet_step_s"]["median"]
    assert report["results"]["torch"]["accuracy_vs_torch_fp32"]["max_abs"] == 0
    assert report["results"]["onnxruntime"]["accuracy_vs_torch_fp32"]["max_abs"] <= 1
    table = (out / "results.md").read_text()
    assert f"(CPU class {detect_cpu().name})" in table
    for name, r in report["results"].items():
        assert f"| {name} |" in table
        assert f"| {r['peak_rss_bytes'] / 2**30:.1f} / {r['peak_rss_warm_bytes'] / 2**30:.1f} |" in table
    assert "Skipped optimum-intel" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["flops"]) >= {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert all(v > 0 for v in report["flops"].values())
    assert report["matmul_peak_tflops"]["float32"] > 0
    for r in report["results"].values():
        assert set(r["throughput"]) == {"text_encoder", "unet", "vae_decoder"}
    assert "UNet TFLOP/s" in table


@pytest.mark.parametrize(
    "engine,exported,dtype,fmt,reported",
    [
        ("bf16", "fp16", None, "openvino", "bf16"),
        ("bf16", "int8", None, "openvino", "bf16, int8 quantized"),  # bf16 beside the int8 VAE decoder
        ("f32", "int8-hybrid", "float32", "openvino", "f32, int8-hybrid quantized"),
        ("int8", "int8", None, "onnx", "int8"),  # ONNX Runtime reports the graph's own
        (None, "fp32", None, "onnx", "float32"),
        (None, "fp16", "float16", "onnx", "float16"),
        ("f32", "int8", None, None, "f32"),  # the torch backend computes from the source model
    ],
)
def test_the_reported_precision_names_what_was_quantized(engine, exported, dtype, fmt, reported):
    assert reported_precision(engine, exported, dtype, fmt) == reported


def test_grouping_by_peak_memory():
    gib = 1 << 30
    budget = 0.9 * 24 * gib
    assert fits_beside([], 30 * gib, budget)  # a worker too large for the machine still runs, alone
    # Three ~9 GiB workers on a 24 GiB machine: the second fits beside the first, the third does not.
    assert fits_beside([9 * gib], 9 * gib, budget)
    assert not fits_beside([9 * gib, 9 * gib], 9 * gib, budget)
    # The next worker is taken to be as large as the largest seen so far, also from an earlier group
    assert fits_beside([3 * gib, 3 * gib], 3 * gib, budget)
    assert not fits_beside([3 * gib, 3 * gib], 14 * gib, budget)
    # with the margin on top: 18 GiB of peaks take 20.7 GiB
    assert MEMORY_MARGIN == 0.15
    assert fits_beside([9 * gib], 9 * gib, 21 * gib)
    assert not fits_beside([9 * gib], 9 * gib, 20 * gib)


def test_worker_failure_says_how_and_when():
    def fake(body: str) -> list[str]:
        ready = 'print(json.dumps({"event": "ready", "load_s": 0, "precision": "float32"}), flush=True)'
        return [sys.executable, "-c", f"import json, os, signal, sys\n{ready}\n{body}"]

    with pytest.raises(WorkerFailed, match=r"^worker exited with code 3 during start-up$"):
        Worker("x", [sys.executable, "-c", "raise SystemExit(3)"])
    w = Worker("x", fake("sys.stdin.readline()\nos.kill(os.getpid(), signal.SIGTERM)"))
    with pytest.raises(WorkerFailed, match=r"^worker exited with signal 15 \(SIGTERM\) during run 2$"):
        w.run("run 2")
    w = Worker("x", fake("sys.stdin.readline()\nprint('not json', flush=True)\nsys.stdin.readline()"))
    with pytest.raises(WorkerFailed, match="^worker sent 'not json' instead of its 'run' line during run 1$"):
        w.run("run 1")
    assert w.proc.poll() is not None  # stopped, not left behind
    w = Worker("x", fake("pass"))
    w.proc.wait()  # gone before it is told to quit: the broken pipe is a failure like any other
    with pytest.raises(WorkerFailed, match="^worker exited with code 0 during close$"):
        w.close()


def _children(pid: int) -> dict[int, str]:
    """pid -> command line (NUL-separated words joined by spaces) of each child process of `pid`."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_for(condition, deadline: float, what: str):
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _worker(bench_pid: int, subject: str) -> int | None:
    return next((p for p, cmd in _children(bench_pid).items() if f"--subject {subject} " in cmd), None)


def test_bench_survives_a_worker_killed_mid_run(tmp_path):
    """A worker killed with SIGKILL (as the OOM killer does) while it runs: its subject is reported failed with
    the reason, the other is measured and written as usual, and turbo-bench exits 1, without a traceback."""
    out = tmp_path / "bench"
    args = ["--model", "tiny-sd-turbo", "--backends", "onnxruntime", "torch", "--runs", "20", "--warmup", "1"]
    args += ["--height", str(SIZE), "--width", str(SIZE), "--out", str(out), "--quiet"]
    exe = Path(sys.executable).parent / "turbo-bench"  # as run_cli starts it, but left running
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"  # files: a full pipe would stall it
    with stdout.open("w") as so, stderr.open("w") as se:
        bench = subprocess.Popen([str(exe), *args], stdout=so, stderr=se)
    try:
        deadline = time.monotonic() + 300
        victim = _wait_for(lambda: _worker(bench.pid, "onnxruntime"), deadline, "the onnxruntime worker")
        # The torch worker starts once onnxruntime's has warmed up; onnxruntime then idles until its first
        # measured run, which shows as CPU time.
        _wait_for(lambda: _worker(bench.pid, "torch"), deadline, "the torch worker")
        time.sleep(0.2)  # past the tail of the warm-up (thread pools spin a little before they sleep)
        idle = _cpu_ticks(victim)
        _wait_for(lambda: _cpu_ticks(victim) > idle, deadline, "a measured run of the onnxruntime worker")
        os.kill(victim, signal.SIGKILL)
        bench.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if bench.poll() is None:  # timed out: leave no process behind
            for pid in [*_children(bench.pid), bench.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            bench.wait()
    err = stderr.read_text()
    assert bench.returncode == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    report = json.loads((out / "results.json").read_text())
    reason = report["failed"]["onnxruntime"]
    assert reason.startswith("worker exited with signal 9 (SIGKILL; likely the kernel's OOM killer) during run "), (
        reason
    )
    assert f"failed: onnxruntime: {reason}" in err
    assert set(report["failed"]) == {"onnxruntime"} and set(report["results"]) == {"torch"}
    torch = report["results"]["torch"]
    assert torch["end_to_end_s"]["n"] == 20 and torch["startup_warm_s"] > 0 and torch["peak_rss_bytes"] > 0
    assert torch["accuracy_vs_torch_fp32"]["max_abs"] == 0
    assert len(report["raw"]["onnxruntime"]["runs"]) < 20  # the runs it finished are kept
    assert report["groups"] == [["onnxruntime", "torch"]]
    table = (out / "results.md").read_text()
    precision = report["raw"]["onnxruntime"]["precision"]  # what the engine reported it computes in
    assert f"| onnxruntime | {precision} | failed: {reason} |" in table and "| torch |" in table
    assert (out / "results.png").is_file()


def test_peer_environments_live_in_the_cache_folder(tmp_path, monkeypatch, capsys):
    """A peer's environment is found under <cache>/peer-envs/<peer> once complete and made from the current pins;
    turbo-bench uses it without --peer-python, and creating a missing one is announced (nothing is created here)."""
    from benchmarks.bench import peer_pythons
    from benchmarks.peers import setup as peer_envs
    from turbo_runtime.files import cache_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TURBO_RUNTIME_CACHE", raising=False)
    assert peer_envs.env_dir("optimum-onnx") == tmp_path / "xdg" / "turbo-runtime" / "peer-envs" / "optimum-onnx"
    monkeypatch.setenv("TURBO_RUNTIME_CACHE", str(tmp_path / "cache"))
    assert peer_envs.cache_root() == cache_root() == tmp_path / "cache"  # the runtime's own rule
    folder = tmp_path / "cache" / "peer-envs" / "optimum-intel"

    venv, torch_first, requirements, no_deps, check = peer_envs.plan("optimum-intel", "python3")
    python = folder / "bin" / "python"
    assert venv == ["python3", "-m", "venv", str(folder)]
    assert torch_first == [str(python), "-m", "pip", "install", "torch==2.13.0"]  # the CPU build
    pinned = Path(requirements[-1]).read_text().splitlines()
    assert requirements[-2:-1] == ["-r"] and "torch==2.13.0" in pinned
    assert not any(line.startswith(("torchvision", "optimum-intel")) for line in pinned)  # CUDA torch behind them
    assert no_deps == [str(python), "-m", "pip", "install", "--no-deps", "optimum-intel[openvino]==2.2.0"]
    assert check[0] == str(python) and check[-2:] == ["--check", "optimum-intel"]
    assert "torch==2.13.0" in peer_envs.plan("optimum-onnx")[1] and len(peer_envs.plan("optimum-onnx")) == 4

    python.parent.mkdir(parents=True)
    python.touch()
    assert peer_envs.ready("optimum-intel") is None  # no marker: an interrupted creation
    (folder / peer_envs.MARKER).write_text(json.dumps({"requirements_sha256": "0" * 64}))
    assert peer_envs.ready("optimum-intel") is None  # made from other pins
    (folder / peer_envs.MARKER).write_text(
        json.dumps({"requirements_sha256": peer_envs.requirements_sha256("optimum-intel")})
    )
    assert peer_envs.ready("optimum-intel") == python

    pythons, skipped = peer_pythons(["optimum-intel", "optimum-onnx"], {}, setup=False)
    assert pythons == {"optimum-intel": str(python)}
    assert skipped["optimum-onnx"] == (
        f"its environment {tmp_path / 'cache' / 'peer-envs' / 'optimum-onnx'} does not exist: create it with "
        "`python benchmarks/peers/setup.py optimum-onnx`, or pass --peer-python optimum-onnx=PYTHON"
    )
    assert peer_pythons(["optimum-intel"], {"optimum-intel": "py"}, setup=False) == ({"optimum-intel": "py"}, {})

    def fail(peer: str, quiet: bool = False):
        raise peer_envs.SetupFailed(f"creating failed; retry with: {peer_envs.command(peer)}")

    monkeypatch.setattr(peer_envs, "create", fail)
    pythons, skipped = peer_pythons(["optimum-onnx"], {}, setup=True)
    assert pythons == {} and skipped == {
        "optimum-onnx": "creating failed; retry with: python benchmarks/peers/setup.py optimum-onnx"
    }
    assert "turbo-bench: optimum-onnx needs an environment of its own; creating" in capsys.readouterr().err


def test_peer_setup_dry_run_prints_the_plan_and_creates_nothing(tmp_path):
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "peers" / "setup.py"
    env = {**os.environ, "TURBO_RUNTIME_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(script), "optimum-intel", "--dry-run"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "cache" / "peer-envs" / "optimum-intel"
    assert result.stdout.splitlines()[0] == f"optimum-intel: {folder} (to be made)"
    assert f"{folder}/bin/python -m pip install torch==2.13.0" in result.stdout
    assert not (tmp_path / "cache").exists()
    bad = subprocess.run([sys.executable, str(script), "optimum-nothing"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_peer_check_accepts_only_the_deliberate_absences(monkeypatch, capsys):
    from benchmarks.peers import setup as peer_envs

    def pip_check(lines: list[str]):
        out = "".join(f"{line}\n" for line in lines) or "No broken requirements found.\n"
        done = subprocess.CompletedProcess([], 1 if lines else 0, out, "")
        monkeypatch.setattr(peer_envs.subprocess, "run", lambda *a, **k: done)

    pip_check(["optimum-intel 2.2.0 requires torchvision, which is not installed."])
    assert peer_envs.check("optimum-intel") == 0
    assert peer_envs.check("optimum-onnx") == 1  # nothing is left out of that one
    pip_check(["optimum-intel 2.2.0 requires torchvision, which is not installed.",
               "optimum 2.3.0 has requirement transformers<5.6, but you have transformers 5.7.0."])  # fmt: skip
    assert peer_envs.check("optimum-intel") == 1
    assert "transformers<5.6" in capsys.readouterr().err
    pip_check([])
    assert peer_envs.check("optimum-onnx") == 0


def test_flops_count_transposed_convolutions_as_the_convolution_they_replace():
    """The exporter turns 'nearest 2x, then conv3x3' into one stride-2 transposed 4x4 convolution (export.rewrites):
    its FLOPs are those of each input element times C_out x 4 x 4, 16/36 of the convolution it replaced."""
    import openvino as ov
    import openvino.opset13 as ops

    from benchmarks.flops import op_flops

    x = ops.parameter([1, 8, 16, 16], ov.Type.f32)
    weights = ops.constant(np.ones((8, 4, 4, 4), np.float32))  # C_in, C_out, kh, kw
    up = ops.convolution_backprop_data(x, weights, [2, 2], pads_begin=[1, 1], pads_end=[1, 1])
    conv = ops.convolution(up, ops.constant(np.ones((4, 4, 3, 3), np.float32)), [1, 1], [1, 1], [1, 1], [1, 1])
    assert list(up.get_output_shape(0)) == [1, 4, 32, 32]
    assert op_flops(up) == 2 * (8 * 16 * 16) * (4 * 4 * 4)
    assert op_flops(conv) == 2 * (4 * 32 * 32) * (4 * 3 * 3)
    assert op_flops(x.output(0).get_node()) == 0


def test_stage_profile_groups_the_vae_decoder_by_block_and_rates_int8_against_float32(sd_artifacts, tmp_path):
    from benchmarks.flops import graph_flops

    out = tmp_path / "stages.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.stages", str(sd_artifacts), "--int8", "--samples", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert {"mid_block", "up_blocks.0", "up_blocks.3", "conv_out"} <= set(stages)
    xml = sd_artifacts / "openvino" / "vae_decoder.xml"
    assert sum(s["gflop"] for s in stages.values()) * 1e9 == pytest.approx(graph_flops(xml))
    assert sum(s["seconds"] for s in stages.values()) > 0 and report["probe_tflops"] > 0
    variants = report["int8"]
    assert {"unquantized", "int8", "int8, mid_block unquantized", "int8, up_blocks.3 unquantized"} <= set(variants)
    # bf16 or float32 arithmetic stays near the float32 decoder; int8 drifts further, and no variant is equal to it
    assert variants["unquantized"]["psnr_db"] > 45 > variants["int8"]["psnr_db"] > 20
    assert "| up_blocks.3 |" in result.stdout and "| int8 |" in result.stdout


def test_a_peer_decoding_with_the_models_own_vae_gets_no_accuracy_or_vae_rate_beside_a_tiny_one():
    """With --vae tiny, optimum-intel still decodes with the model's VAE: the table says so instead of comparing."""
    from benchmarks.bench import add_throughput
    from benchmarks.report import markdown

    timing = {"median": 0.5}
    stages = {"text_encoder_s": timing, "unet_step_s": timing, "vae_decoder_s": timing}
    results = {
        "openvino": {"precision": "bf16", **stages},
        "optimum-intel": {"precision": "bf16", "own_vae": True, **stages},
    }
    flops = {"text_encoder": 10**11, "unet": 10**12, "vae_decoder": 10**12}
    add_throughput(results, flops, {"float32": 1.0, "bfloat16": 2.0})
    assert set(results["openvino"]["throughput"]) == {"text_encoder", "unet", "vae_decoder"}
    assert set(results["optimum-intel"]["throughput"]) == {"text_encoder", "unet"}
    assert results["openvino"]["throughput"]["unet"] == {"tflops": 2.0, "fraction_of_peak": 1.0}

    saved = Path(__file__).parents[1] / "benchmarks" / "results" / "epyc-fast-path-2026-12-01" / "results.json"
    table = markdown(json.loads(saved.read_text()))
    # saved before the second start's peak was recorded: the table says it is not known
    assert "| optimum-intel | bf16 | 4.210 (4.174–4.302) |" in table and "| 8.1 / – | – | – |" in table
    assert "| optimum-intel | 0.72 (83%) | – |" in table
    assert "optimum-intel decodes with the model's own VAE, the others with tiny" in table
