"""turbo-bench on a tiny replica: the JSON, the table and the chart are produced and traceable to raw runs;
workers are grouped by their peak memory."""

import json

from conftest import SIZE, run_cli

from benchmarks.bench import MEMORY_MARGIN, fits_beside


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
        "--out",
        str(out),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report) >= {"created", "config", "machine", "artifacts", "groups", "raw", "results", "skipped"}
    assert {"cpu", "cores", "versions"} <= set(report["machine"])
    assert set(report["results"]) == {"torch", "onnxruntime", "openvino", "diffusers"}
    assert "optimum-intel" in report["skipped"]  # a missing peer is listed, not dropped
    for name, r in report["results"].items():
        raw = report["raw"][name]
        assert len(raw["runs"]) == 3
        e2e = sorted(run["e2e_s"] for run in raw["runs"])
        assert r["end_to_end_s"] == {"median": e2e[1], "min": e2e[0], "max": e2e[2], "n": 3}
        assert r["unet_step_s"]["n"] == 3  # one step per run
        assert r["peak_rss_bytes"] > 0 and r["startup_cold_s"] > 0 and r["startup_warm_s"] > 0
        # to the end of the first UNet call: start-up, text encoding and one UNet step of the first run
        assert r["first_unet_cold_s"] > r["startup_cold_s"]
        assert r["first_unet_warm_s"] > r["startup_warm_s"]
        assert r["end_to_end_s"]["median"] >= r["unet_step_s"]["median"]
    assert report["results"]["torch"]["accuracy_vs_torch_fp32"]["max_abs"] == 0
    assert report["results"]["onnxruntime"]["accuracy_vs_torch_fp32"]["max_abs"] <= 1
    table = (out / "results.md").read_text()
    for name in report["results"]:
        assert f"| {name} |" in table
    assert "Skipped optimum-intel" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(report["flops"]) >= {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    assert all(v > 0 for v in report["flops"].values())
    assert report["matmul_peak_tflops"]["float32"] > 0
    for r in report["results"].values():
        assert set(r["throughput"]) == {"text_encoder", "unet", "vae_decoder"}
    assert "UNet TFLOP/s" in table


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
