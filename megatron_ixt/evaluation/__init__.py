"""Downstream evaluation of exported models with lm-evaluation-harness (``pip install megatron-ixt[eval]``).

``megatron_ixt.evaluation.lm_eval_model`` registers the lm-eval model ``ixt_hf``;
``python -m megatron_ixt.evaluation`` is lm-eval's command line with it registered. See docs/evaluation.md.
"""
