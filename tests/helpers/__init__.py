"""Helpers shared by the tests (``from tests.helpers.<module> import ...``; fixtures stay in the conftest.py files).

annotate               JSONL read/write, the annotate CLI's subprocess environment, kill-mid-run (tests/annotate)
sglang_standin         a local SGLang stand-in server (in-process, or ``python -m tests.helpers.sglang_standin``)
dataset                synthetic IXT shard sets and token-stream parsing (tests/dataset)
export                 the tiny export model, its checkpoints and logits (tests/export)
export_build_parallel  torchrun worker of ``export.build_parallel`` (``-m tests.helpers.export_build_parallel``)
fineweb                FineWeb-like parquet corpora (tests/annotate, tests/preprocess)
scaling                synthetic sweep runs and specs (tests/scaling, tests/slurm)
slurm_cluster          a real one-node Slurm cluster (tests/slurm)
slurm_jobs             the environment and work directories of test jobs (tests/slurm)
token_shards           writes an IXT token shard set from token arrays (tests, benchmarks)
training               the pretrain launcher and metrics readers (tests/training, tests/slurm)
training_corpus        the learnable counting shard set of the training tests (tests/training, tests/slurm)
"""
