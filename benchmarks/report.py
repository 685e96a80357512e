"""results.json -> results.md (a table) and results.png (per-stage stacked bars beside accuracy)."""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.flops import per_stage

STAGES = ("unet", "vae_decoder")  # the stages whose rates the table gives

log = logging.getLogger(__name__)

_GIB = 1 << 30


def rows(report: dict) -> list[dict]:
    out = []
    for name, r in report["results"].items():
        out.append(
            {
                "name": name,
                "precision": r["precision"],
                "e2e": r["end_to_end_s"],
                "text": r["text_encoder_s"]["median"],
                "unet": r["unet_step_s"]["median"],
                "vae": r["vae_decoder_s"]["median"],
                "start": f"{r['startup_cold_s']:.1f} / {r['startup_warm_s']:.1f}",
                "first_unet": f"{r['first_unet_cold_s']:.1f} / {r['first_unet_warm_s']:.1f}",
                # results of before 2026-12-02 have the first start's peak only
                "rss": " / ".join(
                    f"{r[k] / _GIB:.1f}" if k in r else "–" for k in ("peak_rss_bytes", "peak_rss_warm_bytes")
                ),
                "acc": r["accuracy_vs_torch_fp32"],
            }
        )
    return out


def markdown(report: dict) -> str:
    cfg, m = report["config"], report["machine"]
    lines = [
        f"# turbo-bench: {cfg['model']}, {cfg['height']}x{cfg['width']}, {cfg['steps']} step(s), "
        f"{cfg['runs']} runs after {cfg['warmup']} warm-up",
        "",
        f"{report['created']} · {m.get('cpu', '?')} (CPU class {m.get('cpu_class', '?')}) · {m.get('cores')} cores · "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        "",
        "| subject | precision | end to end, median (min–max) s | text enc s | UNet step s | VAE decode s "
        "| start-up cold / warm s | to first UNet call cold / warm s | peak RSS cold / warm GiB "
        "| max abs diff vs torch fp32 (0–255) | PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows(report):
        e, acc = r["e2e"], r["acc"]
        # No accuracy when the reference's worker failed
        diff = f"{acc['max_abs']:.0f} | {acc['psnr_db']:.1f}" if acc else "– | –"
        lines.append(
            f"| {r['name']} | {r['precision']} | {e['median']:.3f} ({e['min']:.3f}–{e['max']:.3f}) | {r['text']:.3f} "
            f"| {r['unet']:.3f} | {r['vae']:.3f} | {r['start']} | {r['first_unet']} | {r['rss']} | {diff} |"
        )
    for name, why in report.get("failed", {}).items():
        precision = report["raw"].get(name, {}).get("precision", "–")
        lines.append(f"| {name} | {precision} | failed: {why} | – | – | – | – | – | – | – | – |")
    if report.get("flops"):
        f, peaks = per_stage(report["flops"]), report["matmul_peak_tflops"]
        lines += [
            "",
            f"Matmul probe (PyTorch, {cfg['threads'] or 'all'} threads): "
            + ", ".join(f"{k} {v:.2f} {'TOP/s' if k == 'int8' else 'TFLOP/s'}" for k, v in peaks.items())
            + f". Counted from the exported graph (convolutions, matmuls, attention): text encoding "
            f"{f['text_encoder'] / 1e9:.1f} GFLOP, UNet step {f['unet'] / 1e9:.1f} GFLOP, "
            f"VAE decode {f['vae_decoder'] / 1e9:.1f} GFLOP.",
            "",
            "| subject | UNet TFLOP/s (of peak) | VAE decode TFLOP/s (of peak) |",
            "|---|---|---|",
        ]
        for name, r in report["results"].items():
            t = r["throughput"]
            rates = [f"{t[s]['tflops']:.2f} ({t[s]['fraction_of_peak']:.0%})" if s in t else "–" for s in STAGES]
            lines.append(f"| {name} | {' | '.join(rates)} |")
    for name, r in report["results"].items():
        if r.get("own_vae"):
            lines.append(
                f"\n{name} decodes with the model's own VAE, the others with {cfg['vae']}: its VAE decode time and "
                "image do not compare with theirs (no accuracy, no VAE decode rate)."
            )
    for name, why in report["skipped"].items():
        lines.append(f"\nSkipped {name}: {why}")
    lines.append(f"\nWorkers measured side by side, runs interleaved, in groups: {report['groups']}.")
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning('matplotlib is not installed: no chart (pip install "turbo-runtime[bench]")')
        return False
    data = rows(report)
    if not data:  # every subject failed
        return False
    names = [r["name"] for r in data]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 2), gridspec_kw={"width_ratios": [3, 1]})
    left = [0.0] * len(names)
    steps = report["config"]["steps"]
    for label, key, scale in (("text encoder", "text", 1), (f"UNet x{steps}", "unet", steps), ("VAE decode", "vae", 1)):
        widths = [r[key] * scale for r in data]
        ax1.barh(names, widths, left=left, label=label)
        left = [a + b for a, b in zip(left, widths)]
    other = [max(r["e2e"]["median"] - s, 0.0) for r, s in zip(data, left)]
    ax1.barh(names, other, left=left, label="other", color="lightgrey")
    ax1.set_xlabel("seconds (median)")
    ax1.invert_yaxis()
    ax1.legend(loc="lower right")
    ax1.set_title("time per image, by stage")
    psnr = [min(r["acc"]["psnr_db"], 100.0) if r["acc"] else float("nan") for r in data]
    ax2.barh(names, psnr, color="tab:green")
    ax2.invert_yaxis()
    ax2.set_yticklabels([])
    ax2.set_xlabel("PSNR vs torch fp32, dB (capped at 100)")
    ax2.set_title("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_reports(report: dict, out: Path) -> None:
    (out / "results.md").write_text(markdown(report))
    chart(report, out / "results.png")
