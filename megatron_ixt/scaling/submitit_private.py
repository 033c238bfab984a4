"""The one place where megatron-ixt touches submitit's *private* API, so an upgrade has one file
to check (as ``megatron_ixt.mcore_private`` for megatron-core).

What it relies on (submitit 1.5.x, the range setup.py allows; pinned by the Slurm dry-run tests,
``tests/scaling/test_scaling_examples.py::test_h100_ladder_dry_run_is_one_75_task_job_array``):

- ``SlurmExecutor._make_submission_file_text(command, uid)``: the sbatch script submitit would
  submit, rendered from the executor's parameters;
- ``SlurmExecutor._submitit_command_str``: the command line of the job's tasks;
- ``SlurmExecutor.parameters["map_count"]``: set by submitit for an array submission (the
  ``--array`` line of the script).
"""
from __future__ import annotations


def slurm_job_script(executor, count: int) -> str:
    """The sbatch script ``executor`` (a ``submitit.SlurmExecutor``) would submit for a ``count``-task
    array, as submitit renders it (``scaling launch --dry-run`` prints it)."""
    executor.parameters["map_count"] = count
    try:
        return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
    finally:
        executor.parameters.pop("map_count")
