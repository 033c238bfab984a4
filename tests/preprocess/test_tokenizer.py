"""megatron_ixt.tokenizer: building real megatron.core tokenizers, identity, exact batch encoding."""
from __future__ import annotations

import argparse
import io
import random

import numpy
import pytest
import sentencepiece

import make_corpus
from megatron_ixt.tokenizer import (BatchEncoder, add_tokenizer_args, build_tokenizer, same_tokenizer,
                                    tokenizer_identity)

TRICKY = ["Hello  world.\nSecond\tline ", "  padded  ", "ｆｕｌｌ-width ＡＢＣ and ① ligature ﬁ", "a\u2581b ▁ c",
          "café über naïve Ωμέγα дом 東京 😀👍", "numbers 3.14159 1,000,000 -42 1e10", "x", "tabs\t\tand\r\nCRLF",
          "zero\u200bwidth and soft\u00adhyphen", "quotes “like” ‘this’ — dash … ellipsis", "UPPER lower MiXeD"]


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Generated documents plus random unicode soup (control chars, spaces, rare scripts)."""
    rng = random.Random(seed)
    texts = [r["text"] for r in make_corpus.generate_records(n, seed=seed, words=(5, 60))]
    alphabet = "abc XYZ  \n\t.,;!?0123456789éüßçøΩж中文😀\u2581\u00a0\u3000\u200b-_/\\\"'()[]{}"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(n)]
    return texts


def test_sentencepiece_word_cache_is_exact(sp_tokenizer):
    encoder = BatchEncoder(sp_tokenizer, numpy.uint16)
    assert encoder.mode == "words"
    texts = TRICKY + random_texts(300)
    assert encoder.encode(texts) == [sp_tokenizer.tokenize(t) for t in texts]
    again = encoder.encode(texts)  # now from the cache
    assert again == [sp_tokenizer.tokenize(t) for t in texts]
    assert [numpy.frombuffer(b, numpy.uint16).tolist() for b in encoder.encode_bytes(texts)] == again
    assert BatchEncoder(sp_tokenizer, word_cache=False).mode == "batch"
    assert BatchEncoder(sp_tokenizer, word_cache=False).encode(texts) == again


def test_sentencepiece_without_word_boundaries_falls_back(tmp_path):
    """A model whose pieces span words cannot be encoded word by word: the encoder must notice."""
    texts = make_corpus.tokenizer_training_texts(make_corpus.generate_records(200, seed=9))
    sentences = [s for t in texts for s in t.split("\n") if s.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                             vocab_size=800, model_type="bpe", split_by_whitespace=False,
                                             hard_vocab_limit=False, minloglevel=2, num_threads=1)
    (tmp_path / "span.model").write_bytes(model.getvalue())
    tokenizer = build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(tmp_path / "span.model"))
    encoder = BatchEncoder(tokenizer)
    assert encoder.mode == "batch"
    probe = TRICKY + random_texts(50, seed=1)
    assert encoder.encode(probe) == [tokenizer.tokenize(t) for t in probe]


def test_huggingface_and_null(hf_tokenizer_dir):
    hf = build_tokenizer(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=hf_tokenizer_dir)
    encoder = BatchEncoder(hf)
    assert encoder.mode == "per-text"
    texts = TRICKY[:3] + random_texts(20)
    assert encoder.encode(texts) == [hf.tokenize(t) for t in texts]
    assert hf.detokenize(hf.tokenize("The oven bakes bread.")) == "The oven bakes bread."
    null = build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=50)
    assert null.tokenize("3 1 4") == [3, 1, 4] and null.eod == 50 and null.vocab_size == 51
    assert null.detokenize([3, 1, 4]) == "3 1 4"


def test_flags_identity_and_errors(sp_model, hf_tokenizer_dir, tmp_path):
    parser = add_tokenizer_args(argparse.ArgumentParser())
    args = parser.parse_args(["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model])
    identity = tokenizer_identity(args)
    tokenizer = build_tokenizer(args)
    assert identity["type"] == "SentencePieceTokenizer" and identity["vocab_size"] == tokenizer.vocab_size == 1024
    assert identity["eod"] == tokenizer.eod == 2 and len(identity["model_sha256"]) == 64
    copy = tmp_path / "renamed.model"
    copy.write_bytes(open(sp_model, "rb").read())
    other = tokenizer_identity(tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(copy))
    assert other["model"] == "renamed.model" and same_tokenizer(identity, other)
    hf = tokenizer_identity({"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": hf_tokenizer_dir})
    assert not same_tokenizer(identity, hf)
    with pytest.raises(ValueError, match="does not exist"):
        build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="needs --vocab-size"):
        build_tokenizer(tokenizer_type="NullTokenizer")
    with pytest.raises(SystemExit):
        parser.parse_args(["--tokenizer-type", "GPT2BPETokenizer"])
