"""tools/convert_to_hf.py: transformers loads each export and its fp32 logits match ours (<= 1e-4)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers.export import (
    VOCAB,
    build_model,
    build_parallel,
    megatron_logits,
    probe_ids,
    save_model_checkpoint,
    tiny_config,
)

TOL = 1e-4

CASES = {
    # name: (cfg.model overrides, transformers class)
    "llama_gqa_kv_channels_untied": (dict(num_query_groups=2, kv_channels=24), "LlamaForCausalLM"),
    "llama_tied": (dict(untie_embeddings_and_output_weights=False), "LlamaForCausalLM"),
    "qwen3_qk_layernorm_rope_base": (dict(qk_layernorm=True, num_query_groups=2, kv_channels=32,
                                          rotary_base=500000), "Qwen3ForCausalLM"),
    "gpt2_learned_positions": (dict(normalization="LayerNorm", swiglu=False,
                                    position_embedding_type="learned_absolute"), "GPT2LMHeadModel"),
    "gpt2_untied": (dict(normalization="LayerNorm", swiglu=False, position_embedding_type="learned_absolute",
                         untie_embeddings_and_output_weights=False), "GPT2LMHeadModel"),
    "starcoder2_rope_gqa": (dict(normalization="LayerNorm", swiglu=False, num_query_groups=2, kv_channels=24,
                                 rotary_base=20000), "Starcoder2ForCausalLM"),
}


def export(tmp_path, cfg=None, model=None, load=None):
    from tools.convert_to_hf import convert, get_args

    if load is None:
        load = str(tmp_path / "ckpt")
        save_model_checkpoint(load, model, cfg)
    out = str(tmp_path / "hf")
    summary = convert(get_args(["--load", load, "--output", out]))
    return out, summary


def hf_logits(directory: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match(dist, tmp_path, name):
    overrides, target = CASES[name]
    cfg = tiny_config(**overrides)
    model = build_model(cfg)
    out, summary = export(tmp_path, cfg, model)
    assert summary["target"] == target
    ids = probe_ids()
    ours, theirs = megatron_logits(model, ids, VOCAB + 1), hf_logits(out, ids)
    assert theirs.shape == ours.shape == (*ids.shape, VOCAB + 1)  # padded rows (384 - 301) dropped
    assert (ours - theirs).abs().max() <= TOL
    assert ours.std() > 0.05  # a model whose logits vary: the comparison means something

    config = json.load(open(os.path.join(out, "config.json")))
    assert config["architectures"] == [target] and config["vocab_size"] == VOCAB + 1
    assert config["tie_word_embeddings"] is (not cfg.model.untie_embeddings_and_output_weights)
    if target != "GPT2LMHeadModel":
        assert config["head_dim"] == cfg.model.kv_channels
        assert config["rope_parameters"]["rope_theta"] == cfg.model.rotary_base
        assert config["num_key_value_heads"] == (cfg.model.num_query_groups or cfg.model.num_attention_heads)
    eps = config.get("rms_norm_eps", config.get("norm_epsilon", config.get("layer_norm_epsilon")))
    assert eps == 1e-5  # megatron's epsilon, not the HF class default
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert generation["eos_token_id"] == VOCAB and generation["do_sample"] is False
    from safetensors import safe_open

    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        embedding = next(k for k in f.keys() if k.endswith(("embed_tokens.weight", "wte.weight")))
        assert f.get_slice(embedding).get_shape() == [VOCAB + 1, cfg.model.hidden_size]


@pytest.mark.slow
@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_parallel_checkpoint(dist, tmp_path, tp, pp):
    """A checkpoint saved by a TP=2 (vocab padded to 512) or PP=2 run exports to the logits that run computes."""
    overrides = dict(num_query_groups=2, kv_channels=24)
    load = str(tmp_path / "ckpt")
    reference = build_parallel(load, tp, pp, **overrides)
    out, summary = export(tmp_path, load=load)
    assert summary["target"] == "LlamaForCausalLM"
    assert (hf_logits(out, probe_ids()) - reference).abs().max() <= TOL


@pytest.mark.parametrize("overrides, field", [
    (dict(swiglu=False), "model.swiglu"),
    (dict(normalization="LayerNorm"), "model.swiglu"),
    (dict(position_embedding_type="learned_absolute"), "model.position_embedding_type"),
    (dict(normalization="LayerNorm", swiglu=False, qk_layernorm=True), "model.qk_layernorm"),
    (dict(normalization="LayerNorm", swiglu=False, position_embedding_type="learned_absolute",
          num_query_groups=2), "model.num_query_groups"),
    (dict(normalization="LayerNorm", swiglu=False, position_embedding_type="learned_absolute",
          kv_channels=32), "model.kv_channels"),
])
def test_unsupported_config_refused(dist, tmp_path, capsys, overrides, field):
    from tools.convert_to_hf import main

    cfg = tiny_config(**overrides)
    load = str(tmp_path / "ckpt")
    save_model_checkpoint(load, build_model(cfg), cfg)
    assert main(["--load", load, "--output", str(tmp_path / "hf")]) == 3
    assert field in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hf")
