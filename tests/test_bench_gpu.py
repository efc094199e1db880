"""bench/gpu.py's pieces with a truth of their own: MFU against a hand computation, the peak table by CUDA name,
and the Qwen2 shapes against the parameter counts of Qwen2.5-0.5B and -1.5B counted by hand (the N of MFU)."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from bench.gpu import QWEN2_COMMON, QWEN2_SHAPES, mfu, peak_bf16_flops


def test_mfu_by_hand():
    # 0.5e9 parameters at 60,000 tokens/s: 6 * 5e8 * 6e4 = 1.8e14 FLOP/s of a 989e12 peak
    assert mfu(500_000_000, 60_000.0, 989e12) == pytest.approx(1.8e14 / 989e12, rel=1e-12)
    assert mfu(500_000_000, 60_000.0, 989e12) == pytest.approx(0.182002, abs=1e-6)
    assert mfu(500_000_000, 60_000.0, None) is None  # CPU, or a GPU not in the table
    assert mfu(500_000_000, float("nan"), 989e12) is None  # no steady steps measured


@pytest.mark.parametrize("name, flops", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                         ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                         ("Tesla T4", None)])
def test_peak_by_cuda_name(name, flops):
    assert peak_bf16_flops(name) == flops


def _hand_count(hidden: int, inter: int, layers: int, heads: int, kv_heads: int, vocab: int = 151936) -> int:
    """Tied embedding + per layer: q/k/v with biases, o without, three MLP matrices, two RMSNorms; final norm."""
    kv = hidden // heads * kv_heads
    layer = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden + 3 * hidden * inter + 2 * hidden
    return vocab * hidden + layers * layer + hidden


@pytest.mark.parametrize("size, published", [("0.5b", 494_032_768), ("1.5b", 1_543_714_304)])
def test_qwen2_shapes_have_the_published_parameter_counts(size, published):
    shape = QWEN2_SHAPES[size]
    with torch.device("meta"):  # no memory, no initialisation: only the parameter shapes
        model = Qwen2ForCausalLM(Qwen2Config(**shape, **QWEN2_COMMON))
    expected = _hand_count(shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"],
                           shape["num_attention_heads"], shape["num_key_value_heads"])
    assert expected == published
    assert model.num_parameters() == published
