"""``python -m megatron_ixt.scaling {fit,launch,status}``: see docs/scaling.md."""
import sys

from megatron_ixt.scaling.cli import main

if __name__ == "__main__":
    sys.exit(main())
