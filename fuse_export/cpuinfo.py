"""The CPU model and the instruction sets that decide CPU inference speed (torch-free, stdlib only).

Reported by `doctor` and written into every benchmark JSON, so a number always travels with the hardware
that produced it: AVX2 and AVX-512 set the fp32 speed, VNNI the int8 speed, AVX512-BF16 and AMX the bf16
speed (OpenVINO even picks bf16 by default where they exist, which is why precision must be explicit).
"""

from __future__ import annotations

import operator
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fuse_export.errors import UserError

# Intra-op threads a runner may be given, per logical CPU: past a few per CPU more threads only contend, and
# `predict --threads 100000` ran on for minutes with its memory climbing.
THREADS_PER_CPU = 4

# Feature name in our reports -> the Linux /proc/cpuinfo flag(s) that mean it (any of them).
FEATURES: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx512_bf16": ("avx512_bf16",),
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
}


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU is and which speed-deciding instruction sets it has."""

    model: str
    logical_cpus: int
    flags: frozenset[str] = field(default_factory=frozenset)  # the feature keys of FEATURES it has

    def has(self, feature: str) -> bool:
        return feature in self.flags

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated and slow."""
        return self.has("avx512_bf16") or self.has("amx_bf16")

    @property
    def has_amx(self) -> bool:
        return self.has("amx_bf16") or self.has("amx_int8")

    def summary(self) -> str:
        """One line: 'AMD EPYC, 2 logical CPUs: AVX2 yes, AVX-512 yes, ...'."""
        shown = ", ".join(f"{TITLES[k]} {'yes' if self.has(k) else 'no'}" for k in FEATURES)
        return f"{self.model}, {self.logical_cpus} logical CPUs: {shown}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = {k: self.has(k) for k in FEATURES}
        return d


TITLES = {"avx2": "AVX2", "avx512": "AVX-512", "vnni": "VNNI", "avx512_bf16": "AVX512-BF16",
          "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Features from the text of /proc/cpuinfo (the first processor's model name and flags)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    have = frozenset(k for k, names in FEATURES.items() if any(n in flags for n in names))
    return CpuFeatures(model or platform.processor() or "unknown CPU", os.cpu_count() or 1, have)


def cpu_features(path: str | os.PathLike = "/proc/cpuinfo") -> CpuFeatures:
    """This machine's CPU; on a system without /proc/cpuinfo the model from `platform` and no flags."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def max_threads() -> int:
    """The most intra-op threads a runner may be given here: THREADS_PER_CPU per logical CPU."""
    return (os.cpu_count() or 1) * THREADS_PER_CPU


def check_threads(threads: int | None, option: str = "--threads") -> int | None:
    """`threads` when it is None (the runtime's default) or 1..max_threads(); a UserError naming `option` else."""
    if threads is None:
        return None
    try:
        count = -1 if isinstance(threads, bool) else operator.index(threads)  # ints, numpy ints; not 2.0 or True
    except TypeError:
        count = -1
    if not 1 <= count <= max_threads():
        raise UserError(f"{option} {threads!r}: must be 1..{max_threads()} ({THREADS_PER_CPU} per logical CPU; "
                        f"this machine has {os.cpu_count() or 1})")
    return count


def bf16_status() -> tuple[bool, str]:
    """(usable, why not) for bf16 inference: only where the CPU computes bf16 natively (else emulated, slow)."""
    cpu = cpu_features()
    if cpu.native_bf16:
        return True, ""
    return False, f"this CPU ({cpu.model}) has neither AVX512-BF16 nor AMX-BF16: bf16 would be emulated"
