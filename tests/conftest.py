"""Shared test fixtures: generated annotated corpora, real tokenizers trained at test time, shard sets.

Nothing is downloaded: the SentencePiece and HuggingFace tokenizers are trained here on text from
``examples/data/make_corpus.py``.

Fixtures
    write_annotated_jsonl  function(path, n_docs=60, seed=0, annotated=0.6, failed=0.1, extra_lines=(),
                      words=(40, 160)) -> list of records written: an annotated JSONL corpus (the input of
                      preprocessing; ``extra_lines`` are raw lines appended). Not to be confused with the
                      token shard sets of ``tests.helpers.training_corpus`` / ``tests.helpers.dataset``.
    sp_model          path of a SentencePiece BPE model (vocab 1024, eos=2) [session]
    sp_tokenizer      megatron.core tokenizer over ``sp_model`` [session]
    sp_byte_fallback_model  path of the same kind of model with byte fallback (what gigatoken loads) [session]
    hf_tokenizer_dir  directory of a HuggingFace fast BPE tokenizer (tokenizer.json, eos "</s>") [session]
    disagreeing_hf_dir  a copy of ``hf_tokenizer_dir`` whose tokenizer_config.json adds a special token
                      "<|mark|>" that its tokenizer.json lacks (gigatoken then disagrees with transformers)
    ixt_shard_set     ShardSetFixture: a preprocessed 200-document corpus (SentencePiece, --append-eod,
                      60% annotated, 10% failed annotations) [session]
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import make_corpus  # examples/data/make_corpus.py (pytest.ini's pythonpath)
import pytest


@dataclass
class ShardSetFixture:
    prefix: str  # the --output-prefix: P_text_document, P_critique_prefix, ... live next to it
    input: str  # the JSONL it was made from
    records: list  # the records of that JSONL, in order
    tokenizer_model: str
    tokenizer_type: str = "SentencePieceTokenizer"


def _write_annotated_jsonl(path, n_docs=60, seed=0, annotated=0.6, failed=0.1, extra_lines=(), words=(40, 160)):
    records = make_corpus.generate_records(n_docs, seed=seed, annotated=annotated, failed=failed, words=words)
    make_corpus.write_jsonl(str(path), records + list(extra_lines))
    return records


@pytest.fixture
def write_annotated_jsonl():
    """Writes a generated annotated JSONL corpus (examples/data/make_corpus; partial annotation, some
    failed) to a path."""
    return _write_annotated_jsonl


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sp")
    records = make_corpus.generate_records(400, seed=1234)
    return make_corpus.train_sentencepiece(make_corpus.tokenizer_training_texts(records),
                                           str(directory / "tok"), 1024)


@pytest.fixture(scope="session")
def sp_byte_fallback_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sp_bf")
    records = make_corpus.generate_records(400, seed=1234)
    return make_corpus.train_sentencepiece(make_corpus.tokenizer_training_texts(records),
                                           str(directory / "tok"), 1024, byte_fallback=True)


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model):
    from megatron_ixt.tokenizer import build_tokenizer

    return build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory):
    records = make_corpus.generate_records(300, seed=4321)
    return make_corpus.train_hf_bpe(make_corpus.tokenizer_training_texts(records),
                                    str(tmp_path_factory.mktemp("hf")), 800)


@pytest.fixture(scope="session")
def disagreeing_hf_dir(tmp_path_factory, hf_tokenizer_dir):
    import json
    import shutil

    from transformers import AutoTokenizer

    directory = str(tmp_path_factory.mktemp("hf_mark"))
    tokenizer = AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|mark|>"]})
    tokenizer.save_pretrained(directory)
    shutil.copy(os.path.join(hf_tokenizer_dir, "tokenizer.json"), directory)  # the one without <|mark|>
    with open(os.path.join(directory, "tokenizer_config.json")) as f:
        assert "<|mark|>" in json.dumps(json.load(f))
    return directory


@pytest.fixture(scope="session")
def ixt_shard_set(tmp_path_factory, sp_model):
    from tools.preprocess_ixt import main

    directory = tmp_path_factory.mktemp("ixt_shards")
    path = directory / "corpus.jsonl"
    records = _write_annotated_jsonl(path, n_docs=200, seed=7)
    prefix = str(directory / "corpus")
    rc = main(["--input", str(path), "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
               "--tokenizer-model", sp_model, "--append-eod", "--workers", "1"])
    assert rc == 0
    return ShardSetFixture(prefix, str(path), records, sp_model)
