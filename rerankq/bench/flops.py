"""Model FLOP utilisation: the useful arithmetic of an encoder's forward pass against the device's
dense fp16/bf16 tensor peak.

Useful FLOPs count real tokens only (padding is waste, so it lowers the figure, as it should);
matrix products count two FLOPs per multiply-add, the convention of the MFU literature.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets. The
# first name contained in the device's name wins, so variants come before their family.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("V100", 125.0),
    ("T4", 65.0),
)


def peak_tflops(device_name: str) -> float | None:
    """The device's dense fp16/bf16 peak, or None for a device not in the table."""
    return next((peak for name, peak in PEAK_TFLOPS if name in device_name), None)


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def of(cls, config: Any) -> EncoderShape:
        """From a BERT-family ``transformers`` config."""
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size)

    def pair_flops(self, tokens: int) -> float:
        """One pair of ``tokens`` tokens: per layer the Q, K, V and output projections (4 h²),
        the feed-forward pair (2 h·i), and attention's two LxL products (2 L h each)."""
        per_token = 2 * (4 * self.hidden**2 + 2 * self.hidden * self.intermediate) + 4 * tokens * self.hidden
        return float(self.layers * tokens * per_token)

    def flops(self, lengths: Iterable[int]) -> float:
        return sum(self.pair_flops(length) for length in lengths)


def mfu(shape: EncoderShape, lengths: list[int], seconds: float, device_name: str) -> float | None:
    """Achieved useful FLOP/s over the peak, or None when the peak is unknown."""
    peak = peak_tflops(device_name)
    return None if peak is None else shape.flops(lengths) / seconds / (peak * 1e12)
