"""Model FLOPs (Megatron-LM's accounting), MFU, and IXT annotation FLOPs.

All counts are floating-point operations (a multiply-add is 2 FLOPs) of matrix multiplies,
the convention of Megatron-LM's ``num_floating_point_operations``: per layer the QKV
projection (GQA shrinks K and V), causal attention scores and values (half of the full
``s x s`` product), the output projection and the MLP (SwiGLU has three ``h x ffn``
matrices), plus the output layer (logits). Training = 3x forward (backward is 2x).
Norms, softmax, and the embedding lookup are not counted.
"""
from __future__ import annotations

# Dense bf16 tensor-core peak per device, TFLOP/s (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "GB200": 2500.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def peak_tflops(device_name: str) -> float | None:
    """bf16 dense peak for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), longest match."""
    matches = [k for k in PEAK_BF16_TFLOPS if k.lower() in device_name.lower()]
    return PEAK_BF16_TFLOPS[max(matches, key=len)] if matches else None


def layer_matrix_params(*, hidden_size: int, ffn_hidden_size: int, num_attention_heads: int,
                        num_query_groups: int | None, kv_channels: int | None, swiglu: bool) -> float:
    """Matrix parameters of one transformer layer: QKV (GQA shrinks K and V), the output projection
    and the MLP (SwiGLU has three ``h x ffn`` matrices); norms and biases are not counted."""
    h = hidden_size
    head_dim = kv_channels or h // num_attention_heads
    q_dim = num_attention_heads * head_dim
    kv_dim = (num_query_groups or num_attention_heads) * head_dim
    return float(h * (q_dim + 2 * kv_dim) + q_dim * h + h * ffn_hidden_size * (3 if swiglu else 2))


def forward_flops_per_sequence(*, num_layers: int, hidden_size: int, ffn_hidden_size: int,
                               num_attention_heads: int, num_query_groups: int | None,
                               kv_channels: int | None, seq_length: int, vocab_size: int,
                               swiglu: bool, causal: bool = True) -> float:
    """Forward FLOPs of one sequence of ``seq_length`` tokens through the whole model."""
    s, h = seq_length, hidden_size
    q_dim = num_attention_heads * (kv_channels or h // num_attention_heads)
    matrices = 2 * s * layer_matrix_params(hidden_size=h, ffn_hidden_size=ffn_hidden_size,
                                           num_attention_heads=num_attention_heads,
                                           num_query_groups=num_query_groups, kv_channels=kv_channels,
                                           swiglu=swiglu)  # QKV, output projection, MLP
    attention = 2 * 2 * s * s * q_dim * (0.5 if causal else 1.0)  # QK^T and PV
    logits = 2 * s * h * vocab_size
    return float(num_layers * (matrices + attention) + logits)


def training_flops_per_iteration(model_cfg, vocab_size: int, global_batch_size: int) -> float:
    """Training FLOPs (forward + backward) of one iteration, for a ``ModelConfig``."""
    fwd = forward_flops_per_sequence(
        num_layers=model_cfg.num_layers, hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size, num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups, kv_channels=model_cfg.kv_channels,
        seq_length=model_cfg.seq_length, vocab_size=vocab_size, swiglu=model_cfg.swiglu)
    return 3.0 * fwd * global_batch_size


def annotation_flops(reward_model_params: float, annotation_tokens: float) -> float:
    """IXT's annotation cost ``2 * N_ann * D_ann`` (tokens the reward model read and wrote)."""
    return 2.0 * reward_model_params * annotation_tokens


def mfu(tflops_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None without a known peak."""
    return tflops_per_device / peak if peak else None
