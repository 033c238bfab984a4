"""Long-run guards: the NaN/Inf stop (exit 65), --skip-nonfinite-iters, ranks that exit with their
launcher, checkpoint retention."""
import os
import re

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from train_testlib import run_pretrain, tiny_model_args, train_losses
from megatron_ixt.training.checkpoint import iteration_dir, read_latest_iteration
from megatron_ixt.training.trainer import EXIT_NONFINITE


def checkpoint_tensors(path: str, scratch: str) -> dict:
    """Every tensor of the dist_checkpointing checkpoint ``path`` (model and optimizer), by name."""
    dcp_to_torch_save(path, scratch)
    tensors = {}

    def walk(obj, name):
        if isinstance(obj, torch.Tensor):
            tensors[name] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}/{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{name}/{i}")

    walk(torch.load(scratch, weights_only=False), "")
    return tensors


def test_diverging_run_stops_with_exit_65_and_no_nonfinite_checkpoint(synth_data, tmp_path):
    save = str(tmp_path / "ckpt")
    metrics = os.path.join(save, "metrics.jsonl")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "30", "--eval-iters", "0", "--save", save, "--save-interval", "2", "--lr", "1e4"]
    proc = run_pretrain(args, check=False)
    assert proc.returncode == EXIT_NONFINITE == 65, proc.stdout[-3000:] + proc.stderr[-3000:]
    stop = re.search(r"iteration (\d+): non-finite (loss|gradient norm) \((nan|inf|-inf)\); rank\(s\) with a "
                     r"non-finite value in their [a-z -]+: 0; stopping \(exit 65\)", proc.stdout)
    assert stop, proc.stdout[-3000:]
    bad = int(stop.group(1))
    latest = read_latest_iteration(save)
    assert latest == (bad - 1) // 2 * 2  # the last periodic save before the bad iteration
    assert sorted(d for d in os.listdir(save) if d.startswith("iter_")) == \
        [os.path.basename(iteration_dir(save, i)) for i in range(2, latest + 1, 2)]
    records = train_losses(metrics)
    assert sorted(records) == list(range(1, bad))
    tensors = checkpoint_tensors(iteration_dir(save, latest), str(tmp_path / "latest.pt"))
    assert any("word_embeddings" in name for name in tensors) and any("exp_avg" in name for name in tensors)
    assert [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()] == []

    # The latest checkpoint loads; its next iteration diverges again (same data, same weights) and is
    # skipped with no update (the LR schedule stands still), as is the one after; the third stops.
    proc = run_pretrain(args + ["--load", save, "--skip-nonfinite-iters", "2"], check=False)
    assert proc.returncode == 65, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"loaded {save} at iteration {latest}" in proc.stdout
    skipped = re.findall(r"iteration (\d+): non-finite [^;]+; [^;]+; skipped, no update "
                         r"\((\d) of --skip-nonfinite-iters 2\)", proc.stdout)
    assert skipped == [(str(latest + 1), "1"), (str(latest + 2), "2")], proc.stdout[-3000:]
    assert f"iteration {latest + 3}: non-finite" in proc.stdout and "used up" in proc.stdout
    resumed = train_losses(metrics)
    for it in (latest + 1, latest + 2):
        assert resumed[it]["skipped_iters"] == 1 and resumed[it]["loss"] is None
        assert resumed[it]["lr"] == records[latest]["lr"]
        assert resumed[it]["consumed_samples"] == it * 8
    # a skipped iteration saves the unchanged, finite weights like any other; the stop saves nothing
    assert read_latest_iteration(save) == (latest + 2) // 2 * 2
