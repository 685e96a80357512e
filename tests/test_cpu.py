"""CPU classes from injected flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from turbo_runtime.cpu import CLASSES, classify, detect, parse_cpuinfo

# Flags as the machines this project ran on list them (benchmarks/results/*/results.json), and two it did not.
XEON_AMX = "fpu sse2 avx avx2 fma f16c avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni"
EPYC = "fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx512_bf16 avx_vnni"
ICE_LAKE = "fpu sse2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_vbmi2"
ALDER_LAKE = "fpu sse2 avx avx2 fma f16c avx_vnni"  # 256-bit VNNI only: the AVX2 class
HASWELL = "fpu sse2 avx avx2 fma f16c"


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
