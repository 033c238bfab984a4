"""The exported tokenizer encodes exactly like ours; ixt_steering.json carries the shard set's prefixes."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers.export import build_model, save_model_checkpoint, tiny_config


def export_with(tmp_path, tok_cfg, data_path=()):
    from tools.convert_to_hf import convert, get_args

    cfg = tiny_config(tokenizer=tok_cfg, data_path=data_path)
    load, out = str(tmp_path / "ckpt"), str(tmp_path / "hf")
    save_model_checkpoint(load, build_model(cfg), cfg)
    return out, convert(get_args(["--load", load, "--output", out]))


def test_sentencepiece_export_and_steering(dist, tmp_path, ixt_shard_set, sp_tokenizer):
    from transformers import AutoTokenizer

    from megatron_ixt.data.provider import steering_prefix
    from megatron_ixt.data.shards import read_metadata, text_store_path
    from megatron_ixt.export.steering import steering_tokens
    from megatron_ixt.tokenizer import TokenizerConfig

    tok_cfg = TokenizerConfig("SentencePieceTokenizer", ixt_shard_set.tokenizer_model)
    out, summary = export_with(tmp_path, tok_cfg, [text_store_path(ixt_shard_set.prefix)])
    hf_tok = AutoTokenizer.from_pretrained(out)
    texts = [r["text"] for r in ixt_shard_set.records[:80]] + ["special-token names as text: <s> </s> <unk>"]
    assert [hf_tok.encode(t, add_special_tokens=False) for t in texts] == [sp_tokenizer.tokenize(t) for t in texts]
    assert hf_tok.eos_token_id == sp_tokenizer.eod

    metadata = read_metadata(ixt_shard_set.prefix)
    paths = [text_store_path(ixt_shard_set.prefix)]
    table = json.load(open(os.path.join(out, "ixt_steering.json")))
    levels = ["1", "2", "3", "4", "5"]
    assert summary["steering"] == {kind: levels for kind in metadata["kinds"]} and len(metadata["kinds"]) >= 2
    for kind in metadata["kinds"]:
        top = table["kinds"][kind]["5"]
        assert top == {"text": metadata["steering"][kind]["text"], "tokens": metadata["steering"][kind]["tokens"]}
        assert steering_tokens(out, kind) == steering_tokens(out, f"{kind}:5") == top["tokens"]
        for level in levels:
            entry = table["kinds"][kind][level]
            assert hf_tok.encode(entry["text"], add_special_tokens=False) == entry["tokens"]
            assert entry["tokens"] == list(steering_prefix(paths, kind, int(level), tokenizer=sp_tokenizer))
        assert table["kinds"][kind]["1"]["tokens"] != top["tokens"]
    assert steering_tokens(out, "none") == []
    with pytest.raises(ValueError, match="quality:5"):
        steering_tokens(out, "nokind:5")


def test_huggingface_tokenizer_passes_through(dist, tmp_path, hf_tokenizer_dir):
    from transformers import AutoTokenizer

    from megatron_ixt.tokenizer import TokenizerConfig, build_tokenizer

    tok_cfg = TokenizerConfig("HuggingFaceTokenizer", hf_tokenizer_dir)
    out, summary = export_with(tmp_path, tok_cfg)
    ours, hf_tok = build_tokenizer(tok_cfg), AutoTokenizer.from_pretrained(out)
    text = "Question: what is 12 + 30?\nAnswer: 42.  Two spaces."
    assert hf_tok.encode(text, add_special_tokens=False) == ours.tokenize(text)
    assert summary["steering"] == {}
    assert json.load(open(os.path.join(out, "ixt_steering.json")))["kinds"] == {}


def test_null_tokenizer_export(dist, tmp_path):
    from transformers import AutoTokenizer

    out, _ = export_with(tmp_path, None)
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode("5 17  299 300", add_special_tokens=False) == [5, 17, 299, 300]
    assert hf_tok.decode([5, 17, 300]) == "5 17 300" and hf_tok.eos_token_id == 300


def test_mismatching_tokenizer_refused(sp_tokenizer, hf_tokenizer_dir):
    from transformers import AutoTokenizer

    from megatron_ixt.export.hf import ExportError
    from megatron_ixt.export.tokenizer import PROBE_TEXTS, check_same_encoding

    other = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    with pytest.raises(ExportError, match="encodes .* differently"):
        check_same_encoding(other, sp_tokenizer, PROBE_TEXTS, "tok.model")
