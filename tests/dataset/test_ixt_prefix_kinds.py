"""The prefix-kind registry as a seam: a kind registered at runtime (here, in the test only) goes through
tools/preprocess_ixt.py and the IXT dataset with no other module edited; shard sets written before a
kind existed (without ``scores``, or in format version 1) keep loading."""
import json
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_ixt.data import prefix_kinds, shards
from megatron_ixt.data.dataset import IXTGPTDataset, IXTGPTDatasetConfig
from megatron_ixt.data.prefix_kinds import QUALITY_LABELS, PrefixKind
from megatron_ixt.data.provider import steering_prefix
from megatron_ixt.data.record import parse_annotation
from tests.helpers.dataset import build_dataset, token_stream
from tools import merge_ixt
from tools.preprocess_ixt import get_args
from tools.preprocess_ixt import main as preprocess


@pytest.fixture
def expertise_kind(tmp_path):
    """A new kind, registered for this test only: the expertise axis as a word, from a template file."""
    template = tmp_path / "expertise_v1.txt"
    template.write_text("Expertise: {expertise_label}.\n")
    kind = prefix_kinds.register(PrefixKind(
        "expertise", str(template), "the expertise axis as a word",
        fields=lambda annotation: {"expertise_label": QUALITY_LABELS[annotation.scores["expertise"]]},
        field_names=("expertise_label",)))
    yield kind
    del prefix_kinds.KINDS["expertise"]


def run_preprocess(records_path, stem, sp_model, *extra):
    return preprocess(["--input", str(records_path), "--output-prefix", str(stem), "--tokenizer-type",
                       "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--append-eod", *map(str, extra)])


def dataset_over(text_path, tokenizer, cache, **options):
    text = IndexedDataset(text_path)
    config = IXTGPTDatasetConfig(random_seed=3, sequence_length=96, tokenizer=tokenizer, reset_position_ids=False,
                                 reset_attention_mask=False, eod_mask_loss=False, split="100,0,0",
                                 drop_last_partial_validation_sequence=False, path_to_cache=str(cache), **options)
    return IXTGPTDataset(text, text_path, np.arange(len(text), dtype=np.int32), None, Split.valid, config)


def test_runtime_kind_through_preprocess_and_dataset(expertise_kind, tmp_path, write_annotated_jsonl, sp_model,
                                                     sp_tokenizer):
    args = get_args(["--input", "x", "--output-prefix", "y", "--tokenizer-type", "NullTokenizer",
                     "--expertise-template", "my.txt"])  # a flag of its own
    assert args.expertise_template == "my.txt" and args.prefix_kinds[-1] == "expertise"
    records = write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=50, seed=9)
    stem = str(tmp_path / "set")
    assert run_preprocess(tmp_path / "in.jsonl", stem, sp_model, "--workers", 2) == 0

    reader = shards.ShardSet(stem)
    assert reader.kinds == ("critique", "quality", "scores", "expertise")
    annotations = [parse_annotation(r["ixt"])[0] if "ixt" in r else None for r in records]
    for i, annotation in enumerate(annotations):
        want = f"Expertise: {QUALITY_LABELS[annotation.scores['expertise']]}.\n" if annotation else None
        assert reader[i]["expertise"].tolist() == (sp_tokenizer.tokenize(want) if want else [])
    meta = reader.metadata
    assert meta["templates"]["expertise"]["name"] == expertise_kind.default_template
    assert meta["steering"]["expertise"]["text"] == "Expertise: excellent.\n"
    assert meta["counts"]["expertise_prefix_tokens"] == int(reader.store("expertise").sequence_lengths.sum()) > 0

    # the dataset: every document once, right after its own expertise prefix
    text_path = shards.text_store_path(stem)
    dataset = dataset_over(text_path, sp_tokenizer, tmp_path / "cache", prefix_kind="expertise")
    expected = {tuple(reader[i]["expertise"].tolist() + reader[i]["text"].tolist()): i for i in range(len(reader))}
    stream = token_stream(dataset)
    ends = np.flatnonzero(stream == sp_tokenizer.eod)
    found = [expected.get(tuple(c.tolist())) for c in np.split(stream, ends + 1)[:-1]]
    assert sorted(found) == list(range(len(reader)))

    # steering at any level, rendered from the template recorded in P_ixt.json
    assert steering_prefix([text_path], "expertise") == tuple(meta["steering"]["expertise"]["tokens"])
    low = steering_prefix([text_path], "expertise", 1, tokenizer=sp_tokenizer)
    assert list(low) == sp_tokenizer.tokenize("Expertise: very poor.\n")


def test_set_without_scores_keeps_loading(make_shard_set, config):
    """A set holding only critique and quality (as every set written before ``scores`` existed)."""
    corpus = make_shard_set(num_documents=120)
    stem = shards.shard_set_stem(corpus.path)
    assert shards.ShardSet(stem).kinds == ("critique", "quality")
    dataset = build_dataset(corpus, config(prefix_kind="quality"))
    assert any(s["prefix_mask"].any() for s in (dataset[i] for i in range(len(dataset))))
    with pytest.raises(FileNotFoundError, match=r"holds the prefix kinds \['critique', 'quality'\], not 'scores'"):
        build_dataset(corpus, config(prefix_kind="scores"))
    with pytest.raises(ValueError, match="not 'scores'"):
        steering_prefix([corpus.path], "scores")


def test_format_version_1_keeps_loading(tmp_path, write_annotated_jsonl, sp_model, sp_tokenizer):
    """A version-1 P_ixt.json (no ``kinds``; critique and quality stores) reads, trains and merges."""
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=30, seed=4)
    stems = [str(tmp_path / name) for name in ("old1", "old2")]
    for stem in stems:
        assert run_preprocess(tmp_path / "in.jsonl", stem, sp_model, "--prefix-kinds", "quality", "critique") == 0
        path = shards.metadata_path(stem)
        meta = json.load(open(path))
        assert meta["kinds"] == ["critique", "quality"]  # registry order, whatever the order given
        assert "scores_prefix_tokens" not in meta["counts"]
        del meta["kinds"]
        meta["version"] = 1
        json.dump(meta, open(path, "w"))
        assert not os.path.exists(shards.prefix_store_path(stem, "scores") + ".bin")
    reader = shards.ShardSet(stems[0])
    assert reader.kinds == ("critique", "quality") and reader.metadata["version"] == 1
    dataset = dataset_over(shards.text_store_path(stems[0]), sp_tokenizer, tmp_path / "cache", prefix_kind="critique")
    assert len(dataset) > 0 and any(dataset[i]["prefix_mask"].any() for i in range(len(dataset)))
    assert merge_ixt.main(["--input", *stems, "--output-prefix", str(tmp_path / "merged")]) == 0
    merged = shards.ShardSet(str(tmp_path / "merged"))
    assert merged.metadata["version"] == 2 and merged.kinds == ("critique", "quality")
    assert len(merged) == 2 * len(reader)
