"""tools/merge_ixt.py and tools/inspect_ixt.py on real shard sets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_ixt.data import shards
from tools import inspect_ixt, merge_ixt
from tools.preprocess_ixt import main as preprocess


def make_set(tmp_path, name, model, write_jsonl, seed, n_docs, *extra, tokenizer_type="SentencePieceTokenizer"):
    records = write_jsonl(tmp_path / f"{name}.jsonl", n_docs=n_docs, seed=seed)
    assert preprocess(["--input", str(tmp_path / f"{name}.jsonl"), "--output-prefix", str(tmp_path / name),
                       "--tokenizer-type", tokenizer_type, "--tokenizer-model", model, "--append-eod",
                       *map(str, extra)]) == 0
    return str(tmp_path / name), records


def test_merge_concatenates_all_stores_consistently(tmp_path, sp_model, write_annotated_jsonl):
    a, ra = make_set(tmp_path, "a", sp_model, write_annotated_jsonl, 1, 25)
    b, rb = make_set(tmp_path, "b", sp_model, write_annotated_jsonl, 2, 30)
    c, rc = make_set(tmp_path, "c", sp_model, write_annotated_jsonl, 3, 10)
    assert merge_ixt.main(["--input", a, b + "_ixt.json", c + "_text_document", "--output-prefix",
                           str(tmp_path / "new_dir" / "m")]) == 0
    merged = shards.ShardSet(str(tmp_path / "new_dir" / "m"))
    parts = [shards.ShardSet(p) for p in (a, b, c)]
    assert len(merged) == 65
    got = [merged[i] for i in range(len(merged))]
    want = [part[i] for part in parts for i in range(len(part))]
    for g, w in zip(got, want):
        assert list(g) == ["text", "critique", "quality", "scores"] == list(w)
        for name in g:
            assert g[name].tolist() == w[name].tolist()
    meta = merged.metadata
    for key in ("documents", "annotated", "text_tokens", "critique_prefix_tokens", "quality_prefix_tokens",
                "scores_prefix_tokens"):
        assert meta["counts"][key] == sum(p.metadata["counts"][key] for p in parts)
    assert meta["steering"] == parts[0].metadata["steering"] and meta["tokenizer"] == parts[0].metadata["tokenizer"]
    assert meta["kinds"] == parts[0].metadata["kinds"] and meta["merged_from"] == [a, b, c]
    assert meta["quality_histogram"] == {q: sum(p.metadata["quality_histogram"][q] for p in parts) for q in "12345"}
    scores = [r["ixt"]["scores"]["expertise"] for r in ra + rb + rc if r.get("ixt", {}).get("status") == "ok"]
    assert meta["score_means"]["expertise"] == pytest.approx(np.mean(scores), abs=1e-4)
    # provenance survives: file indices point into the merged inputs list
    assert [meta["inputs"][f]["path"] for f in merged.docs["file"][[0, 25, 55]]] == \
        [str(tmp_path / n) + ".jsonl" for n in "abc"]
    assert merged.docs["line"].tolist() == list(range(1, 26)) + list(range(1, 31)) + list(range(1, 11))


def test_merge_refuses_different_tokenizer_or_template(tmp_path, sp_model, hf_tokenizer_dir, write_annotated_jsonl,
                                                        capsys):
    a, _ = make_set(tmp_path, "a", sp_model, write_annotated_jsonl, 1, 8)
    (tmp_path / "q.txt").write_text("Rated {quality_label}.\n")
    b, _ = make_set(tmp_path, "b", sp_model, write_annotated_jsonl, 2, 8, "--quality-template", tmp_path / "q.txt")
    h, _ = make_set(tmp_path, "h", hf_tokenizer_dir, write_annotated_jsonl, 3, 8, tokenizer_type="HuggingFaceTokenizer")
    assert merge_ixt.main(["--input", a, b, "--output-prefix", str(tmp_path / "m")]) == 1
    assert "quality template differs" in capsys.readouterr().err
    assert merge_ixt.main(["--input", a, h, "--output-prefix", str(tmp_path / "m")]) == 1
    assert "tokenizer differs" in capsys.readouterr().err
    k, _ = make_set(tmp_path, "k", sp_model, write_annotated_jsonl, 4, 8, "--prefix-kinds", "critique", "quality")
    assert merge_ixt.main(["--input", a, k, "--output-prefix", str(tmp_path / "m")]) == 1
    assert "prefix kinds differ" in capsys.readouterr().err
    assert not list(tmp_path.glob("m_*"))


def test_merge_inputs_by_glob(tmp_path, sp_model, write_annotated_jsonl):
    """A glob over whole shard sets keeps the stems it finds, in sorted order, once each."""
    a, _ = make_set(tmp_path, "part-a", sp_model, write_annotated_jsonl, 1, 6)
    b, _ = make_set(tmp_path, "part-b", sp_model, write_annotated_jsonl, 2, 7)
    assert merge_ixt.shard_set_stems([str(tmp_path / "part-*"), a]) == [a, b]
    assert merge_ixt.shard_set_stems([str(tmp_path / "part-*_ixt.json")]) == [a, b]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        merge_ixt.shard_set_stems([str(tmp_path / "nothing-*")])


def test_merge_refuses_unknown_version(tmp_path, sp_model, write_annotated_jsonl, capsys):
    a, _ = make_set(tmp_path, "a", sp_model, write_annotated_jsonl, 1, 5)
    meta = json.loads(open(a + "_ixt.json").read())
    meta["version"] = 99
    open(a + "_ixt.json", "w").write(json.dumps(meta))
    with pytest.raises(ValueError, match="version 99 is not supported"):
        shards.read_metadata(a)
    assert merge_ixt.main(["--input", a, "--output-prefix", str(tmp_path / "m")]) == 1
    assert "version 99" in capsys.readouterr().err


def test_inspect_shows_prefixes_text_and_annotation(ixt_shard_set, sp_tokenizer, capsys):
    records = ixt_shard_set.records
    i = next(k for k, r in enumerate(records) if r.get("ixt", {}).get("status") == "ok")
    j = next(k for k, r in enumerate(records) if "ixt" not in r)
    assert inspect_ixt.main([ixt_shard_set.prefix, "-i", str(i), str(j), "--tokenizer-model",
                             ixt_shard_set.tokenizer_model, "--record", "--chars", "80"]) == 0
    out = capsys.readouterr().out
    assert f"{len(records)} documents" in out and "steering critique: 'Feedback: quality 5/5" in out
    ann = records[i]["ixt"]
    block = out.split(f"document {i} of")[1].split("document ")[0]
    assert f"from {ixt_shard_set.input}:{i + 1}" in block
    assert f"annotation: quality {ann['quality']}/5; writing_style {ann['scores']['writing_style']}" in block
    critique_prefix = sp_tokenizer.detokenize(sp_tokenizer.tokenize(
        f"Feedback: quality {ann['quality']}/5"))
    assert "critique prefix" in block and critique_prefix in block and ann["critique"][:40] in block
    decoded = sp_tokenizer.detokenize(sp_tokenizer.tokenize(records[i]["text"]) + [sp_tokenizer.eod])
    assert f"tokens): {decoded[:80]!r} ..." in block
    assert json.dumps(ann) in block  # the source record's ixt block
    other = out.split(f"document {j} of")[1]
    assert "annotation: none" in other and "critique prefix (0 tokens): ''" in other
    assert "scores prefix (0 tokens)" in other and "Scores: writing style" in block
    assert "prefix kinds: critique, quality, scores (format version 2)" in out


def test_inspect_rejects_wrong_tokenizer(ixt_shard_set, hf_tokenizer_dir, capsys):
    assert inspect_ixt.main([ixt_shard_set.prefix, "-i", "0", "--tokenizer-model", hf_tokenizer_dir]) == 1
    assert "is not the tokenizer this shard set was made with" in capsys.readouterr().err
    assert inspect_ixt.main([ixt_shard_set.prefix, "-i", "100000"]) == 1
    assert "out of range" in capsys.readouterr().err


@pytest.mark.slow
def test_sharded_then_merged_equals_the_single_run(tmp_path, sp_model, write_annotated_jsonl):
    """--num-shards parts merged in shard order are the single run, byte for byte (a part may be empty)."""
    inputs = []
    for i in range(5):
        write_annotated_jsonl(tmp_path / f"in{i}.jsonl", n_docs=12 + 5 * i, seed=20 + i,
                     extra_lines=['{"text": 5}'] if i == 3 else ())  # a dropped record counts in its part
        inputs.append(str(tmp_path / f"in{i}.jsonl"))
    args = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model, "--append-eod"]
    assert preprocess(["--input", str(tmp_path / "in*.jsonl"), "--output-prefix", str(tmp_path / "single"), *args]) == 0
    for num_shards in (3, 6):  # 2+2+1 files; 1+1+1+1+1+0
        parts = [str(tmp_path / f"part{i}-of-{num_shards}") for i in range(num_shards)]
        for i, part in enumerate(parts):
            assert preprocess(["--input", str(tmp_path / "in*.jsonl"), "--output-prefix", part, *args,
                               "--num-shards", str(num_shards), "--shard-index", str(i)]) == 0
        assert len(shards.read_metadata(parts[0])["inputs"]) == (2 if num_shards == 3 else 1)
        merged = str(tmp_path / f"merged{num_shards}")
        assert merge_ixt.main(["--input", *parts, "--output-prefix", merged]) == 0
        for suffix in ("_text_document.bin", "_text_document.idx", "_critique_prefix.bin", "_critique_prefix.idx",
                       "_quality_prefix.bin", "_quality_prefix.idx", "_ixt_docs.npy"):
            assert open(merged + suffix, "rb").read() == open(str(tmp_path / "single") + suffix, "rb").read(), suffix
        single, whole = shards.read_metadata(str(tmp_path / "single")), shards.read_metadata(merged)
        assert whole.pop("merged_from") == parts
        assert {k: v for k, v in whole.items() if k != "created_by"} == \
            {k: v for k, v in single.items() if k != "created_by"}
    with pytest.raises(SystemExit):
        preprocess(["--input", inputs[0], "--output-prefix", str(tmp_path / "x"), *args,
                    "--num-shards", "2", "--shard-index", "2"])
