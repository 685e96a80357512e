"""CPU classes from injected flags, and the automatic choice of backend and precision made from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbo_runtime.auto import AUTO, BACKEND_ORDER, FORMAT_OF, POLICIES, choose, export_choice
from turbo_runtime.backends import BACKENDS
from turbo_runtime.cpu import CLASSES, CpuClass, classify, detect, parse_cpuinfo
from turbo_runtime.errors import BackendUnavailable, InputError

# Flags as the machines this project ran on list them (benchmarks/results/*/results.json), and two it did not.
XEON_AMX = "fpu sse2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni"
EPYC = "fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni"
ICE_LAKE = "fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_vbmi2"
ALDER_LAKE = "fpu sse2 avx avx2 fma f16c avx_vnni"  # 256-bit VNNI only: the AVX2 class
HASWELL = "fpu sse2 avx avx2 fma f16c"


def everything(name: str) -> bool:
    return True


@pytest.mark.parametrize(
    "flags,name",
    [
        (XEON_AMX, "amx"),
        (EPYC, "avx512-bf16"),
        (ICE_LAKE, "avx512-vnni"),
        (ALDER_LAKE, "avx2"),
        (HASWELL, "avx2"),
        ("fp asimd evtstrm aes", "other"),  # an Arm server's "Features"
        ("", "other"),
    ],
)
def test_each_class_is_told_by_its_flags(flags, name):
    cpu = classify(flags.split(), "Some CPU")
    assert cpu.name == name and cpu.description == CLASSES[name]
    assert set(cpu.flags) <= set(flags.split()) and "fpu" not in cpu.flags  # only the flags that matter
    assert cpu.has_bf16 == (name in ("amx", "avx512-bf16"))
    assert str(cpu) == f"{name} (Some CPU)"


def test_cpuinfo_is_read_from_the_first_processor():
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: " + EPYC + "\n\n"
        "processor\t: 1\nmodel name\t: something else\nflags\t\t: " + HASWELL + "\n"
    )
    cpu = parse_cpuinfo(text)
    assert (cpu.name, cpu.model) == ("avx512-bf16", "AMD EPYC")
    assert cpu.flags == ("avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx2", "fma", "f16c")
    arm = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n")
    assert (arm.name, arm.model, arm.flags) == ("other", "", ())


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo")
def test_detect_reads_this_machine():
    assert detect() == parse_cpuinfo(Path("/proc/cpuinfo").read_text())


@pytest.mark.parametrize(
    "name,openvino,onnxruntime",
    [
        ("amx", "fp16", "int8"),  # bf16 from fp16 weights; ONNX Runtime's int8 measured faster, 41.0 dB
        ("avx512-bf16", "int8", "int8"),  # both with int8 VAE decoder convolutions, measured faster on the EPYC
        ("avx512-vnni", "fp16", "fp32"),  # float32 arithmetic from fp16 weights, as measured on Ice Lake
        ("avx2", "fp32", "fp32"),  # not measured: float32
        ("other", "fp32", "fp32"),
    ],
)
def test_auto_takes_the_measured_full_quality_path_of_each_class(name, openvino, onnxruntime):
    cpu = CpuClass(name, (), "")
    both = choose(cpu=cpu, available=everything)
    assert (both.backend, both.precision, both.chose) == ("openvino", openvino, ("backend", "precision"))
    assert POLICIES[name].backends in both.reason and str(both).startswith(f"backend openvino, precision {openvino}: ")
    assert choose("onnxruntime", cpu=cpu).precision == onnxruntime
    assert choose("torch", cpu=cpu).precision == "fp32"
    for backend in BACKEND_ORDER:  # never a path known to drift below the bound, nor one without a reason
        chosen = choose(backend, cpu=cpu)
        assert chosen.precision in ("fp32", "fp16", "int8") and chosen.chose == ("precision",) and chosen.reason
    if name in ("avx2", "other"):
        assert "no run on this class" in both.reason


def test_auto_backend_passes_over_what_is_missing_or_cannot_run_and_says_why():
    cpu = classify(EPYC.split())
    no_openvino = choose(cpu=cpu, available=lambda b: b != "openvino")
    assert (no_openvino.backend, no_openvino.precision) == ("onnxruntime", "int8")
    assert no_openvino.reason.startswith("openvino: not installed; ")
    onnx_only = choose(AUTO, "fp32", formats=["onnx"], cpu=cpu, available=everything)
    assert (onnx_only.backend, onnx_only.chose) == ("onnxruntime", ("backend",))
    assert "openvino: the artifacts hold no openvino files" in onnx_only.reason
    torch_only = choose(AUTO, "fp32", formats=[], cpu=cpu, available=everything)
    assert torch_only.backend == "torch"
    hybrid = choose(AUTO, "int8-hybrid", cpu=cpu, available=everything)  # made for OpenVINO only
    assert hybrid.backend == "openvino"
    with pytest.raises(BackendUnavailable, match=r"onnxruntime: int8-hybrid is not exported for it.*\[openvino\]"):
        choose(AUTO, "int8-hybrid", cpu=cpu, available=lambda b: b != "openvino")
    with pytest.raises(BackendUnavailable, match=r"torch: it computes float32 from the source model, not fp16"):
        choose(AUTO, "fp16", formats=[], cpu=cpu, available=everything)
    with pytest.raises(BackendUnavailable, match=r"no installed backend can run this.*pip install"):
        choose(cpu=cpu, available=lambda b: False)


def test_given_names_are_kept_and_checked():
    cpu = classify(XEON_AMX.split())
    given = choose("onnxruntime", "fp16", cpu=cpu)
    assert (given.backend, given.precision, given.reason, given.chose) == ("onnxruntime", "fp16", "given", ())
    gpu = choose("openvino", AUTO, device="GPU", cpu=cpu)  # the table covers CPUs only
    assert gpu.precision == "fp32" and "not openvino device GPU" in gpu.reason
    assert choose("openvino", AUTO, device="CPU", cpu=cpu).precision == "fp16"
    with pytest.raises(InputError, match="--device CPU names a device of one backend: give --backend with it"):
        choose(AUTO, device="CPU", cpu=cpu)
    with pytest.raises(InputError, match="unknown backend 'tensorrt'; choose from: auto, torch, onnxruntime"):
        choose("tensorrt", cpu=cpu)
    with pytest.raises(InputError, match="unknown precision 'int4'; choose from: auto, fp32"):
        choose("openvino", "int4", cpu=cpu)


def test_export_auto_writes_the_fastest_backends_format_at_one_precision():
    amx, epyc, haswell = (classify(f.split()) for f in (XEON_AMX, EPYC, HASWELL))
    choice, formats = export_choice(None, amx)
    assert (choice.precision, formats) == ("fp16", ("openvino",))
    assert export_choice(("onnx",), amx)[0].precision == "int8"
    assert export_choice(("onnx", "openvino"), haswell)[0].precision == "fp32"  # both best in fp32
    assert export_choice((), epyc) == (choose("torch", cpu=epyc), ())  # tokenizers and manifest for torch
    assert export_choice(("onnx", "openvino"), epyc)[0].precision == "int8"  # one precision, best for both
    with pytest.raises(InputError, match=r"picks fp16 for openvino and int8 for onnx on this CPU \(amx\)"):
        export_choice(("onnx", "openvino"), amx)
    with pytest.raises(InputError, match="unknown format 'tflite'"):
        export_choice(("tflite",), epyc)


def test_the_table_covers_every_class_and_backend():
    assert set(POLICIES) == set(CLASSES) and set(BACKEND_ORDER) == set(BACKENDS)
    for policy in POLICIES.values():
        assert [b for b, _, _ in policy.precisions] == list(BACKEND_ORDER)


@pytest.mark.parametrize("backend", BACKEND_ORDER)
def test_format_of_each_backend_is_the_one_it_reads(backend):
    from turbo_runtime.backends import backend_class

    try:
        cls = backend_class(backend)
    except BackendUnavailable:
        pytest.skip(f"{backend} is not installed")
    assert FORMAT_OF[backend] == cls.artifact_format
