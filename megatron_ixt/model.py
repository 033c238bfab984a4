"""GPT model provider: megatron-core ``GPTModel`` with a Transformer-Engine or local layer spec.

``--transformer-impl transformer_engine`` uses megatron-core's TE spec (requires TE);
``local`` uses megatron-core's local spec with :class:`SDPAttention` as the core attention,
which runs on CPU and GPU. On GPU, ``torch.nn.functional.scaled_dot_product_attention``
dispatches to the flash / memory-efficient kernels when no explicit mask is given (plain
causal training); an explicit mask (e.g. ``--reset-attention-mask``) uses the masked kernel.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import Float16Module, MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

if TYPE_CHECKING:
    from megatron_ixt.training.config import Config

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa=


def transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


class SDPAttention(MegatronModule):
    """Core attention over ``torch.nn.functional.scaled_dot_product_attention``.

    Drop-in for megatron-core's ``DotProductAttention`` in a layer spec. Inputs are
    megatron's ``[s, b, heads, head_dim]`` query and ``[s, b, groups, head_dim]`` key/value
    (GQA when groups < heads, per tensor-parallel partition); ``attention_mask`` is None (causal)
    or a bool tensor broadcastable to ``[b, 1, s, s]`` with True = masked out (megatron's
    convention). Returns ``[s, b, heads * head_dim]``.
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str = "self", attention_dropout: float | None = None,
                 softmax_scale: float | None = None, **kwargs):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPAttention does not support context parallelism; use the TE spec")
        tp = config.tensor_model_parallel_size
        self.heads = config.num_attention_heads // tp
        self.groups = (config.num_query_groups or config.num_attention_heads) // tp
        self.attn_mask_type = attn_mask_type
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        head_dim = config.kv_channels
        self.softmax_scale = softmax_scale or config.softmax_scale or 1.0 / math.sqrt(head_dim)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None, **kwargs):
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPAttention: packed sequences / attention bias need the TE spec")
        # [s, b, h, d] -> [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = self.heads != self.groups
        if gqa and not _SDPA_HAS_GQA:
            k = k.repeat_interleave(self.heads // self.groups, dim=1)
            v = v.repeat_interleave(self.heads // self.groups, dim=1)
        mask_type = attn_mask_type or self.attn_mask_type
        causal = attention_mask is None and mask_type == AttnMaskType.causal
        mask = None if attention_mask is None else ~attention_mask
        dropout = self.dropout if self.training else 0.0
        extra = {"enable_gqa": True} if gqa and _SDPA_HAS_GQA else {}
        if dropout > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                     is_causal=causal, scale=self.softmax_scale, **extra)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=causal, scale=self.softmax_scale, **extra)
        # [b, h, s, d] -> [s, b, h*d]
        b, h, s, d = out.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, h * d)


def layer_spec(transformer_impl: str, normalization: str, qk_layernorm: bool) -> ModuleSpec:
    """Transformer-layer spec: megatron-core's TE spec, or its local spec with SDPA attention."""
    if transformer_impl == "transformer_engine":
        if not transformer_engine_available():
            raise RuntimeError("--transformer-impl transformer_engine needs Transformer Engine "
                               "(pip install transformer-engine[pytorch]); use --transformer-impl local")
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    if transformer_impl != "local":
        raise ValueError(f"unknown --transformer-impl {transformer_impl!r}; use 'local' or 'transformer_engine'")
    spec = get_gpt_layer_local_spec(normalization=normalization, qk_layernorm=qk_layernorm)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``divisible_by * tp`` (Megatron-LM's padding)."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def transformer_config(cfg: Config) -> TransformerConfig:
    """megatron-core's TransformerConfig for ``cfg.model`` under ``cfg.parallel`` / ``cfg.train``."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    dtype = torch.bfloat16 if t.bf16 else torch.float32
    kwargs = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        normalization=m.normalization, layernorm_epsilon=1e-5,
        gated_linear_unit=m.swiglu, activation_func=F.silu if m.swiglu else F.gelu,
        add_bias_linear=False, init_method_std=m.init_method_std,
        hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
        bf16=t.bf16, params_dtype=dtype, pipeline_dtype=dtype,
        use_cpu_initialization=t.use_cpu_initialization,
        calculate_per_token_loss=True,
        masked_softmax_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        qk_layernorm=m.qk_layernorm,
    )
    return TransformerConfig(**kwargs)


def model_from_config(cfg: Config, config: TransformerConfig, vocab_size: int) -> GPTModel:
    """This rank's megatron-core ``GPTModel`` stage for ``cfg.model`` (``config``: its
    :func:`transformer_config`; ``vocab_size`` already padded, :func:`padded_vocab_size`).
    Pre/post-processing (embedding, output layer) follow this rank's pipeline stage. Shared by
    training, generation and export so that all build the same architecture."""
    m = cfg.model
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(m.transformer_impl, m.normalization, m.qk_layernorm),
        vocab_size=vocab_size,
        max_sequence_length=m.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=not m.untie_embeddings_and_output_weights,
        position_embedding_type=m.position_embedding_type,
        rotary_base=m.rotary_base,
    )


def training_model(cfg: Config, config: TransformerConfig, vocab_size: int) -> DistributedDataParallel:
    """:func:`model_from_config` on this rank's device, in ``Float16Module`` with ``--bf16``, wrapped in
    megatron-core's ``DistributedDataParallel`` (fp32 gradient reduction) with parameters broadcast
    from data-parallel rank 0. Sets ``config.no_sync_func`` and ``config.finalize_model_grads_func``,
    which megatron-core's schedules call."""
    model = model_from_config(cfg, config, vocab_size)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if cfg.train.bf16:
        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer)
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    model.broadcast_params()
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return model
