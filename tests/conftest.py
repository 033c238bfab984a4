"""Shared test fixtures: generated annotated corpora, real tokenizers trained at test time, shard sets.

Nothing is downloaded: the SentencePiece and HuggingFace tokenizers are trained here on text from
``examples/data/make_corpus.py``.

Fixtures
    write_corpus      function(path, n_docs=60, seed=0, annotated=0.6, failed=0.1, extra_lines=())
                      -> list of records written (JSONL; ``extra_lines`` are raw lines appended)
    sp_model          path of a SentencePiece BPE model (vocab 1024, eos=2) [session]
    sp_tokenizer      megatron.core tokenizer over ``sp_model`` [session]
    hf_tokenizer_dir  directory of a HuggingFace fast BPE tokenizer (tokenizer.json, eos "</s>") [session]
    ixt_shard_set     ShardSetFixture: a preprocessed 200-document corpus (SentencePiece, --append-eod,
                      60% annotated, 10% failed annotations) [session]
"""
from __future__ import annotations

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


def _write_corpus(path, n_docs=60, seed=0, annotated=0.6, failed=0.1, extra_lines=(), words=(40, 160)):
    records = make_corpus.generate_records(n_docs, seed=seed, annotated=annotated, failed=failed, words=words)
    make_corpus.write_jsonl(str(path), records + list(extra_lines))
    return records


@pytest.fixture
def write_corpus():
    """Writes a generated annotated corpus (partial annotation, some failed) to a path."""
    return _write_corpus


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sp")
    records = make_corpus.generate_records(400, seed=1234)
    return make_corpus.train_sentencepiece(make_corpus.tokenizer_training_texts(records),
                                           str(directory / "tok"), 1024)


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model):
    from megatron_ixt.tokenizer import build_tokenizer

    return build_tokenizer(tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("hf")
    records = make_corpus.generate_records(300, seed=4321)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(make_corpus.tokenizer_training_texts(records), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def ixt_shard_set(tmp_path_factory, sp_model):
    from tools.preprocess_ixt import main

    directory = tmp_path_factory.mktemp("ixt_shards")
    path = directory / "corpus.jsonl"
    records = _write_corpus(path, n_docs=200, seed=7)
    prefix = str(directory / "corpus")
    rc = main(["--input", str(path), "--output-prefix", prefix, "--tokenizer-type", "SentencePieceTokenizer",
               "--tokenizer-model", sp_model, "--append-eod", "--workers", "1"])
    assert rc == 0
    return ShardSetFixture(prefix, str(path), records, sp_model)
