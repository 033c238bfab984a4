"""What a training run promises the processes that launch and watch it (torch-free).

Its exit status :data:`EXIT_RESUMABLE` and its checkpoint tracker file :data:`TRACKER_FILE`:
``megatron_ixt.scaling`` reads both without importing the trainer (or torch).
"""
from megatron_ixt.cli import EXIT_RESUMABLE  # noqa: F401  (the exit-status table: megatron_ixt/cli.py)

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # in --save: the iteration of the latest complete checkpoint
