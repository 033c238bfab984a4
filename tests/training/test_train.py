"""Single-process training on the synthetic IXT shard set: loss falls, metrics and eval are logged."""
import glob
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from megatron_ixt.cli import EXIT_BAD_INPUT
from tests.helpers.training import read_records, run_pretrain, tiny_model_args, train_losses
from tests.helpers.training_corpus import BAD_CRITIQUE, GOOD_CRITIQUE


@dataclass
class TrainedRun:
    save: str  # the --save directory (checkpoints and metrics.jsonl)
    tensorboard: str
    stdout: str


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory) -> TrainedRun:
    """One 24-step run of the tiny model on the synthetic shard set, evaluated at steps 12 and 24."""
    tmp = tmp_path_factory.mktemp("train")
    save, tb = str(tmp / "ckpt"), str(tmp / "tb")
    proc = run_pretrain(tiny_model_args(synth_data, str(tmp / "cache")) + [
        "--train-iters", "24", "--eval-interval", "12", "--eval-iters", "1",
        "--save", save, "--tensorboard-dir", tb, "--peak-tflops-per-device", "1.0"])
    return TrainedRun(save, tb, proc.stdout)


def generate(save: str, *extra) -> dict:
    """``megatron_ixt.generate --json`` of one prompt from the checkpoint in ``save``: its result."""
    out = subprocess.run([sys.executable, "-m", "megatron_ixt.generate", "--load", save, "--json",
                          "--prompt", "10 11 12 13", "--max-new-tokens", "6", *extra],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loss_falls_and_every_metric_is_logged(trained):
    metrics = os.path.join(trained.save, "metrics.jsonl")
    header = read_records(metrics, "header")
    assert header and header[0]["format"] == "megatron-ixt-metrics" and header[0]["version"] == 1
    losses = train_losses(metrics)
    assert sorted(losses) == list(range(1, 25))
    first = sum(losses[i]["loss"] for i in (1, 2, 3)) / 3
    last = sum(losses[i]["loss"] for i in (22, 23, 24)) / 3
    assert last < first - 1.0, (first, last)
    rec = losses[24]
    for key in ("lr", "doc_loss", "prefix_loss", "grad_norm", "tokens_per_s", "tflops_per_device",
                "mfu", "cumulative_flops", "consumed_tokens"):
        assert rec[key] is not None and math.isfinite(rec[key]), key
    assert rec["consumed_tokens"] == 24 * 8 * 128
    assert rec["mfu"] == rec["tflops_per_device"] / 1.0
    assert rec["cumulative_flops"] == 24 * losses[1]["cumulative_flops"]
    # The synthetic critique prefix has 4 tokens, from a 4-token vocabulary: it is learnt fast.
    assert rec["prefix_loss"] < rec["doc_loss"]
    assert glob.glob(os.path.join(trained.tensorboard, "events.out.tfevents.*"))
    assert open(os.path.join(trained.save, "latest_checkpointed_iteration.txt")).read().strip() == "24"


def test_eval_records_every_conditioning(trained):
    evals = read_records(os.path.join(trained.save, "metrics.jsonl"), "eval")
    assert [e["iteration"] for e in evals] == [12, 24]
    for e in evals:
        for key in ("prefix/doc_loss", "none/doc_loss", "steering/doc_loss", "prefix/prefix_loss"):
            assert math.isfinite(e[key]), key
    assert evals[1]["prefix/doc_loss"] < evals[0]["prefix/doc_loss"]
    assert "[eval] iter 24" in trained.stdout and "steering/doc_loss" in trained.stdout


def test_generation_is_steered_by_the_shard_sets_prefix_or_ones_own(trained):
    steered = generate(trained.save, "--steer", "critique")
    assert steered["prefix_tokens"] == GOOD_CRITIQUE and steered["prompt_tokens"] == [10, 11, 12, 13]
    assert 1 <= len(steered["generated_tokens"]) <= 6
    assert steered["text"] == " ".join(str(t) for t in steered["generated_tokens"] if t != 511)
    own = generate(trained.save, "--prefix-text", " ".join(map(str, BAD_CRITIQUE)))
    assert own["prefix_tokens"] == BAD_CRITIQUE


def test_guided_steering_at_scale_0_and_1_and_with_the_kv_cache(trained):
    # scale 0 against an unprefixed negative decodes as unprefixed; scale 1 is plain steering
    unprefixed = generate(trained.save, "--steer", "none")
    assert generate(trained.save, "--steer", "critique", "--guidance-scale", "0",
                    "--negative-steer", "none")["generated_tokens"] == unprefixed["generated_tokens"]
    assert generate(trained.save, "--steer", "critique", "--guidance-scale", "1") == \
        generate(trained.save, "--steer", "critique")
    guided = ["--steer", "critique", "--guidance-scale", "3"]  # against the unprefixed prompt (the default)
    assert generate(trained.save, *guided) == generate(trained.save, *guided, "--no-kv-cache")  # = reference loop


def test_prompt_file_gives_one_result_per_prompt_and_names_a_bad_line(trained, tmp_path):
    prompts, results = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    prompts.write_text(json.dumps({"prompt": "10 11 12 13"}) + "\n" + json.dumps({"prompt": "20 21"}) + "\n")
    subprocess.run([sys.executable, "-m", "megatron_ixt.generate", "--load", trained.save, "--steer", "critique",
                    "--prompt-file", str(prompts), "--output", str(results), "--max-new-tokens", "6"], check=True)
    batch = [json.loads(line) for line in results.read_text().splitlines()]
    assert [b["prompt_tokens"] for b in batch] == [[10, 11, 12, 13], [20, 21]]
    assert batch[0]["generated_tokens"] == generate(trained.save, "--steer", "critique")["generated_tokens"]
    prompts.write_text('{"prompt": 7}\n')
    bad = subprocess.run([sys.executable, "-m", "megatron_ixt.generate", "--load", trained.save, "--prompt-file",
                          str(prompts)], capture_output=True, text=True)
    assert bad.returncode == EXIT_BAD_INPUT and f"{prompts}:1:" in bad.stderr


def test_baseline_arm_has_no_prefix(synth_data, tmp_path):
    """--ixt-prefix-kind none trains plain GPTDataset samples and evaluates without prefix only."""
    metrics = str(tmp_path / "m.jsonl")
    run_pretrain(tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--ixt-prefix-kind", "none", "--train-iters", "3", "--eval-interval", "3", "--eval-iters", "1",
        "--metrics-file", metrics])
    rec = train_losses(metrics)[3]
    assert rec["prefix_loss"] is None and rec["doc_loss"] == rec["loss"]
    (ev,) = read_records(metrics, "eval")
    assert "none/doc_loss" in ev and "prefix/doc_loss" not in ev and "steering/doc_loss" not in ev


def test_trains_on_preprocessed_shards(ixt_shard_set, tmp_path):
    """The real chain: tools/preprocess_ixt.py shards (SentencePiece) -> IXT dataset -> trainer."""
    metrics = str(tmp_path / "m.jsonl")
    run_pretrain(["--tokenizer-type", ixt_shard_set.tokenizer_type,
                  "--tokenizer-model", ixt_shard_set.tokenizer_model,
                  "--data-path", ixt_shard_set.prefix + "_text_document", "--split", "90,10,0",
                  "--data-cache-path", str(tmp_path / "cache"),
                  "--num-layers", "1", "--hidden-size", "64", "--num-attention-heads", "2",
                  "--seq-length", "128", "--micro-batch-size", "2", "--global-batch-size", "4",
                  "--train-iters", "4", "--lr", "1e-3", "--log-interval", "4",
                  "--eval-interval", "4", "--eval-iters", "1", "--metrics-file", metrics])
    (ev,) = read_records(metrics, "eval")
    assert {"prefix/doc_loss", "none/doc_loss", "steering/doc_loss"} <= set(ev)
    assert train_losses(metrics)[4]["prefix_loss"] is not None
