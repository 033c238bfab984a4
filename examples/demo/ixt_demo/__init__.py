"""The demo's own code, outside the megatron-ixt package: the synthetic arithmetic corpus
(:mod:`ixt_demo.synthetic`) and its programmatic judge (:mod:`ixt_demo.verifier`, loaded into
``python -m annotate`` with ``--import ixt_demo.verifier``). ``examples/demo`` must be on the Python
path (examples/demo/run_demo.py puts it there)."""
