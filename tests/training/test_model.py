"""SDPAttention (the local spec's core attention) against an explicit softmax attention."""
import math

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ixt.model import SDPAttention, layer_spec


def _reference(q, k, v, mask):
    """q [s,b,h,d], k/v [s,b,g,d]; mask [b,1,s,s] True = masked. Returns [s,b,h*d]."""
    s, b, h, d = q.shape
    rep = h // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(d)
    scores = scores.masked_fill(mask, float("-inf"))
    out = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v)
    return out.reshape(s, b, h * d)


@pytest.mark.parametrize("groups", [4, 2, 1])
def test_sdpa_attention_matches_reference(groups):
    torch.manual_seed(0)
    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, num_query_groups=groups,
                            attention_dropout=0.0)
    attn = SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal)
    s, b, d = 10, 3, 16
    q, k, v = torch.randn(s, b, 4, d), torch.randn(s, b, groups, d), torch.randn(s, b, groups, d)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).expand(b, 1, s, s)
    expected = _reference(q, k, v, causal)
    torch.testing.assert_close(attn(q, k, v, None), expected, rtol=1e-5, atol=1e-5)
    # An explicit mask (e.g. --reset-attention-mask: documents do not see each other).
    docs = causal.clone()
    docs[:, :, 5:, :5] = True
    torch.testing.assert_close(attn(q, k, v, docs), _reference(q, k, v, docs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(attn(q, k, v, docs), expected)


def test_layer_spec_choices():
    spec = layer_spec("local", "RMSNorm", False)
    assert spec.submodules.self_attention.submodules.core_attention is SDPAttention
    with pytest.raises(ValueError, match="transformer-impl"):
        layer_spec("fancy", "RMSNorm", False)
