"""The CPU this process runs on, sorted into the classes whose fastest inference paths differ.

The classes follow the instructions that decide the arithmetic: AMX tiles (bf16 and int8), AVX512-BF16 without
AMX, AVX-512 VNNI without bf16, and AVX2 without either. Flags come from /proc/cpuinfo, which lists only what the
kernel lets processes use (AMX, for one, needs kernel support), the same view the engines get.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

CPUINFO = "/proc/cpuinfo"

# Class name -> what it means, strongest first: a CPU belongs to the first class whose flags it has.
CLASSES = {
    "amx": "AMX (bf16 and int8 tiles)",
    "avx512-bf16": "AVX512-BF16 without AMX",
    "avx512-vnni": "AVX-512 VNNI without bf16",
    "avx2": "AVX2 without AVX-512 VNNI",
    "other": "no AVX2, or flags unknown",
}
_REQUIRES = {
    "amx": {"amx_tile", "amx_bf16"},
    "avx512-bf16": {"avx512_bf16"},
    "avx512-vnni": {"avx512_vnni"},
    "avx2": {"avx2"},
    "other": set(),
}
# What the engines' CPU kernels dispatch on; recorded with every class so a report shows why.
FLAGS_THAT_MATTER = (
    "amx_tile", "amx_bf16", "amx_int8", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "avx2",
    "fma", "f16c",
)  # fmt: skip


@dataclass(frozen=True)
class CpuClass:
    name: str  # a key of CLASSES
    flags: tuple[str, ...]  # those of FLAGS_THAT_MATTER the CPU has, in that order
    model: str  # /proc/cpuinfo's "model name" (lscpu's), "" when unknown

    @property
    def description(self) -> str:
        return CLASSES[self.name]

    @property
    def has_bf16(self) -> bool:
        """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX): OpenVINO's CPU plugin then defaults to it."""
        return self.name in ("amx", "avx512-bf16")

    def __str__(self) -> str:
        return f"{self.name} ({self.model})" if self.model else self.name


def classify(flags: Iterable[str], model: str = "") -> CpuClass:
    """The class of a CPU with these flags (as /proc/cpuinfo spells them)."""
    have = set(flags)
    name = next(name for name, needed in _REQUIRES.items() if needed <= have)
    return CpuClass(name, tuple(f for f in FLAGS_THAT_MATTER if f in have), model)


def parse_cpuinfo(text: str) -> CpuClass:
    """The class of the first processor listed in /proc/cpuinfo's text (all cores of a machine share flags)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:  # a blank line ends the first processor's block
                break
            continue
        fields.setdefault(key.strip(), value.strip())
    return classify(fields.get("flags", "").split(), fields.get("model name", ""))


@functools.cache
def detect() -> CpuClass:
    """This machine's class; "other" where /proc/cpuinfo cannot be read (not Linux)."""
    try:
        with open(CPUINFO) as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return classify(())
