"""tools/preprocess_ixt.py and megatron_ixt.preprocess end to end on real files, real tokenizers and megatron-core
readers."""
from __future__ import annotations

import contextlib
import glob
import gzip
import importlib.metadata
import json
import os
import re

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_ixt.data import prefix_kinds, shards
from megatron_ixt.data.prefix_kinds import steering_annotation
from megatron_ixt.data.record import SCORE_AXES, parse_annotation
from megatron_ixt.data.templates import load_template
from megatron_ixt.preprocess import chunks
from megatron_ixt.preprocess.encoder import ChunkEncoder, take_sequences
from megatron_ixt.preprocess.pool import encode_in_order
from megatron_ixt.tokenizer import build_tokenizer, tokenizer_identity
from tools import preprocess_ixt
from tools.preprocess_ixt import main


def run(inputs, prefix, model, *extra, tokenizer_type="SentencePieceTokenizer"):
    argv = ["--input", *map(str, inputs), "--output-prefix", str(prefix), "--tokenizer-type", tokenizer_type]
    argv += ["--tokenizer-model", str(model)] if model else []
    return main(argv + [str(e) for e in extra])


KINDS = prefix_kinds.names()  # what preprocess writes by default
STORE_NAMES = ("text",) + KINDS


def expected_documents(records, tokenizer, append_eod=True):
    """What the stores must hold for valid records: (text, critique, quality, scores) token lists."""
    templates = {kind: load_template(kind) for kind in KINDS}
    eod = [tokenizer.eod] if append_eod else []
    out = []
    for r in records:
        annotation = parse_annotation(r["ixt"])[0] if "ixt" in r else None
        prefixes = [tokenizer.tokenize(templates[k].render(annotation)) if annotation else [] for k in KINDS]
        out.append((tokenizer.tokenize(r["text"]) + eod, *prefixes))
    return out


def test_round_trip_and_alignment(tmp_path, write_annotated_jsonl, sp_model, sp_tokenizer, capsys, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 4096)  # many chunks
    records = write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=300, seed=3, words=(20, 80))
    assert run([tmp_path / "in.jsonl"], tmp_path / "out" / "c", sp_model, "--append-eod", "--workers", 2,
               "--log-interval", 100) == 0
    progress = re.findall(r"^Processed (\d+) documents \([\d.]+ docs/s, [\d.]+ MB/s, \d+ tokens/s\)",
                          capsys.readouterr().err, re.M)
    progress = [int(n) for n in progress]  # checked after each chunk
    assert len(progress) == 3 and all(100 * (k + 1) <= n < 100 * (k + 1) + 20 for k, n in enumerate(progress))
    prefix = str(tmp_path / "out" / "c")
    stores = {name: IndexedDataset(shards.store_path(prefix, name)) for name in STORE_NAMES}
    expected = expected_documents(records, sp_tokenizer)
    for name, store in stores.items():  # aligned: one sequence and one document per record
        assert len(store) == len(records)
        assert store.document_indices.tolist() == list(range(len(records) + 1))
    for i, want in enumerate(expected):
        for name, tokens in zip(STORE_NAMES, want):
            assert stores[name][i].tolist() == tokens, (i, name)
    annotated = [i for i, r in enumerate(records) if r.get("ixt", {}).get("status") == "ok"]
    assert 0 < len(annotated) < len(records)
    for kind in KINDS:
        lengths = stores[kind].sequence_lengths
        assert sorted(np.flatnonzero(lengths).tolist()) == annotated
    assert stores["text"].index.dtype == np.uint16  # vocab 1024 < 65500

    meta = shards.read_metadata(prefix)
    assert meta["version"] == 2 and meta["kinds"] == ["critique", "quality", "scores"]
    assert meta["tokenizer"] == tokenizer_identity(tokenizer_type="SentencePieceTokenizer", tokenizer_model=sp_model)
    counts = meta["counts"]
    assert counts["documents"] == len(records) and counts["annotated"] == len(annotated)
    assert counts["unannotated"] == len(records) - len(annotated) and counts["dropped"] == 0
    assert counts["text_tokens"] == sum(len(e[0]) for e in expected)
    for k, kind in enumerate(KINDS, 1):
        assert counts[f"{kind}_prefix_tokens"] == sum(len(e[k]) for e in expected) > 0
    assert counts["input_bytes"] == os.path.getsize(tmp_path / "in.jsonl") - len(records)  # minus newlines
    qualities = [records[i]["ixt"]["quality"] for i in annotated]
    assert meta["quality_histogram"] == {str(q): qualities.count(q) for q in range(1, 6)}
    for axis in SCORE_AXES:
        assert meta["score_means"][axis] == pytest.approx(
            np.mean([records[i]["ixt"]["scores"][axis] for i in annotated]), abs=1e-4)
    statuses = [r["ixt"]["status"] if "ixt" in r else "missing" for r in records]
    assert meta["annotation_status"] == {s: statuses.count(s) for s in set(statuses)}
    for kind in KINDS:
        steering = load_template(kind).render(steering_annotation())
        assert meta["steering"][kind] == {"text": steering, "tokens": sp_tokenizer.tokenize(steering)}
        assert meta["templates"][kind] == load_template(kind).identity()

    reader = shards.ShardSet(prefix)
    assert reader.docs["line"].tolist() == list(range(1, len(records) + 1))
    assert reader.docs["quality"].tolist() == [r["ixt"]["quality"] if i in annotated else 0
                                               for i, r in enumerate(records)]
    assert (reader.docs["scores"][annotated[0]].tolist()
            == [records[annotated[0]]["ixt"]["scores"][a] for a in SCORE_AXES])


def _files(prefix):
    return sorted(glob.glob(str(prefix) + "_*"))


def test_deterministic_across_worker_counts(tmp_path, write_annotated_jsonl, sp_model, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8192)
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=300, seed=5, words=(10, 40))
    outputs = {}
    for workers in (1, 2, 3):
        prefix = tmp_path / f"w{workers}" / "c"
        assert run([tmp_path / "in.jsonl"], prefix, sp_model, "--append-eod", "--workers", workers) == 0
        outputs[workers] = {os.path.basename(f): open(f, "rb").read() for f in _files(prefix)}
    assert len(outputs[1]) == 10  # 4 stores (text, critique, quality, scores) x (bin, idx) + docs table + metadata
    assert outputs[1] == outputs[2] == outputs[3]


def test_no_append_eod_and_compressed_globbed_inputs(tmp_path, write_annotated_jsonl, sp_model, sp_tokenizer):
    import zstandard

    a = write_annotated_jsonl(tmp_path / "a.jsonl", n_docs=15, seed=11)
    b = write_annotated_jsonl(tmp_path / "b.jsonl", n_docs=12, seed=12)
    c = write_annotated_jsonl(tmp_path / "c.jsonl", n_docs=9, seed=13)
    (tmp_path / "parts").mkdir()
    with gzip.open(tmp_path / "parts" / "x1.jsonl.gz", "wb") as g:
        g.write((tmp_path / "a.jsonl").read_bytes())
    (tmp_path / "parts" / "x2.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress((tmp_path / "b.jsonl").read_bytes()))
    prefix = tmp_path / "out"
    assert run([tmp_path / "parts" / "x*.jsonl.*", tmp_path / "c.jsonl"], prefix, sp_model) == 0
    text = IndexedDataset(shards.text_store_path(str(prefix)))
    expected = expected_documents(a + b + c, sp_tokenizer, append_eod=False)
    assert [text[i].tolist() for i in range(len(text))] == [e[0] for e in expected]
    meta = shards.read_metadata(str(prefix))
    assert [os.path.basename(i["path"]) for i in meta["inputs"]] == ["x1.jsonl.gz", "x2.jsonl.zst", "c.jsonl"]
    assert meta["append_eod"] is False
    docs = shards.ShardSet(str(prefix)).docs
    assert docs["file"].tolist() == [0] * 15 + [1] * 12 + [2] * 9


def test_text_only_is_the_same_text_store(tmp_path, write_annotated_jsonl, sp_model):
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=40, seed=2)
    assert run([tmp_path / "in.jsonl"], tmp_path / "full", sp_model, "--append-eod") == 0
    assert run([tmp_path / "in.jsonl"], tmp_path / "full", sp_model, "--append-eod") == 0
    assert run([tmp_path / "in.jsonl"], tmp_path / "plain", sp_model, "--append-eod", "--text-only") == 0
    assert [os.path.basename(f) for f in _files(tmp_path / "plain")] == ["plain_text_document.bin",
                                                                       "plain_text_document.idx"]
    for ext in (".bin", ".idx"):
        assert open(f"{tmp_path}/plain_text_document{ext}", "rb").read() == \
            open(f"{tmp_path}/full_text_document{ext}", "rb").read()
    # --text-only over an existing IXT shard set leaves no stale prefix stores or metadata behind
    assert run([tmp_path / "in.jsonl"], tmp_path / "full", sp_model, "--append-eod", "--text-only") == 0
    assert [os.path.basename(f) for f in _files(tmp_path / "full")] == ["full_text_document.bin",
                                                                      "full_text_document.idx"]


def test_huggingface_tokenizer(tmp_path, write_annotated_jsonl, hf_tokenizer_dir):
    records = write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=30, seed=4)
    prefix = tmp_path / "hf"
    assert run([tmp_path / "in.jsonl"], prefix, hf_tokenizer_dir, "--append-eod", "--workers", 2,
               tokenizer_type="HuggingFaceTokenizer") == 0
    tokenizer = build_tokenizer(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=hf_tokenizer_dir)
    assert tokenizer.eod == 2  # "</s>"
    expected = expected_documents(records, tokenizer)
    reader = shards.ShardSet(str(prefix))
    for i, want in enumerate(expected):
        assert [reader[i][name].tolist() for name in STORE_NAMES] == list(want)
    assert tokenizer.detokenize(reader[0]["text"][:-1].tolist()) == records[0]["text"]
    meta = reader.metadata
    assert meta["tokenizer"]["type"] == "HuggingFaceTokenizer" and meta["tokenizer"]["eod"] == 2


def test_null_tokenizer_with_numeric_templates(tmp_path):
    (tmp_path / "q.txt").write_text("{quality}\n")
    (tmp_path / "c.txt").write_text("{quality} {writing_style} {expertise} {critique}\n")
    (tmp_path / "s.txt").write_text("{educational_value} {efficiency}\n")
    ok = {"status": "ok", "quality": 4, "scores": dict.fromkeys(SCORE_AXES, 3), "critique": "17"}
    lines = [{"text": "5 6 7"}, {"text": "1 2", "ixt": ok}, {"text": "9", "ixt": {**ok, "critique": "too wordy"}},
             {"text": "3 x 4"}, {"text": "1 200"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    prefix = str(tmp_path / "null")
    rc = run([tmp_path / "in.jsonl"], prefix, None, "--vocab-size", 100, "--append-eod", "--critique-template",
             tmp_path / "c.txt", "--quality-template", tmp_path / "q.txt", "--scores-template", tmp_path / "s.txt",
             "--steering-critique", "99",
             tokenizer_type="NullTokenizer")
    assert rc == 0
    reader = shards.ShardSet(prefix)
    assert [reader[i]["text"].tolist() for i in range(len(reader))] == [[5, 6, 7, 100], [1, 2, 100], [9, 100]]
    assert reader[1]["critique"].tolist() == [4, 3, 3, 17] and reader[1]["quality"].tolist() == [4]
    assert reader[1]["scores"].tolist() == [3, 3] and reader[2]["scores"].tolist() == []
    assert reader[2]["critique"].tolist() == [] and reader[2]["quality"].tolist() == []  # degraded, text kept
    assert reader.metadata["skipped"]["prefix_untokenizable"] == 1
    assert reader.metadata["skipped"]["text_untokenizable"] == 2  # "x" and id 200 >= vocab
    assert reader.metadata["steering"]["quality"]["tokens"] == [5]
    assert reader.metadata["steering"]["critique"]["tokens"] == [5, 5, 5, 99]
    assert reader.metadata["steering"]["scores"]["tokens"] == [5, 5]


def test_null_tokenizer_refuses_text_templates(tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text('{"text": "1 2"}\n')
    rc = run([tmp_path / "in.jsonl"], tmp_path / "n", None, "--vocab-size", 10, tokenizer_type="NullTokenizer")
    assert rc == 1
    assert "cannot tokenize the critique template 'critique_v1'" in capsys.readouterr().err
    assert _files(tmp_path / "n") == []


def test_missing_input_and_bad_flags(tmp_path, sp_model, capsys):
    assert run([tmp_path / "nope*.jsonl"], tmp_path / "o", sp_model) == 1
    assert "nope*.jsonl': matches no file" in capsys.readouterr().err
    assert run([tmp_path / "nope.jsonl"], tmp_path / "o", sp_model) == 1
    assert "nope.jsonl': no such file" in capsys.readouterr().err
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    assert run([tmp_path / "in.jsonl"], tmp_path / "o", sp_model, "--critique-template", "critique_v9") == 1
    assert "no built-in template of that name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run([tmp_path / "in.jsonl"], tmp_path / "o", sp_model, "--json-keys", "text", "title")


def _outputs(prefix):
    """Every file of a shard set, P_ixt.json without its tokenizer_engines entry."""
    out = {os.path.basename(f)[len(os.path.basename(str(prefix))):]: open(f, "rb").read() for f in _files(prefix)}
    meta = json.loads(out.pop("_ixt.json"))
    return out, meta.pop("tokenizer_engines"), meta


@pytest.mark.parametrize("kind", ["hf_tokenizer_dir", "sp_byte_fallback_model"])
def test_same_bytes_with_any_engine_and_workers(tmp_path, write_annotated_jsonl, kind, request, capsys, monkeypatch):
    monkeypatch.setattr(chunks, "CHUNK_BYTES", 8192)
    model = request.getfixturevalue(kind)
    tokenizer_type = "HuggingFaceTokenizer" if kind == "hf_tokenizer_dir" else "SentencePieceTokenizer"
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=200, seed=8, words=(10, 40),
                 extra_lines=['{"text": "control pieces in text: <s> </s> <unk>"}'])
    runs = {"auto-1": ("auto", 1), "auto-2": ("auto", 2), "reference-1": ("reference", 1)}
    if tokenizer_type == "SentencePieceTokenizer":
        runs["words-2"] = ("sentencepiece-words", 2)
    outputs = {}
    for name, (engine, workers) in runs.items():
        prefix = tmp_path / name / "c"
        assert run([tmp_path / "in.jsonl"], prefix, model, "--append-eod", "--workers", workers,
                   "--tokenizer-engine", engine, tokenizer_type=tokenizer_type) == 0
        outputs[name] = _outputs(prefix)
    assert "tokenizer engine: gigatoken 0." in capsys.readouterr().err
    assert outputs["auto-1"][1] == outputs["auto-2"][1] == [f"gigatoken {importlib.metadata.version('gigatoken')}"]
    assert outputs["reference-1"][1] == ["reference"]
    first = outputs["auto-1"]
    assert len(first[0]) == 9  # 4 stores (text, critique, quality, scores) x (bin, idx) + docs table
    for name, out in outputs.items():
        assert out[0] == first[0] and out[2] == first[2], name


@pytest.mark.parametrize("workers", [1, 2])
def test_verification_difference_falls_back_with_a_warning(tmp_path, write_annotated_jsonl, disagreeing_hf_dir, capsys,
                                                           workers):
    """With workers, verification runs while they encode the first chunks with the engine it then
    rejects: those are encoded again, with the reference."""
    records = write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=20, seed=6,
                                    extra_lines=['{"text": "a <|mark|> here"}'])
    prefix = tmp_path / "m"
    assert run([tmp_path / "in.jsonl"], prefix, disagreeing_hf_dir, "--append-eod", "--workers", workers,
               tokenizer_type="HuggingFaceTokenizer") == 0
    err = capsys.readouterr().err
    assert "warning: tokenizer engine gigatoken: differs from the reference tokenizer" in err
    assert "tokenizer engine: reference" in err
    reader = shards.ShardSet(str(prefix))
    assert reader.metadata["tokenizer_engines"] == ["reference"]
    tokenizer = build_tokenizer(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=disagreeing_hf_dir)
    assert reader[len(records)]["text"].tolist() == tokenizer.tokenize("a <|mark|> here") + [tokenizer.eod]
    assert run([tmp_path / "in.jsonl"], tmp_path / "g", disagreeing_hf_dir, "--tokenizer-engine", "gigatoken",
               "--workers", workers, tokenizer_type="HuggingFaceTokenizer") == 1
    assert "error: gigatoken: differs" in capsys.readouterr().err and not _files(tmp_path / "g")
    assert not glob.glob(str(tmp_path / ".preprocess_ixt-*"))  # the workers' scratch directories are gone


def test_chunk_encoder_pickles_as_its_fields_and_engine(tmp_path, write_annotated_jsonl, hf_tokenizer_dir):
    """What a spawned (not forked) worker receives: the encoder's fields and the engine the run verified."""
    import pickle

    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=20, seed=9)
    args = preprocess_ixt.get_args(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "o"),
                                    "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                                    hf_tokenizer_dir, "--append-eod"])
    config = preprocess_ixt.config_from_args(args)
    encoder = ChunkEncoder(config.tokenizer, config.prefix_templates(), text_key=config.text_key,
                           append_eod=config.append_eod, engine="reference")
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy.encoder.engine == "reference" and copy.__getstate__() == encoder.__getstate__()
    assert copy.templates.keys() == set(KINDS) and copy.append_eod and copy.config.tokenizer_model == hf_tokenizer_dir
    chunk = next(chunks.read_chunks([str(tmp_path / "in.jsonl")], "text"))
    a, b = encoder(chunk), copy(chunk)
    assert all(np.array_equal(a.tokens[k], b.tokens[k]) for k in a.tokens) and a.lengths == b.lengths


def test_take_sequences_gathers_repeats_and_failures():
    """Sequences [1, 2], (failed), [3], [] taken as 2, 0, 1, 0, 3: failed ones give no tokens and keep -1."""
    tokens, lengths = np.array([1, 2, 3], np.uint16), np.array([2, -1, 1, 0])
    taken, taken_lengths = take_sequences(tokens, lengths, np.array([2, 0, 1, 0, 3]))
    assert taken.tolist() == [3, 1, 2, 1, 2] and taken.dtype == np.uint16
    assert taken_lengths.tolist() == [1, 2, -1, 2, 0]
    none, none_lengths = take_sequences(tokens, lengths, np.zeros(0, np.int64))
    assert none.tolist() == [] and none_lengths.tolist() == []


@pytest.mark.parametrize("workers", [2, 3])
def test_this_process_encodes_while_the_workers_are_busy(tmp_path, write_annotated_jsonl, sp_model, monkeypatch,
                                                         workers):
    """With --workers N, N-1 worker processes and this one encode; results come back in input order
    whoever encoded them, with every input line counted once, and no worker is left running."""
    import multiprocessing
    import time

    monkeypatch.setattr(chunks, "CHUNK_BYTES", 4096)
    write_annotated_jsonl(tmp_path / "in.jsonl", n_docs=200, seed=3, words=(10, 30))
    args = preprocess_ixt.get_args(["--input", str(tmp_path / "in.jsonl"), "--output-prefix", str(tmp_path / "o"),
                                    "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model,
                                    "--workers", str(workers)])
    main_process, original = os.getpid(), ChunkEncoder.__call__

    def tagged_call(self, chunk):  # a slow worker, so that this process has chunks to take
        if os.getpid() != main_process:
            time.sleep(0.05)
        result = original(self, chunk)
        result.counts.update(offset=chunk.offset, by_this_process=os.getpid() == main_process)
        return result

    monkeypatch.setattr(ChunkEncoder, "__call__", tagged_call)
    config = preprocess_ixt.config_from_args(args)
    encoder = ChunkEncoder(config.tokenizer, config.prefix_templates())
    tasks = list(chunks.read_chunks(config.inputs, config.text_key))
    children_before = set(multiprocessing.active_children())  # e.g. other tests' managers
    with contextlib.ExitStack() as cleanup:
        results = list(encode_in_order(encoder, workers, tasks, lambda: None, str(tmp_path), cleanup))
    assert [r.counts["offset"] for r in results] == [c.offset for c in tasks]
    here = sum(r.counts["by_this_process"] for r in results)
    assert 0 < here < len(tasks)  # both this process and the workers encoded
    assert sum(r.lines for r in results) == len((tmp_path / "in.jsonl").read_bytes().rstrip(b"\n").split(b"\n"))
    assert set(multiprocessing.active_children()) <= children_before  # the workers have exited
    assert not glob.glob(str(tmp_path / ".preprocess_ixt-*"))
