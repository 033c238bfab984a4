"""megatron-core GPTModel (local spec, TP=PP=1) -> Hugging Face transformers model: config and weights.

Targets (chosen from the stored training config, see :func:`target_class`):

=====================================================  ========================
megatron config                                        transformers class
=====================================================  ========================
RMSNorm + SwiGLU + RoPE (MHA or GQA)                   ``LlamaForCausalLM``
the same with ``qk_layernorm``                         ``Qwen3ForCausalLM``
LayerNorm + GeLU + learned absolute positions (MHA)    ``GPT2LMHeadModel``
LayerNorm + GeLU + RoPE (MHA or GQA)                   ``Starcoder2ForCausalLM``
=====================================================  ========================

Any other configuration raises :class:`ExportError` naming the field. Weights come from a model's
``state_dict()`` (megatron-core's local-spec names; a torch_dist checkpoint of any TP/PP layout
loads into that model, see ``megatron_ixt.inference.load_for_inference``). The fused QKV weight is grouped
per query group (``[groups, heads/groups + 2, kv_channels, hidden]``: q rows, then k, then v) and
the SwiGLU ``linear_fc1`` is ``[gate; up]``. Rows of the padded vocabulary are dropped.
"""
from __future__ import annotations

import torch

from megatron_ixt.cli import EXIT_CHECKPOINT


class ExportError(ValueError):
    """A model configuration that no target class expresses; the message names the field."""

    exit_code = EXIT_CHECKPOINT  # megatron_ixt.cli's exit-status table


LLAMA, QWEN3, GPT2, STARCODER2 = "LlamaForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel", "Starcoder2ForCausalLM"

# TransformerConfig fields whose non-default value no target expresses: (field, default).
_UNSUPPORTED = (("add_bias_linear", False), ("add_qkv_bias", False), ("rotary_interleaved", False),
                ("layernorm_zero_centered_gamma", False), ("apply_residual_connection_post_layernorm", False),
                ("num_moe_experts", None), ("multi_latent_attention", False), ("softmax_scale", None),
                ("window_size", None), ("apply_rope_fusion", False))


def target_class(model_cfg, tconfig) -> str:
    """The transformers class name for ``model_cfg`` (``cfg.model``) and its TransformerConfig.

    Raises ExportError naming the first field no target can express.
    """
    m = model_cfg
    for name, default in _UNSUPPORTED:
        value = getattr(tconfig, name, default)
        if value != default:
            raise ExportError(f"TransformerConfig.{name}={value!r}: no Hugging Face export target expresses it "
                              f"(supported: {default!r})")
    rotary_percent = getattr(m, "rotary_percent", 1.0)
    if rotary_percent != 1.0 and m.position_embedding_type == "rope":
        raise ExportError(f"model.rotary_percent={rotary_percent}: partial rotary embeddings are not supported")
    heads, groups = m.num_attention_heads, tconfig.num_query_groups or m.num_attention_heads
    if m.normalization == "RMSNorm":
        if not m.swiglu:
            raise ExportError("model.swiglu=False with model.normalization=RMSNorm: no export target "
                              "(RMSNorm needs SwiGLU, as in Llama/Qwen3; GeLU needs LayerNorm)")
        if m.position_embedding_type != "rope":
            raise ExportError(f"model.position_embedding_type={m.position_embedding_type!r} with RMSNorm: "
                              "no export target (Llama/Qwen3 use rope)")
        return QWEN3 if m.qk_layernorm else LLAMA
    if m.normalization != "LayerNorm":
        raise ExportError(f"model.normalization={m.normalization!r}: no export target")
    if m.swiglu:
        raise ExportError("model.swiglu=True with model.normalization=LayerNorm: no export target "
                          "(SwiGLU needs RMSNorm, as in Llama/Qwen3)")
    if m.qk_layernorm:
        raise ExportError("model.qk_layernorm=True with LayerNorm/GeLU: no export target "
                          "(qk_layernorm is exported with RMSNorm + SwiGLU as Qwen3)")
    if m.position_embedding_type == "rope":
        return STARCODER2
    if groups != heads:
        raise ExportError(f"model.num_query_groups={groups} with learned_absolute positions: GPT2 has "
                          "multi-head attention only (use rope for GQA)")
    if tconfig.kv_channels * heads != m.hidden_size:
        raise ExportError(f"model.kv_channels={tconfig.kv_channels} with learned_absolute positions: GPT2 needs "
                          f"kv_channels = hidden_size / num_attention_heads = {m.hidden_size // heads}")
    return GPT2


def hf_config(cfg, tconfig, vocab_size: int, eod, dtype: torch.dtype = torch.float32):
    """The transformers config of the export, every architectural field explicit.

    ``cfg``: the training Config; ``tconfig``: its TransformerConfig; ``vocab_size``: the
    tokenizer's (unpadded) vocabulary; ``eod``: its end-of-document id (bos/eos/pad of the export).
    """
    import transformers

    m = cfg.model
    target = target_class(m, tconfig)
    heads, groups = m.num_attention_heads, tconfig.num_query_groups or m.num_attention_heads
    tied = not m.untie_embeddings_and_output_weights
    common = dict(vocab_size=vocab_size, bos_token_id=eod, eos_token_id=eod, pad_token_id=eod,
                  tie_word_embeddings=tied, architectures=[target], use_cache=True, dtype=dtype)
    if target == GPT2:
        return transformers.GPT2Config(
            n_embd=m.hidden_size, n_layer=m.num_layers, n_head=heads, n_inner=tconfig.ffn_hidden_size,
            n_positions=m.max_position_embeddings, activation_function="gelu",
            layer_norm_epsilon=tconfig.layernorm_epsilon, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
            **common)
    shared = dict(hidden_size=m.hidden_size, intermediate_size=tconfig.ffn_hidden_size,
                  num_hidden_layers=m.num_layers, num_attention_heads=heads, num_key_value_heads=groups,
                  head_dim=tconfig.kv_channels, max_position_embeddings=m.max_position_embeddings,
                  rope_theta=float(m.rotary_base), attention_dropout=0.0, **common)
    if target == STARCODER2:
        return transformers.Starcoder2Config(norm_epsilon=tconfig.layernorm_epsilon, hidden_act="gelu",
                                             use_bias=False, sliding_window=None, residual_dropout=0.0,
                                             embedding_dropout=0.0, **shared)
    norm = dict(rms_norm_eps=tconfig.layernorm_epsilon, hidden_act="silu", attention_bias=False)
    if target == QWEN3:
        return transformers.Qwen3Config(use_sliding_window=False, sliding_window=None, **norm, **shared)
    return transformers.LlamaConfig(mlp_bias=False, **norm, **shared)


def _split_qkv(qkv: torch.Tensor, heads: int, groups: int, kv_channels: int):
    """Megatron's grouped ``[groups * (heads/groups + 2) * kv_channels, hidden]`` -> (q, k, v) weights."""
    per_group = heads // groups
    w = qkv.reshape(groups, per_group + 2, kv_channels, qkv.shape[-1])
    q = w[:, :per_group].reshape(heads * kv_channels, -1)
    k = w[:, per_group].reshape(groups * kv_channels, -1)
    v = w[:, per_group + 1].reshape(groups * kv_channels, -1)
    return q, k, v


def hf_state_dict(megatron_sd: dict[str, torch.Tensor], cfg, tconfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """transformers weights of the target class from a TP=PP=1 megatron ``state_dict()``.

    Raises ExportError when a megatron weight is left unmapped (a layout this exporter does not know).
    """
    m = cfg.model
    target = target_class(m, tconfig)
    heads, groups = m.num_attention_heads, tconfig.num_query_groups or m.num_attention_heads
    src = {k: v for k, v in megatron_sd.items() if not k.endswith("_extra_state") and v is not None}
    used: list[str] = []

    def take(key: str) -> torch.Tensor:
        used.append(key)
        return src[key]

    out: dict[str, torch.Tensor] = {}
    embedding = take("embedding.word_embeddings.weight")[:vocab_size]
    output = embedding if not m.untie_embeddings_and_output_weights else take("output_layer.weight")[:vocab_size]
    if target == GPT2:
        out["transformer.wte.weight"] = embedding
        out["transformer.wpe.weight"] = take("embedding.position_embeddings.weight")
        out["transformer.ln_f.weight"] = take("decoder.final_layernorm.weight")
        out["transformer.ln_f.bias"] = take("decoder.final_layernorm.bias")
        out["lm_head.weight"] = output
    else:
        out["model.embed_tokens.weight"] = embedding
        out["model.norm.weight"] = take("decoder.final_layernorm.weight")
        if target == STARCODER2:
            out["model.norm.bias"] = take("decoder.final_layernorm.bias")
        out["lm_head.weight"] = output
    for i in range(m.num_layers):
        pre = f"decoder.layers.{i}."
        q, k, v = _split_qkv(take(pre + "self_attention.linear_qkv.weight"), heads, groups, tconfig.kv_channels)
        proj = take(pre + "self_attention.linear_proj.weight")
        fc1, fc2 = take(pre + "mlp.linear_fc1.weight"), take(pre + "mlp.linear_fc2.weight")
        ln1, ln2 = pre + "input_layernorm.", pre + "pre_mlp_layernorm."
        if target == GPT2:
            h = f"transformer.h.{i}."
            # Conv1D stores [in, out]; GPT-2 biases are zero (megatron's linears have none)
            out[h + "attn.c_attn.weight"] = torch.cat([q, k, v]).t()
            out[h + "attn.c_attn.bias"] = torch.zeros(q.shape[0] * 3, dtype=q.dtype)
            out[h + "attn.c_proj.weight"] = proj.t()
            out[h + "attn.c_proj.bias"] = torch.zeros(proj.shape[0], dtype=proj.dtype)
            out[h + "mlp.c_fc.weight"] = fc1.t()
            out[h + "mlp.c_fc.bias"] = torch.zeros(fc1.shape[0], dtype=fc1.dtype)
            out[h + "mlp.c_proj.weight"] = fc2.t()
            out[h + "mlp.c_proj.bias"] = torch.zeros(fc2.shape[0], dtype=fc2.dtype)
            for hf_name, mg in (("ln_1.", ln1), ("ln_2.", ln2)):
                out[h + hf_name + "weight"] = take(mg + "weight")
                out[h + hf_name + "bias"] = take(mg + "bias")
            continue
        h = f"model.layers.{i}."
        out[h + "self_attn.q_proj.weight"] = q
        out[h + "self_attn.k_proj.weight"] = k
        out[h + "self_attn.v_proj.weight"] = v
        out[h + "self_attn.o_proj.weight"] = proj
        out[h + "input_layernorm.weight"] = take(ln1 + "weight")
        out[h + "post_attention_layernorm.weight"] = take(ln2 + "weight")
        if target == STARCODER2:
            out[h + "input_layernorm.bias"] = take(ln1 + "bias")
            out[h + "post_attention_layernorm.bias"] = take(ln2 + "bias")
            out[h + "mlp.c_fc.weight"] = fc1
            out[h + "mlp.c_proj.weight"] = fc2
            continue
        gate, up = fc1.chunk(2, dim=0)
        out[h + "mlp.gate_proj.weight"] = gate
        out[h + "mlp.up_proj.weight"] = up
        out[h + "mlp.down_proj.weight"] = fc2
        if target == QWEN3:
            out[h + "self_attn.q_norm.weight"] = take(pre + "self_attention.q_layernorm.weight")
            out[h + "self_attn.k_norm.weight"] = take(pre + "self_attention.k_layernorm.weight")
    left = sorted(set(src) - set(used))
    if left:
        raise ExportError(f"megatron weights not mapped to {target}: {left[:8]}{' ...' if len(left) > 8 else ''}")
    return out


def to_hf_model(model, cfg, tconfig, vocab_size: int, eod, dtype: torch.dtype = torch.float32):
    """An in-memory transformers model (eval mode, CPU, ``dtype``) with the weights of megatron ``model``."""
    import transformers

    config = hf_config(cfg, tconfig, vocab_size, eod, dtype)
    sd = hf_state_dict(model.state_dict(), cfg, tconfig, vocab_size)
    hf = getattr(transformers, config.architectures[0])(config)
    missing, unexpected = hf.load_state_dict({k: v.detach().to(torch.float32) for k, v in sd.items()},
                                             strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise ExportError(f"{config.architectures[0]}: weights missing {missing[:8]}, unexpected {unexpected[:8]}")
    return hf.to(dtype).eval()
