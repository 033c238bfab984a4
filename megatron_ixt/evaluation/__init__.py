"""Evaluation of megatron-ixt models.

- ``heldout``: held-out loss per conditioning, the one loop behind the trainer's periodic eval and
  ``python -m megatron_ixt.evaluation.cli`` (docs/scaling.md).
- ``lm_eval_model``: registers the lm-evaluation-harness model ``ixt_hf`` for exported models
  (``pip install megatron-ixt[eval]``); ``python -m megatron_ixt.evaluation.lm_eval_cli`` is
  lm-eval's command line with it registered (docs/evaluation.md).
"""
