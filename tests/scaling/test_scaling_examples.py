"""The example sweep specs plan as documented: cpu_tiny's grid, the H100 ladder's Slurm dry-run."""
import os
import subprocess
import sys

from megatron_ixt.scaling.spec import load_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples", "scaling")


def test_cpu_tiny_plans_3_sizes_x_3_budgets_x_2_arms(tmp_path):
    spec = load_spec(os.path.join(EXAMPLES, "cpu_tiny.yaml"), str(tmp_path))
    assert len(spec.runs) == 18
    assert {r.arm for r in spec.runs} == {"baseline", "ixt-quality"}
    assert sorted({r.train_iters for r in spec.runs}) == [98, 196, 391]  # as the spec's comment says
    assert len({r.params for r in spec.runs}) == 3
    base, ixt = spec.runs[0], spec.runs[3]
    assert (base.arm, ixt.arm, base.size, base.tokens) == ("baseline", "ixt-quality", "s1", ixt.tokens)
    strip = lambda argv: [w for w in argv if w not in ("none", "quality", "--ixt-prefix-loss", "train")]  # noqa: E731
    # the arms differ only in their arm flags (and their run directories)
    assert strip(base.argv) == [w.replace("/ixt-quality/", "/baseline/") for w in strip(ixt.argv)]


def test_h100_ladder_dry_run_is_one_75_task_job_array(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_ixt.scaling", "launch",
                           os.path.join(EXAMPLES, "h100_ladder.yaml"), "--executor", "slurm", "--dry-run",
                           "--root", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("# array task") == 75
    assert out.count("--nproc-per-node=8 -m megatron_ixt.pretrain") == 75
    assert "#SBATCH --array=0-74%16" in out and "#SBATCH --gpus-per-node=8" in out
    assert "--transformer-impl transformer_engine" in out and "--exit-signal-handler" in out
    assert f"--save {tmp_path}/ixt-critique/1.5b_40000000000_s1234/ckpt" in out
    assert not os.listdir(tmp_path)  # a dry run writes nothing
