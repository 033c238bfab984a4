"""lm-evaluation-harness on a tiny export, local tasks only: the token ids lm-eval sends to the model
start with the steering prefix (``--model ixt_hf --model_args pretrained=DIR,steer=quality:5``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: local YAML + JSONL tasks
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

lm_eval = pytest.importorskip("lm_eval")

from tests.helpers.export import build_model, save_model_checkpoint, tiny_config  # noqa: E402

QA = [{"question": f"what is {a} plus {b}?", "choices": [f"it is {a + b} exactly", f"it is {a + b + 3} or so"],
       "label": 0, "answer": str(a + b)} for a, b in ((2, 3), (10, 4), (7, 7), (21, 30))]


def write_tasks(directory) -> str:
    """A multiple-choice (loglikelihood) and a generation task over one local JSONL file."""
    data = os.path.join(directory, "qa.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in QA)
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: \"Question: {{question}}\\nAnswer:\"\n")
    with open(os.path.join(directory, "ixt_tiny_mc.yaml"), "w") as f:
        f.write("task: ixt_tiny_mc\noutput_type: multiple_choice\n" + common +
                "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    with open(os.path.join(directory, "ixt_tiny_gen.yaml"), "w") as f:
        f.write("task: ixt_tiny_gen\noutput_type: generate_until\n" + common +
                "doc_to_target: \"{{answer}}\"\ngeneration_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n"
                "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return str(directory)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ixt_shard_set, dist):
    from megatron_ixt.data.shards import text_store_path
    from megatron_ixt.tokenizer import TokenizerConfig
    from tools.convert_to_hf import convert, get_args

    root = tmp_path_factory.mktemp("lm_eval")
    cfg = tiny_config(tokenizer=TokenizerConfig("SentencePieceTokenizer", ixt_shard_set.tokenizer_model),
                      data_path=[text_store_path(ixt_shard_set.prefix)], seq_length=128, max_position_embeddings=128)
    save_model_checkpoint(str(root / "ckpt"), build_model(cfg), cfg)
    convert(get_args(["--load", str(root / "ckpt"), "--output", str(root / "hf")]))
    return str(root / "hf"), write_tasks(root / "tasks") if (root / "tasks").mkdir() is None else None


def evaluate_recording(directory, tasks, steer, **model_args):
    """Run lm-eval's simple_evaluate with ixt_hf; returns (results, [token ids of each sequence the
    model was given])."""
    from lm_eval.tasks import TaskManager

    from megatron_ixt.evaluation.lm_eval_model import IXTHFLM

    lm = IXTHFLM(pretrained=directory, steer=steer, batch_size=3, device="cpu", dtype="float32", **model_args)
    sent = []

    def record(module, args, kwargs):
        if args:  # a loglikelihood batch: lm-eval calls model(inps)
            sent.extend(row.tolist() for row in args[0])
            return
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if ids.shape[1] > 1:  # the prompts of a generate call (later steps are single tokens)
            sent.extend(row.tolist() if mask is None else row[m.bool()].tolist() for row, m in
                        zip(ids, mask if mask is not None else ids))

    hook = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=["ixt_tiny_mc", "ixt_tiny_gen"],
                                          task_manager=TaskManager(include_path=tasks), log_samples=False)
    finally:
        hook.remove()
    return results, sent


def test_steering_prefix_starts_every_scored_context(exported, sp_tokenizer):
    from megatron_ixt.export.steering import steering_tokens

    directory, tasks = exported
    prefix = steering_tokens(directory, "quality:5")
    assert len(prefix) > 3
    results, sent = evaluate_recording(directory, tasks, "quality:5")
    assert "acc,none" in results["results"]["ixt_tiny_mc"]
    assert "exact_match,none" in results["results"]["ixt_tiny_gen"]

    contexts = [f"Question: {d['question']}\nAnswer:" for d in QA]
    # loglikelihood: prefix + tokens(context + " " + choice), minus the last token (lm-eval pads on the right)
    scored = [prefix + sp_tokenizer.tokenize(c + " " + choice)[:-1]
              for c, d in zip(contexts, QA) for choice in d["choices"]]
    generated = [prefix + sp_tokenizer.tokenize(c) for c in contexts]  # generation prompts (left-padded, masked)
    bad = [row for row in sent if row[:len(prefix)] != prefix]
    assert sent and not bad, (prefix, bad[:3])
    for expected in scored:
        assert any(row[:len(expected)] == expected for row in sent), expected
    for expected in generated:
        assert expected in sent

    _, plain = evaluate_recording(directory, tasks, "none")
    assert plain and not any(row[:len(prefix)] == prefix for row in plain)
    for c in contexts:
        assert sp_tokenizer.tokenize(c) in plain


def test_guided_steering_sends_both_passes_and_scores_guided_log_probabilities(exported, sp_tokenizer):
    """guidance_scale / negative_steer: every sequence is also sent under the negative prefix, and a
    continuation's log-likelihood is the sum of log_softmax(neg + G (cond - neg)) over its tokens."""
    from lm_eval.api.instance import Instance

    from megatron_ixt.evaluation.lm_eval_model import IXTHFLM
    from megatron_ixt.export.steering import steering_tokens

    directory, tasks = exported
    prefix, negative = steering_tokens(directory, "quality:5"), steering_tokens(directory, "quality:1")
    assert prefix != negative
    guidance = dict(guidance_scale=2.0, negative_steer="quality:1")
    _, sent = evaluate_recording(directory, tasks, "quality:5", **guidance)
    contexts = [f"Question: {d['question']}\nAnswer:" for d in QA]
    for c, d in zip(contexts, QA):
        for choice in d["choices"]:
            document = sp_tokenizer.tokenize(c + " " + choice)[:-1]
            assert any(row[:len(prefix) + len(document)] == prefix + document for row in sent)
            assert any(row[:len(negative) + len(document)] == negative + document for row in sent)
        assert prefix + sp_tokenizer.tokenize(c) in sent and negative + sp_tokenizer.tokenize(c) in sent

    lm = IXTHFLM(pretrained=directory, steer="quality:5", batch_size=2, device="cpu", dtype="float32", **guidance)
    pairs = [(contexts[0], " " + QA[0]["choices"][0]), (contexts[1], " " + QA[1]["choices"][1])]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)],
                           disable_tqdm=True)
    for (context, continuation), (logprob, _) in zip(pairs, got):
        context_enc, continuation_enc = lm._encode_pair(context, continuation)
        assert context_enc[:len(prefix)] == prefix
        with torch.no_grad():
            cond = lm.model(torch.tensor([context_enc + continuation_enc])).logits[0, len(context_enc) - 1:-1]
            neg_context = negative + context_enc[len(prefix):]
            neg = lm.model(torch.tensor([neg_context + continuation_enc])).logits[0, len(neg_context) - 1:-1]
        guided = torch.log_softmax((neg + 2.0 * (cond - neg)).double(), dim=-1)
        expected = float(guided[torch.arange(len(continuation_enc)), continuation_enc].sum())
        plain = float(torch.log_softmax(cond.double(), dim=-1)[torch.arange(len(continuation_enc)),
                                                               continuation_enc].sum())
        assert logprob == pytest.approx(expected, abs=1e-4) and abs(expected - plain) > 1e-3


def test_load_a_checkpoint_in_memory_scores_like_its_export(exported):
    """load=CKPT (the checkpoint the export was written from, exported in memory) gives the export's
    steering prefixes and log-likelihoods."""
    from lm_eval.api.instance import Instance

    from megatron_ixt.evaluation.lm_eval_model import IXTHFLM

    directory, _ = exported
    common = dict(steer="quality:5", guidance_scale=2.0, negative_steer="quality:1", batch_size=2, device="cpu",
                  dtype="float32")
    from_disk = IXTHFLM(pretrained=directory, **common)
    in_memory = IXTHFLM(load=os.path.join(os.path.dirname(directory), "ckpt"), **common)
    assert in_memory.steering_prefix == from_disk.steering_prefix and \
        in_memory.negative_prefix == from_disk.negative_prefix
    requests = [Instance("loglikelihood", {}, (f"Question: {d['question']}\nAnswer:", " " + d["choices"][0]), i)
                for i, d in enumerate(QA)]
    expected = from_disk.loglikelihood(requests, disable_tqdm=True)
    got = in_memory.loglikelihood(requests, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in expected]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in expected], abs=1e-5)
    with pytest.raises(ValueError, match="one of them"):
        IXTHFLM(pretrained=directory, load=directory)


@pytest.mark.slow
def test_cli(exported, tmp_path):
    """``python -m megatron_ixt.evaluation.lm_eval_cli`` is lm-eval's CLI with ixt_hf registered."""
    directory, tasks = exported
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):  # a torchrun world around pytest
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.evaluation.lm_eval_cli", "run", "--model", "ixt_hf",
                           "--model_args", f"pretrained={directory},steer=quality:5,dtype=float32",
                           "--tasks", "ixt_tiny_mc", "--include_path", tasks, "--device", "cpu",
                           "--output_path", str(tmp_path / "results")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ixt_tiny_mc" in proc.stdout and "acc" in proc.stdout
