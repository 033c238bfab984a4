"""TP=2, PP=2 and DP=2 (two gloo processes each) reproduce the single-process losses.

All runs start from one initial checkpoint (written by a single process with --train-iters 0,
loaded with --finetune), so they share weights whatever the layout; dist_checkpointing reshards.
"""
import pytest

from tests.helpers.training import read_records, run_pretrain, tiny_model_args, train_losses

ITERS = 4


@pytest.fixture(scope="module")
def reference(synth_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    init = str(root / "init")
    base = tiny_model_args(synth_data, str(root / "cache"))
    run_pretrain(base + ["--train-iters", "0", "--eval-iters", "0", "--save", init])
    args = base + ["--train-iters", str(ITERS), "--load", init, "--finetune", "--hidden-dropout", "0",
                   "--eval-interval", str(ITERS), "--eval-iters", "1"]
    metrics = str(root / "tp1.jsonl")
    run_pretrain(args + ["--metrics-file", metrics])
    return args, metrics, root


@pytest.mark.slow
@pytest.mark.parametrize("layout", [["--tensor-model-parallel-size", "2"],
                                    ["--pipeline-model-parallel-size", "2"],
                                    []], ids=["tp2", "pp2", "dp2"])
def test_two_process_layout_matches_single_process(reference, layout):
    args, reference_metrics, root = reference
    metrics = str(root / f"{'-'.join(layout) or 'dp2'}.jsonl")
    run_pretrain(args + layout + ["--metrics-file", metrics], nproc=2)
    expected, got = train_losses(reference_metrics), train_losses(metrics)
    assert sorted(got) == list(range(1, ITERS + 1))
    assert expected[ITERS]["loss"] < expected[1]["loss"]
    for it in range(1, ITERS + 1):
        for key in ("loss", "doc_loss", "prefix_loss"):
            assert got[it][key] == pytest.approx(expected[it][key], rel=2e-4), (it, key)
        assert got[it]["grad_norm"] == pytest.approx(expected[it]["grad_norm"], rel=1e-3), it
    (want,), (have,) = read_records(reference_metrics, "eval"), read_records(metrics, "eval")
    for key in ("prefix/doc_loss", "prefix/prefix_loss", "none/doc_loss", "steering/doc_loss"):
        assert have[key] == pytest.approx(want[key], rel=2e-4), key


def test_a_world_of_one_needs_no_rendezvous_port():
    """Without torchrun's variables the trainer's process group uses no TCP port, so single-process
    runs started together on one node (a sweep's array tasks) cannot race for one. The port named
    in MASTER_PORT is held by a listening socket here; a TCP store would fail on it."""
    import os
    import socket
    import subprocess
    import sys

    code = ("from megatron_ixt.distributed import init_distributed; import torch, torch.distributed as d; "
            "import os; init_distributed(); t = torch.ones(1); d.all_reduce(t); "
            "print(d.get_world_size(), int(t), 'RANK' in os.environ)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(taken.getsockname()[1]))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # and os.environ stays as it was: processes it starts (a sweep's trainers) are worlds of their own
    assert proc.stdout.split()[-3:] == ["1", "1", "False"]
