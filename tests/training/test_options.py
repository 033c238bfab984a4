"""Seams of docs/extending.md: the IXT options have one home (megatron_ixt/data/options.py), the flag layer
loads no torch, and an evaluation conditioning is one entry of conditioning_configs."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from megatron_ixt.training.checkpoint import read_config
from tests.helpers.training import tiny_model_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS_CLASS_LINE = "class IXTOptions:\n"


def test_config_and_launch_modules_import_no_torch():
    code = ("import sys, megatron_ixt.training.config, megatron_ixt.scaling.launch, megatron_ixt.data.options; "
            "print(sorted(m for m in ('torch', 'megatron.core') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.stdout.strip() == "[]"


def test_an_option_added_as_one_field_reaches_every_consumer(synth_data, tmp_path):
    """A copy of the package whose IXTOptions gains one field, and nothing else: the new flag is in
    pretrain's and inspect_samples' --help, in the dataset index cache key and in the checkpoint's
    stored config."""
    copy = tmp_path / "src"
    for folder in ("megatron_ixt", "tools"):
        shutil.copytree(os.path.join(REPO, folder), copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    options = copy / "megatron_ixt" / "data" / "options.py"
    text = options.read_text()
    assert text.count(OPTIONS_CLASS_LINE) == 1
    options.write_text(text.replace(OPTIONS_CLASS_LINE, OPTIONS_CLASS_LINE + (
        '    probe_weight: float = arg(0.0, "an option this test adds")\n')))
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONWARNINGS="ignore")

    for cmd in ([sys.executable, "-m", "megatron_ixt.pretrain", "--help"],
                [sys.executable, str(copy / "tools" / "inspect_samples.py"), "--help"]):
        out = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, check=True).stdout
        assert "--ixt-probe-weight" in out and "an option this test adds" in out, cmd

    cache, save = str(tmp_path / "cache"), str(tmp_path / "ckpt")
    args = tiny_model_args(synth_data, cache) + ["--train-iters", "3", "--eval-iters", "0", "--save", save,
                                                 "--ixt-probe-weight", "0.25"]
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.pretrain", *args], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_config(save)["data"]["ixt_probe_weight"] == 0.25
    descriptions = glob.glob(os.path.join(cache, "*-description.txt"))
    assert descriptions
    for path in descriptions:
        with open(path) as f:
            assert json.load(f)["probe_weight"] == 0.25, path



def test_a_conditioning_added_to_conditioning_configs_is_evaluated_and_logged(synth_data, tmp_path):
    """A copy of the package whose ``conditioning_configs`` returns one more variant (every document
    under its true prefix, with prefix tokens masked: ``masked``), and nothing else: the trainer
    evaluates it and logs ``masked/doc_loss`` in every eval record (docs/extending.md)."""
    copy = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "megatron_ixt"), copy / "megatron_ixt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    provider = copy / "megatron_ixt" / "data" / "provider.py"
    anchor = '    variants = {"prefix": conditioned, "none": plain}\n'
    text = provider.read_text()
    assert text.count(anchor) == 1
    provider.write_text(text.replace(anchor, anchor + (
        '    variants["masked"] = dataclasses.replace(conditioned, prefix_loss="mask")\n')))
    save = str(tmp_path / "ckpt")
    args = tiny_model_args(synth_data, str(tmp_path / "cache")) + [
        "--train-iters", "4", "--eval-interval", "4", "--eval-iters", "1", "--save", save]
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.pretrain", *args], cwd=copy, capture_output=True,
                          text=True, timeout=240, env=dict(os.environ, PYTHONPATH=str(copy), PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(save, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["kind"] == "eval"]
    assert evals and all({"prefix/doc_loss", "none/doc_loss", "masked/doc_loss"} <= set(e) for e in evals)
    # the same documents, the prefix out of the loss: the document loss is the prefix variant's
    assert evals[-1]["masked/doc_loss"] == pytest.approx(evals[-1]["prefix/doc_loss"], rel=1e-6)
    assert "masked/doc_loss" in proc.stdout
