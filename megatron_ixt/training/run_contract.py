"""What a training run promises the processes that launch and watch it (torch-free).

Its exit status :data:`EXIT_RESUMABLE` and its checkpoint tracker file :data:`TRACKER_FILE`:
``megatron_ixt.scaling`` reads both without importing the trainer (or torch).
"""

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped early with a checkpoint; run again with --load
TRACKER_FILE = "latest_checkpointed_iteration.txt"  # in --save: the iteration of the latest complete checkpoint
