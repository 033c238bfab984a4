"""``python -m megatron_ixt.evaluate``: the held-out evaluation, whose home is ``megatron_ixt.evaluation.cli``."""
import sys

from megatron_ixt.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
