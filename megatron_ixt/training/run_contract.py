"""What a training run promises the processes that watch it, readable without torch: the name of its
checkpoint tracker file (:data:`TRACKER_FILE`). Its exit statuses are ``megatron_ixt.cli``'s table.
"""

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # in --save: the iteration of the latest complete checkpoint
