"""Model FLOPs against Megatron-LM's closed form; MFU and the GPU peak table."""
import pytest

from megatron_ixt.training.config import ModelConfig
from megatron_ixt.training.flops import (
    annotation_flops,
    forward_flops_per_sequence,
    mfu,
    peak_tflops,
    training_flops_per_iteration,
)


def megatron_lm_formula(b, s, L, h, ffn, heads, groups, vocab, swiglu):
    """Megatron-LM ``num_floating_point_operations`` (dense, causal attention), written out."""
    gated = 1.5 if swiglu else 1.0
    return 12 * b * s * L * h * h * ((1 + groups / heads + s / h / 2) + ffn / h * gated + vocab / (2 * L * h))


@pytest.mark.parametrize("swiglu,groups", [(True, 8), (True, 2), (False, 32)])
def test_training_flops_match_megatron_lm(swiglu, groups):
    m = ModelConfig(num_layers=16, hidden_size=2048, ffn_hidden_size=5632, num_attention_heads=32,
                    num_query_groups=groups, kv_channels=64, seq_length=4096, swiglu=swiglu)
    got = training_flops_per_iteration(m, vocab_size=32768, global_batch_size=8)
    assert got == pytest.approx(megatron_lm_formula(8, 4096, 16, 2048, 5632, 32, groups, 32768, swiglu), rel=1e-12)


def test_gqa_and_sequence_terms():
    kw = dict(num_layers=1, hidden_size=64, ffn_hidden_size=128, num_attention_heads=8, kv_channels=8,
              seq_length=32, vocab_size=100, swiglu=False)
    mha = forward_flops_per_sequence(num_query_groups=None, **kw)
    gqa = forward_flops_per_sequence(num_query_groups=2, **kw)
    assert mha - gqa == 2 * 32 * 64 * (2 * 64 - 2 * 16)  # K and V projections shrink from 8 to 2 heads
    full = forward_flops_per_sequence(num_query_groups=None, causal=False, **kw)
    assert full - mha == 2 * 32 * 32 * 64  # causal attention counts half of the s x s products


def test_peak_table_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Some CPU") is None
    assert mfu(400.0, 989.0) == pytest.approx(0.4044, abs=1e-4)
    assert mfu(1.0, None) is None
    assert annotation_flops(8e9, 1e6) == 1.6e16
