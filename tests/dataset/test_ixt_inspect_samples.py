"""tools/inspect_samples.py prints real samples with prefix and document runs told apart."""
import re

from tools.inspect_samples import main


def run(capsys, corpus, *extra):
    main(["--data-path", corpus.path, "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
          "--seq-length", "64", "--samples", "0", "1", "2", "--no-color", *extra])
    return capsys.readouterr().out


def test_prefix_and_document_runs(make_shard_set, capsys):
    corpus = make_shard_set(num_documents=60, annotated=1.0)
    out = run(capsys, corpus, "--ixt-prefix-kind", "critique")
    prefixes = {" ".join(map(str, p)) for p in corpus.prefixes["critique"]}
    shown = re.findall(r"\[P\| ([^\]]*) \]", out)
    assert shown and "[D| " in out and "<EOD>" in out
    # every complete prefix run (between an EOD and a document run) is some document's prefix
    complete = re.findall(r"<EOD> \[P\| ([^\]]*) \] \[D\|", out)
    assert complete and all(run_ in prefixes for run_ in complete)

    masked = run(capsys, corpus, "--ixt-prefix-loss", "mask")
    assert "[P~| " in masked and "[P| " not in masked

    steered = re.findall(r"<EOD> \[P\| ([^\]]*) \] \[D\|", run(capsys, corpus, "--steering"))
    assert steered and all(p == "740 741 742 743 744" for p in steered)


def test_plain_store_shows_no_prefix(make_plain_store, capsys):
    out = run(capsys, make_plain_store(num_documents=40))
    assert "[D| " in out and "[P" not in out and "0 prefix /" in out


def test_every_segment_shows_the_reinserted_prefix(make_shard_set, capsys):
    corpus = make_shard_set(num_documents=60, annotated=1.0)
    samples = ["--seq-length", "16", "--samples", *map(str, range(20))]

    def prefix_first(out):  # samples whose first input token and first labels are prefix tokens
        return len(re.findall(r"^'(\d+)' -> \[P\|", out, flags=re.M))

    off = run(capsys, corpus, *samples)
    on = run(capsys, corpus, *samples, "--ixt-prefix-every-segment")
    assert "prefix_every_segment=True" in on and "prefix_every_segment=False" in off
    assert prefix_first(on) >= prefix_first(off) + 5
