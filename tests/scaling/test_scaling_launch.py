"""Sweep specs and ``python -m megatron_ixt.scaling launch|status``: planning, idempotent relaunch,
resume of an interrupted sweep (real toy training runs), refusal of a changed spec, Slurm dry-run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_ixt.scaling.cli import main
from megatron_ixt.scaling.launch import run_state, trainer_command
from megatron_ixt.scaling.spec import SpecError, load_spec
from tests.helpers.scaling import tiny_spec, write_counting_text_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_counting_text_store(str(tmp_path_factory.mktemp("corpus") / "count"))


def test_plan_expands_the_grid_with_per_size_rules(tmp_path, corpus):
    spec_path = tiny_spec(str(tmp_path / "s.yaml"), corpus, str(tmp_path / "runs"), lr=0.004,
                          arms={"baseline": "--ixt-prefix-kind none", "ixt-quality": "--ixt-prefix-kind quality"})
    spec = load_spec(spec_path)
    assert [p.name for p in spec.runs] == ["baseline/h32_1536_s7", "baseline/h32_3072_s7",
                                           "ixt-quality/h32_1536_s7", "ixt-quality/h32_3072_s7"]
    plan = spec.runs[1]
    assert plan.run_dir == str(tmp_path / "runs" / "baseline" / "h32_3072_s7")
    assert plan.train_iters == 3072 // (4 * 32)
    argv = " ".join(plan.argv)
    for flags in ("--lr 0.004", "--min-lr 0.0004", "--global-batch-size 4", "--lr-decay-style cosine",
                  "--train-tokens 3072", "--seed 7", "--eval-interval 24", "--save-interval 12",
                  f"--metrics-file {plan.run_dir}/metrics.jsonl", "--exit-signal-handler"):
        assert flags in argv
    assert run_state(plan) == "pending" and "--load" not in trainer_command(plan, spec)
    with pytest.raises(SpecError, match="bad/h32_1536_s7: the trainer refuses(.|\n)*num-query-groups 3"):
        load_spec(tiny_spec(str(tmp_path / "bad.yaml"), corpus, str(tmp_path / "r2"),
                            arms={"bad": "--num-query-groups 3"}))
    with pytest.raises(SpecError, match="unknown key"):
        load_spec(tiny_spec(str(tmp_path / "bad2.yaml"), corpus, str(tmp_path / "r3"), extra="budget: [1]\n"))


def test_conditioning_recipes_are_arms(tmp_path, corpus):
    spec = load_spec(tiny_spec(str(tmp_path / "s.yaml"), corpus, str(tmp_path / "runs"), arms={
        "cooldown": "--ixt-prefix-cooldown-fraction 0.1", "every-segment": "--ixt-prefix-every-segment"}))
    argv = {plan.arm: " ".join(plan.argv) for plan in spec.runs}
    assert "--ixt-prefix-cooldown-fraction 0.1" in argv["cooldown"]
    assert "--ixt-prefix-every-segment" in argv["every-segment"]
    with pytest.raises(SpecError, match="bad/h32_1536_s7: the trainer refuses(.|\n)*--ixt-prefix-cooldown-fraction"):
        load_spec(tiny_spec(str(tmp_path / "bad.yaml"), corpus, str(tmp_path / "r2"),
                            arms={"bad": "--ixt-prefix-cooldown-fraction 1"}))


@pytest.mark.slow
def test_interrupted_sweep_resumes_and_relaunch_is_idempotent(tmp_path, corpus, capsys):
    root = str(tmp_path / "runs")
    spec_path = tiny_spec(str(tmp_path / "s.yaml"), corpus, root)
    spec = load_spec(spec_path)
    first = spec.runs[0]
    # an interrupted sweep: the first run stopped after 6 of its 12 iterations with a checkpoint
    # (what a killed launch leaves behind), through the trainer's own CLI
    os.makedirs(first.run_dir)
    subprocess.run(trainer_command(first, spec) + ["--exit-interval", "6"], check=True, capture_output=True)
    assert run_state(first) == "interrupted"

    assert main(["launch", spec_path]) == 0
    out = capsys.readouterr().out
    assert "run baseline/h32_1536_s7 (interrupted, resuming)" in out
    log = open(os.path.join(first.run_dir, "train.log")).read()
    assert f"--load {first.ckpt_dir}" in log and "at iteration 6" in log
    for plan in spec.runs:
        record = json.load(open(os.path.join(plan.run_dir, "run.json")))
        assert record["state"] == "finished" and record["arm"] == "baseline" and record["tokens"] == plan.tokens
        assert record["point"]["iteration"] == plan.train_iters and record["point"]["metric"] == "none/doc_loss"
        assert record["training_flops"] > 0 and record["eval"]["none/doc_loss"] == record["point"]["loss"]
    headers = [json.loads(line) for line in open(os.path.join(first.run_dir, "metrics.jsonl"))
               if '"header"' in line]
    assert len(headers) == 2  # the first launch and the resumed one append to one metrics file

    # idempotent: nothing left to do
    mtime = os.path.getmtime(os.path.join(first.run_dir, "metrics.jsonl"))
    assert main(["launch", spec_path]) == 0
    assert capsys.readouterr().out.count(": finished") == 2
    assert os.path.getmtime(os.path.join(first.run_dir, "metrics.jsonl")) == mtime
    assert main(["status", spec_path]) == 0
    assert "2 finished of 2 runs" in capsys.readouterr().out

    # a changed spec (another lr) is refused: it would mix results in the same directories
    tiny_spec(spec_path, corpus, root, lr=1e-3)
    assert main(["launch", spec_path]) == 2
    err = capsys.readouterr().err
    assert "the spec changed runs that already started" in err and "--lr" in err


def test_slurm_dry_run_prints_every_command_and_the_job_array_script(tmp_path, corpus):
    extra = ("launcher: {nproc_per_node: 8, nodes: 1, gpus: true}\n"
             "slurm: {partition: h100, account: proj, time: 600, array_parallelism: 2, "
             "setup: [\"source /opt/venv/bin/activate\"]}\n"
             "evaluate: {tasks: [gsm8k], metrics: [gsm8k/exact_match], num_fewshot: 5}\n")
    spec_path = tiny_spec(str(tmp_path / "s.yaml"), corpus, str(tmp_path / "runs"), extra=extra, gbs=32,
                          arms={"baseline": "--ixt-prefix-kind none", "ixt-quality": "--ixt-prefix-kind quality"})
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "launch", spec_path, "--executor", "slurm",
                           "--dry-run"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("-m torch.distributed.run --standalone --nproc-per-node=8 -m megatron_ixt.pretrain") == 4
    for i, name in enumerate(["baseline/h32_1536_s7", "baseline/h32_3072_s7", "ixt-quality/h32_1536_s7",
                              "ixt-quality/h32_3072_s7"]):
        assert f"# array task {i}: {name}" in out
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=h100", "#SBATCH --account=proj",
                 "#SBATCH --time=600", "#SBATCH --gpus-per-node=8", "#SBATCH --signal=USR2@120",
                 "source /opt/venv/bin/activate", "submitit.core._submit"):
        assert line in out
    # the evaluation: a second array after the training array, one task per run
    assert ("# evaluation array (4 task(s), after the training array): export to RUN/hf, then lm-eval into "
            "RUN/lm_eval, for baseline/h32_1536_s7, baseline/h32_3072_s7, ixt-quality/h32_1536_s7") in out
    assert not os.path.exists(str(tmp_path / "runs" / "baseline"))  # nothing ran or was recorded


@pytest.mark.slow
def test_sigterm_to_a_local_launch_saves_and_stops_with_75(tmp_path, corpus):
    spec_path = tiny_spec(str(tmp_path / "s.yaml"), corpus, str(tmp_path / "runs"), budgets=(256000,),
                          extra="checkpoints_per_run: 8\n")
    with open(spec_path) as f:  # one checkpoints_per_run key: the extra one (every 250 of 2000 iterations)
        text = f.read().replace("checkpoints_per_run: 2\n", "")
    with open(spec_path, "w") as f:
        f.write(text)
    plan = load_spec(spec_path).runs[0]
    tracker = os.path.join(plan.ckpt_dir, "latest_checkpointed_iteration.txt")
    launcher = subprocess.Popen([sys.executable, "-m", "megatron_ixt.scaling", "launch", spec_path], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not os.path.exists(tracker) and launcher.poll() is None:
        time.sleep(0.2)
    assert launcher.poll() is None, launcher.stdout.read()
    launcher.send_signal(signal.SIGTERM)  # forwarded to the trainer, which saves and exits 75
    assert launcher.wait(timeout=300) == 75
    record = json.load(open(os.path.join(plan.run_dir, "run.json")))
    assert record["state"] == "interrupted" and record["exit_code"] == 75
    saved = int(open(tracker).read())
    assert 250 < saved < plan.train_iters  # saved on stopping, before the end
    assert run_state(plan) == "interrupted" and "--load" in trainer_command(plan, load_spec(spec_path))


def write_count_task(directory) -> str:
    """A local lm-eval generation task on the tiny counting corpus: the next number of a count."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, "count_next.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        for start in range(10, 90, 10):
            f.write(json.dumps({"q": " ".join(str(start + i) for i in range(4)), "a": str(start + 4)}) + "\n")
    with open(os.path.join(directory, "count_next.yaml"), "w", encoding="utf-8") as f:
        f.write(f"task: count_next\noutput_type: generate_until\ndataset_path: json\n"
                f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
                "doc_to_text: \"{{q}}\"\ndoc_to_target: \"{{a}}\"\n"
                "generation_kwargs:\n  until: [\" \"]\n  max_gen_toks: 2\n  do_sample: false\n"
                "metric_list:\n  - metric: exact_match\n    ignore_case: true\n    ignore_punctuation: true\n")
    return str(directory)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 8 trainings, exports and lm-eval runs: 37 min on 2 cores at load 40-80
def test_tiny_sweep_with_a_local_task_is_evaluated_idempotently_and_fitted(tmp_path, corpus, capsys):
    """launch trains 2 arms x 4 budgets, exports each finished run and runs lm-eval on a local task
    into the run directory; a relaunch redoes nothing; status shows the scores; fit SPEC fits them."""
    pytest.importorskip("lm_eval")
    tasks = write_count_task(tmp_path / "tasks")
    evaluate = (f"evaluate:\n  tasks: [count_next]\n  metrics: [count_next/exact_match]\n"
                f"  include_path: {tasks}\n  num_fewshot: 0\n  batch_size: 8\n")
    spec_path = tiny_spec(str(tmp_path / "s.yaml"), corpus, str(tmp_path / "runs"), budgets=(512, 768, 1024, 1536),
                          arms={"baseline": "--ixt-prefix-kind none",
                                "wd": "--ixt-prefix-kind none --weight-decay 0.1"}, extra=evaluate)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    launch = [sys.executable, "-m", "megatron_ixt.scaling", "launch", spec_path]
    proc = subprocess.run(launch, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = load_spec(spec_path)
    results = []
    for plan in spec.runs:
        record = json.load(open(os.path.join(plan.run_dir, "run.json")))
        entry = record["evaluation"]
        assert entry["exit_code"] == 0 and entry["steer"] == "none", entry
        assert entry["results"].startswith(os.path.join(plan.run_dir, "lm_eval"))
        assert 0.0 <= entry["scores"]["count_next/exact_match"] <= 1.0
        assert os.path.isfile(os.path.join(plan.run_dir, "hf", "config.json"))
        results.append(entry["results"])
    assert proc.stdout.count("evaluate ") == 8

    again = subprocess.run(launch, capture_output=True, text=True, cwd=REPO, env=env)
    assert again.returncode == 0 and "evaluate " not in again.stdout and again.stdout.count(": finished") == 8
    assert [json.load(open(os.path.join(p.run_dir, "run.json")))["evaluation"]["results"] for p in spec.runs] == results

    assert main(["status", spec_path]) == 0
    status = capsys.readouterr().out
    assert "8 finished of 8 runs" in status and "8 with scores" in status and "count_next/exact_match=" in status
    out = str(tmp_path / "fit")
    assert main(["fit", spec_path, "--bootstrap", "20", "--output", out]) == 0
    fits = json.load(open(os.path.join(out, "fits.json")))
    assert fits["reference"] == "baseline" and list(fits["downstream"]) == ["count_next/exact_match,none"]
    assert fits["downstream"]["count_next/exact_match,none"]["items"] == 8
