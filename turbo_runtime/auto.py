"""`--backend auto` and `--precision auto`: the fastest full-quality path for this CPU's class, from measurements.

Every entry of the decision table below cites the run it rests on (benchmarks/README.md, "Automatic choice").
Full quality means an image within FULL_QUALITY_PSNR_DB of float32's on the same latents; a faster path that
drifts further (the int8-hybrid fast path, 37–38 dB) is never chosen automatically. Where a class or a backend was
not measured, the entry says so and takes float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from turbo_runtime.backends import BACKENDS, backend_class
from turbo_runtime.cpu import CpuClass, detect
from turbo_runtime.errors import BackendUnavailable, InputError
from turbo_runtime.spec import FORMATS, PRECISIONS, default_formats

AUTO = "auto"
FULL_QUALITY_PSNR_DB = 40.0  # PSNR of the final uint8 image against float32's, same latents: the full-quality bound
BACKEND_ORDER = ("openvino", "onnxruntime", "torch")  # what auto tries, fastest first on every class measured
FORMAT_OF = {"openvino": "openvino", "onnxruntime": "onnx", "torch": None}  # the artifacts each backend reads
_INSTALL = 'pip install "turbo-runtime[openvino]" (or [onnxruntime], or [torch])'


@dataclass(frozen=True)
class Policy:
    """What was measured on one CPU class: why the backends rank as they do, and each one's export precision."""

    backends: str
    precisions: tuple[tuple[str, str, str], ...]  # (backend, export precision, why), one per backend

    def precision(self, backend: str) -> tuple[str, str]:
        return next((p, why) for b, p, why in self.precisions if b == backend)


_TORCH = ("torch", "fp32", "the torch backend computes float32 from the source model's weights")
_ORT_WITHOUT_AMX = (
    "onnxruntime",
    "fp32",
    "fp32: int8 stays above the 40 dB bound (41.0 dB) and was measured faster on an AVX512-BF16 EPYC (its UNet "
    "with AMX too), not yet on this class",
)
_ORT_EPYC = (
    "onnxruntime",
    "int8",
    "int8 matrix multiplications and VAE decoder convolutions (VNNI): 8.8 s against optimum-onnx's 18.0 s in "
    "float32 (2.05x), peak RSS 4.0 GiB against 8.6, PSNR 41.0 dB (AMD EPYC, 2026-12-02)",
)
_UNMEASURED = Policy(
    "no run on this class: OpenVINO first, as on every class measured",
    (
        ("openvino", "fp32", "no run on this class: fp32 (conservative)"),
        ("onnxruntime", "fp32", "no run on this class: fp32 (conservative)"),
        _TORCH,
    ),
)

# CPU class -> its policy. Figures: sd-turbo-arch, 512x512, 1 step, 2 threads (benchmarks/README.md).
POLICIES: dict[str, Policy] = {
    "amx": Policy(
        "OpenVINO 2.57 s, ONNX Runtime 11.7 s, PyTorch 16.8 s end to end (Xeon with AMX, 2026-11-25)",
        (
            (
                "openvino",
                "fp16",
                "bf16 arithmetic from fp16 weights: 1.27x optimum-intel at PSNR 49.4 dB (Xeon with AMX, 2026-11-25); "
                "int8 (the VAE decoder's convolutions) was measured faster on an AVX512-BF16 EPYC, not yet with AMX; "
                "int8-hybrid drifts below the 40 dB bound (37–38 dB)",
            ),
            (
                "onnxruntime",
                "int8",
                "int8 matrix multiplications: UNet step 20 % faster than fp32 (Xeon with AMX, 2026-11-25); with the "
                "VAE decoder's convolutions in int8 too, PSNR 41.0 dB (AMD EPYC, 2026-12-02); ONNX Runtime has no "
                "bf16 path on x86",
            ),
            _TORCH,
        ),
    ),
    "avx512-bf16": Policy(
        "OpenVINO 5.73 s (AMD EPYC, 2026-12-02), ONNX Runtime 10.3 s (2026-12-02), PyTorch 21.4 s end to end",
        (
            (
                "openvino",
                "int8",
                "fp16 weights computed in bf16, the VAE decoder's convolutions in int8 (VNNI): 5.73 s against "
                "optimum-intel's 8.85 s (1.54x), peak RSS 3.1 against 8.1 GiB, PSNR 40.6 dB (AMD EPYC, 2026-12-02); "
                "int8-hybrid drifts below the 40 dB bound (37–38 dB)",
            ),
            _ORT_EPYC,
            _TORCH,
        ),
    ),
    "avx512-vnni": Policy(
        "OpenVINO 11.64 s against optimum-intel 13.44 s and diffusers 17.04 s end to end (Xeon Ice Lake, "
        "2026-12-01); ONNX Runtime not measured there",
        (
            (
                "openvino",
                "fp16",
                "float32 arithmetic from fp16 weights, as measured (Xeon Ice Lake, 2026-12-01); int8-hybrid drifts "
                "below the 40 dB bound (37–38 dB) and no int8 variant above it was measured",
            ),
            _ORT_WITHOUT_AMX,
            _TORCH,
        ),
    ),
    "avx2": _UNMEASURED,
    "other": _UNMEASURED,
}


@dataclass(frozen=True)
class Choice:
    """A backend and an export precision, with why; `chose` names what was picked automatically."""

    cpu: CpuClass
    backend: str
    precision: str  # the artifacts' precision, as exported (fp32, fp16, int8, int8-hybrid)
    reason: str
    chose: tuple[str, ...] = ()  # "backend" and/or "precision"; empty when both were given

    def __str__(self) -> str:
        return f"backend {self.backend}, precision {self.precision}: {self.reason}"


@functools.cache
def backend_available(name: str) -> bool:
    """Whether the backend's engine imports here (imports it: the backend is about to be built anyway)."""
    try:
        backend_class(name)
    except BackendUnavailable:
        return False
    return True


def _cpu_device(device: str | None) -> bool:
    return device is None or device.lower() == "cpu"


def check_names(backend: str, precision: str = AUTO, device: str | None = None) -> None:
    """Refuse an unknown backend or precision, and --device without a backend to name it in."""
    if backend not in (AUTO, *BACKENDS):
        raise InputError(f"unknown backend {backend!r}; choose from: {', '.join((AUTO, *BACKENDS))}")
    if precision not in (AUTO, *PRECISIONS):
        raise InputError(f"unknown precision {precision!r}; choose from: {', '.join((AUTO, *PRECISIONS))}")
    if backend == AUTO and device is not None:
        raise InputError(f"--device {device} names a device of one backend: give --backend with it")


def choose(
    backend: str = AUTO,
    precision: str = AUTO,
    *,
    formats: Sequence[str] | None = None,
    device: str | None = None,
    cpu: CpuClass | None = None,
    available: Callable[[str], bool] = backend_available,
) -> Choice:
    """Resolve `auto` backend and/or precision for this CPU (or `cpu`).

    `formats`: the formats of artifacts already exported (their precision given), or None when the artifacts
    will be exported for the choice. `available(name)` says whether a backend is installed; auto tries the
    backends in BACKEND_ORDER and takes the first that is and can run the request.
    """
    check_names(backend, precision, device)
    cpu = cpu or detect()
    policy = POLICIES[cpu.name]
    passed: list[str] = []  # why each better-ranked backend was passed over

    def runs(name: str) -> bool:
        fmt = FORMAT_OF[name]
        if fmt is None:  # torch computes float32 from the source model, whatever the artifacts hold
            ok = precision in (AUTO, "fp32")
            why = f"it computes float32 from the source model, not {precision}"
        elif formats is not None:
            ok, why = fmt in formats, f"the artifacts hold no {fmt} files"
        else:
            ok = precision == AUTO or fmt in default_formats(precision)
            why = f"{precision} is not exported for it"
        if not ok:
            passed.append(f"{name}: {why}")
        return ok

    chose = []
    if backend == AUTO:
        chose.append("backend")
        for name in BACKEND_ORDER:
            if runs(name):
                if available(name):
                    backend = name
                    break
                passed.append(f"{name}: not installed")
        else:
            raise BackendUnavailable(f"no installed backend can run this ({'; '.join(passed)}): {_INSTALL}")
    reasons = [*passed]
    if "backend" in chose:
        reasons.append(policy.backends)
    if precision == AUTO:
        chose.append("precision")
        if _cpu_device(device):
            precision, why = policy.precision(backend)
        else:
            precision, why = "fp32", f"measurements cover CPUs, not {backend} device {device}: fp32"
        reasons.append(why)
    return Choice(cpu, backend, precision, "; ".join(reasons) or "given", tuple(chose))


def export_choice(formats: Sequence[str] | None, cpu: CpuClass | None = None) -> tuple[Choice, tuple[str, ...]]:
    """`turbo-export --precision auto`: one precision for the requested formats (default: the fastest backend's
    format only), and the formats. Formats whose backends are best at different precisions are exported apart."""
    if formats is None:
        first = next(b for b in BACKEND_ORDER if FORMAT_OF[b] is not None)
        formats = (FORMAT_OF[first],)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InputError(f"unknown format {unknown[0]!r}; choose from: {', '.join(FORMATS)}")
    # No format at all: artifacts for the torch backend only (tokenizers and manifest)
    backends = [b for b in BACKEND_ORDER if FORMAT_OF[b] in formats] or ["torch"]
    choices = [choose(b, AUTO, cpu=cpu) for b in backends]
    if len({c.precision for c in choices}) > 1:
        picks = " and ".join(f"{c.precision} for {FORMAT_OF[c.backend]}" for c in choices)
        raise InputError(
            f"--precision auto picks {picks} on this CPU ({choices[0].cpu.name}): export one format at a time, "
            "or give --precision"
        )
    return choices[0], tuple(formats)
