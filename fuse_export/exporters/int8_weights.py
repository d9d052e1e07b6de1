"""Which weight range an int8 file gets: the full 8-bit range, or 7 bits for x86 CPUs without VNNI.

Without VNNI, the x86 int8 kernels of ONNX Runtime and OpenVINO multiply u8 activations by s8 weights with
vpmaddubsw, which adds each pair of products into an int16 with saturation: 255 * 127 * 2 = 64770 overflows
32767, 255 * 64 * 2 = 32640 does not. 7-bit weights (quantize_static's `reduce_range`; NNCF's "overflow
fix") cannot overflow there, for a small accuracy cost; with VNNI (vpdpbusd sums into int32), or off x86,
the full range is exact. Stdlib only (the CLI and the options read the choices).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from fuse_export.cpuinfo import CpuFeatures, cpu_features
from fuse_export.errors import UserError

INT8_WEIGHTS = ("auto", "8", "7")
# ORT's symmetric int8 weight ranges (quant_utils.ONNX_INT_TYPE_SYMMETRIC_RANGE and _REDUCED_RANGE).
WEIGHT_RANGES = {8: (-127, 127), 7: (-64, 64)}
X86_MACHINES = frozenset({"x86_64", "amd64", "x86", "i386", "i686"})
INT8_WEIGHTS_KEY = "int8_weights"  # the key of the choice in the file metadata and the manifest's calibration


@dataclass(frozen=True)
class WeightRange:
    """The weight range an int8 file is quantized to, what was asked for, and why this range."""

    bits: int  # 8 or 7 (WEIGHT_RANGES)
    choice: str  # as asked: auto, 8 or 7
    reason: str

    @property
    def reduce_range(self) -> bool:
        return self.bits == 7

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "range": list(WEIGHT_RANGES[self.bits]), "choice": self.choice,
                "reason": self.reason}


def int8_weight_range(choice: str = "auto", cpu: CpuFeatures | None = None,
                      machine: str | None = None) -> WeightRange:
    """`auto`: 7-bit weights on an x86 CPU without VNNI, else 8-bit; `8` / `7` as asked.

    `auto` follows the exporting machine (`cpu`, `machine`: this one by default) because export verifies
    the file here: an 8-bit file that saturates here would fail its own verification, and one that passes
    proves nothing about a CPU without VNNI elsewhere.
    """
    choice = str(choice).strip().lower()
    if choice not in INT8_WEIGHTS:
        raise UserError(f"--int8-weights {choice!r}: choose from {', '.join(INT8_WEIGHTS)}")
    if choice != "auto":
        bits = int(choice)
        return WeightRange(bits, choice, f"--int8-weights {bits}")
    cpu = cpu or cpu_features()
    machine = (machine or platform.machine()).lower()
    if machine not in X86_MACHINES:
        return WeightRange(8, choice, f"auto: {machine} is not x86 (no int16 pair-sum saturation)")
    if cpu.has("vnni"):
        return WeightRange(8, choice, f"auto: this CPU ({cpu.model}) has VNNI (int32 dot products)")
    return WeightRange(7, choice, f"auto: this CPU ({cpu.model}) has no VNNI; 8-bit u8 x s8 products saturate "
                                  "int16 pair sums there")
