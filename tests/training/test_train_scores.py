"""The ``scores`` prefix kind end to end: tools/preprocess_ixt.py (SentencePiece) -> IXT dataset ->
trainer (train and the prefix/none/steering eval conditionings) -> steered generation on one axis."""
import json
import os
import subprocess
import sys

import pytest

from megatron_ixt.data.shards import read_metadata
from megatron_ixt.data.templates import steering
from tests.helpers.training import read_records, run_pretrain, train_losses


@pytest.mark.slow
def test_scores_kind_trains_evaluates_and_steers(ixt_shard_set, sp_tokenizer, tmp_path):
    save = str(tmp_path / "ckpt")
    run_pretrain(["--tokenizer-type", ixt_shard_set.tokenizer_type,
                  "--tokenizer-model", ixt_shard_set.tokenizer_model,
                  "--data-path", ixt_shard_set.prefix + "_text_document", "--split", "90,10,0",
                  "--data-cache-path", str(tmp_path / "cache"), "--ixt-prefix-kind", "scores",
                  "--num-layers", "1", "--hidden-size", "64", "--num-attention-heads", "2",
                  "--seq-length", "128", "--micro-batch-size", "2", "--global-batch-size", "4",
                  "--train-iters", "3", "--lr", "1e-3", "--log-interval", "3",
                  "--eval-interval", "3", "--eval-iters", "1", "--save", save])
    metrics = os.path.join(save, "metrics.jsonl")
    assert train_losses(metrics)[3]["prefix_loss"] is not None  # scores prefixes are in the token stream
    (ev,) = read_records(metrics, "eval")
    assert {"prefix/doc_loss", "none/doc_loss", "steering/doc_loss"} <= set(ev)

    def generate(steer, *extra):
        out = subprocess.run([sys.executable, "-m", "megatron_ixt.generate", "--load", save, "--json", "--steer", steer,
                              "--prompt", "The", "--max-new-tokens", "2", *extra], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["prefix_tokens"]

    assert generate("scores:educational_value=5") == sp_tokenizer.tokenize("Scores: educational value 5/5.\n")
    assert generate("scores") == read_metadata(ixt_shard_set.prefix)["steering"]["scores"]["tokens"]
    assert generate("scores:2") == sp_tokenizer.tokenize(steering("scores", 2))
    assert generate("critique:4", "--steering-critique", "Clear.") == \
        sp_tokenizer.tokenize(steering("critique", 4, critique="Clear."))
    bad = subprocess.run([sys.executable, "-m", "megatron_ixt.generate", "--load", save, "--steer", "scores:humor=5",
                          "--prompt", "The"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown axis 'humor'" in bad.stderr
