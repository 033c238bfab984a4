"""Preprocessing as a library: corpus files (JSON lines or parquet) -> IXT shard set.

``chunks`` cuts the input into fixed chunks, ``encoder`` turns a chunk into token arrays,
``pool`` runs the encoder in N processes in input order, ``run`` writes the shard set and its
report. tools/preprocess_ixt.py is the command line over :func:`preprocess`.
"""
from megatron_ixt.preprocess.run import NothingUseful, PreprocessConfig, StrictError, preprocess, shard_files

__all__ = ["NothingUseful", "PreprocessConfig", "StrictError", "preprocess", "shard_files"]
