"""megatron_ixt.tokenizer: building real megatron.core tokenizers, identity, exact batch encoding (every engine)."""
from __future__ import annotations

import argparse
import io
import random

import make_corpus
import numpy as np
import pytest
import sentencepiece

from megatron_ixt.tokenizer import (
    BatchEncoder,
    add_tokenizer_args,
    build_tokenizer,
    same_tokenizer,
    tokenizer_config,
    tokenizer_identity,
)

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


def engine(tokenizer_type, model, name="auto", dtype=np.int32):
    tokenizer = build_tokenizer(tokenizer_type=tokenizer_type, tokenizer_model=model)
    cfg = tokenizer_config(tokenizer_type=tokenizer_type, tokenizer_model=model)
    return tokenizer, BatchEncoder(tokenizer, cfg, dtype, name)


@pytest.mark.parametrize("kind, engines", [
    ("sp_model", ("sentencepiece-words", "sentencepiece", "reference")),  # no byte fallback: no gigatoken
    ("sp_byte_fallback_model", ("gigatoken", "sentencepiece-words", "sentencepiece", "reference")),
    ("hf_tokenizer_dir", ("gigatoken", "reference")),
])
def test_every_engine_is_exact(kind, engines, request):
    model = request.getfixturevalue(kind)
    tokenizer_type = "HuggingFaceTokenizer" if kind == "hf_tokenizer_dir" else "SentencePieceTokenizer"
    tokenizer, auto = engine(tokenizer_type, model, dtype=np.uint16)
    auto.verify()
    assert auto.engine == engines[0] and not auto.notes == (kind != "sp_model")
    texts = TRICKY + random_texts(300) + ["control pieces as text: <s> </s> <unk>"]
    want = [tokenizer.tokenize(t) for t in texts]
    for name in engines:
        _, encoder = engine(tokenizer_type, model, name, np.uint16)
        encoder.verify(texts[:20])
        assert encoder.engine == name
        assert encoder.encode_lists(texts) == want, name
        assert encoder.encode_lists(texts) == want, name  # again (the word cache is warm now)
        tokens, lengths = encoder.encode(texts)
        assert tokens.dtype == np.uint16 and lengths.tolist() == [len(w) for w in want]
    if kind == "sp_model":
        with pytest.raises(ValueError, match="byte_fallback"):
            engine(tokenizer_type, model, "gigatoken")
        assert "gigatoken" in auto.notes[0]
    if kind == "hf_tokenizer_dir":
        assert auto.label.startswith("gigatoken 0.")
        with pytest.raises(ValueError, match="not a SentencePiece"):
            engine(tokenizer_type, model, "sentencepiece")


def test_sentencepiece_without_word_boundaries_is_not_encoded_by_words(tmp_path):
    """A model whose pieces span words cannot be encoded word by word: the encoder must notice."""
    texts = make_corpus.tokenizer_training_texts(make_corpus.generate_records(200, seed=9))
    sentences = [s for t in texts for s in t.split("\n") if s.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model,
                                             vocab_size=800, model_type="bpe", split_by_whitespace=False,
                                             hard_vocab_limit=False, minloglevel=2, num_threads=1)
    (tmp_path / "span.model").write_bytes(model.getvalue())
    tokenizer, encoder = engine("SentencePieceTokenizer", str(tmp_path / "span.model"))
    encoder.verify()
    assert encoder.engine == "sentencepiece" and "cross words" in encoder.notes[-1]
    probe = TRICKY + random_texts(50, seed=1)
    assert encoder.encode_lists(probe) == [tokenizer.tokenize(t) for t in probe]


def test_verification_falls_back_on_any_difference(disagreeing_hf_dir):
    """gigatoken reads tokenizer.json; the reference also honours tokenizer_config.json's added
    tokens: the sample shows the difference and the encoder goes back to the reference."""
    tokenizer, encoder = engine("HuggingFaceTokenizer", disagreeing_hf_dir)
    assert encoder.engine == "gigatoken"
    encoder.verify(["plain text", "a <|mark|> in the text"])
    assert encoder.engine == "reference" and "differs from the reference tokenizer on 1 of" in encoder.notes[-1]
    assert encoder.encode_lists(["a <|mark|> b"]) == [tokenizer.tokenize("a <|mark|> b")]
    _, named = engine("HuggingFaceTokenizer", disagreeing_hf_dir, "gigatoken")
    with pytest.raises(ValueError, match="gigatoken: differs"):
        named.verify(["a <|mark|> in the text"])


def test_failures_and_null_tokenizer(hf_tokenizer_dir):
    null = build_tokenizer(tokenizer_type="NullTokenizer", vocab_size=50)
    assert null.tokenize("3 1 4") == [3, 1, 4] and null.eod == 50 and null.vocab_size == 51
    assert null.detokenize([3, 1, 4]) == "3 1 4"
    encoder = BatchEncoder(null, tokenizer_config(tokenizer_type="NullTokenizer", vocab_size=50), np.uint16)
    encoder.verify()
    assert encoder.engine == "reference" and not encoder.notes  # nothing faster applies: no warning
    tokens, lengths = encoder.encode(["3 1 4", "not numbers", "7 51", "50"])  # 51 is outside the vocabulary
    assert lengths.tolist() == [3, -1, -1, 1] and tokens.tolist() == [3, 1, 4, 50]
    hf, fast = engine("HuggingFaceTokenizer", hf_tokenizer_dir)
    assert hf.detokenize(hf.tokenize("The oven bakes bread.")) == "The oven bakes bread."
    lone_surrogate = "bad \ud800 text"
    assert fast.engine == "gigatoken"
    assert fast.encode_lists(["ok", lone_surrogate, "", "fine"]) == [hf.tokenize("ok"), None, [], hf.tokenize("fine")]


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


def test_without_gigatoken_and_orjson(hf_tokenizer_dir, monkeypatch):
    """Both are optional at import: without them the next engine and json give the same results."""
    from megatron_ixt import tokenizer as tokenizer_module
    from megatron_ixt.data import record

    texts = TRICKY + random_texts(30)
    hf, fast = engine("HuggingFaceTokenizer", hf_tokenizer_dir)
    monkeypatch.setattr(tokenizer_module, "gigatoken", None)
    _, plain = engine("HuggingFaceTokenizer", hf_tokenizer_dir)
    assert (fast.engine, plain.engine) == ("gigatoken", "reference") and "not installed" in plain.notes[0]
    assert plain.encode_lists(texts) == fast.encode_lists(texts) == [hf.tokenize(t) for t in texts]
    lines = [b'{"text": "x", "n": NaN}', b'{"text": "\\ud800"}', b'{"text": 1e400, "big": 123456789012345678901234}',
             b'{"text": "ok", "ixt": {"status": "failed:http"}}', b'{"text": "trunc']
    with_orjson = [record.parse_line(line) for line in lines]
    monkeypatch.setattr(record, "orjson", None)
    assert [record.parse_line(line) for line in lines] == with_orjson
