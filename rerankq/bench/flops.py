"""Model FLOP utilisation: the useful arithmetic of a forward pass (an encoder's, or a decoder
LLM reranker's) against the device's dense fp16/bf16 tensor peak.

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
class ModelShape:
    layers: int
    projection_params: int  # per layer: Q, K, V and output projections
    mlp_params: int  # per layer: the feed-forward matrices
    attention_width: int  # heads x head size
    causal: bool  # a decoder attends to earlier tokens only: half the LxL products count

    @classmethod
    def of(cls, config: Any) -> ModelShape:
        """From a ``transformers`` config: a BERT-family encoder, or a decoder with grouped-query
        attention and a gated feed-forward (Qwen3, Gemma: they have ``num_key_value_heads``)."""
        hidden, intermediate = config.hidden_size, config.intermediate_size
        if getattr(config, "num_key_value_heads", None) is None:
            return cls(config.num_hidden_layers, 4 * hidden**2, 2 * hidden * intermediate, hidden, causal=False)
        head = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
        queries, keys = config.num_attention_heads * head, config.num_key_value_heads * head
        projections = 2 * hidden * queries + 2 * hidden * keys
        return cls(config.num_hidden_layers, projections, 3 * hidden * intermediate, queries, causal=True)

    def pair_flops(self, tokens: int) -> float:
        """One pair of ``tokens`` tokens: per layer the projections and the feed-forward (two
        FLOPs per weight and token), and attention's two LxL products (2 L w each; half when causal)."""
        attention = 4 * tokens * self.attention_width * (0.5 if self.causal else 1.0)
        per_token = 2 * (self.projection_params + self.mlp_params) + attention
        return float(self.layers * tokens * per_token)

    def flops(self, lengths: Iterable[int]) -> float:
        return sum(self.pair_flops(length) for length in lengths)


def mfu(shape: ModelShape, lengths: list[int], seconds: float, device_name: str) -> float | None:
    """Achieved useful FLOP/s over the peak, or None when the peak is unknown."""
    peak = peak_tflops(device_name)
    return None if peak is None else shape.flops(lengths) / seconds / (peak * 1e12)
