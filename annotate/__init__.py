"""Offline feedback annotation: a judge model writes a critique and scores for each document.

``python -m annotate run|status|retry-failed|report|agreement``; see docs/annotate.md. Output records follow
docs/CONTRACTS.md section 1 (``megatron_ixt.data.record``).
"""
