"""megatron-ixt: Introspective Training (feedback-conditioned pretraining) on Megatron-Core."""
from setuptools import find_packages, setup

setup(
    name="megatron-ixt",
    version="0.1.0",
    description="Introspective Training (IXT) on NVIDIA Megatron-Core: annotate, preprocess, train, steer.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # tools/ stays a folder of scripts (`python tools/preprocess_ixt.py`); installed, it is the
    # megatron_ixt_tools package, so no generic top-level `tools` lands in site-packages.
    packages=find_packages(include=["megatron_ixt", "megatron_ixt.*", "annotate", "annotate.*"])
    + ["megatron_ixt_tools"],
    package_dir={"megatron_ixt_tools": "tools"},
    package_data={"annotate": ["prompts/*.txt"], "megatron_ixt": ["data/templates/*.txt"]},
    install_requires=[
        "torch>=2.4",
        # what .ci/run tests: 0.16.1 (Python 3.11) and 0.19.2 (Python 3.12) in full, 0.17.1 and 0.18.2 by
        # a smoke run (docs/training.md, "Supported stacks")
        "megatron-core>=0.16.1,<0.20",
        "numpy>=1.26",
        "sentencepiece>=0.2",
        "gigatoken>=0.10,<0.11",  # fast tokenization in tools/preprocess_ixt.py (optional at import)
        "orjson>=3.9",  # fast JSONL parsing (optional at import)
    ],
    extras_require={
        "hf": ["transformers>=5.0", "tokenizers>=0.19", "safetensors>=0.4", "protobuf>=4"],
        "eval": ["lm-eval>=0.4.9,<0.5", "accelerate>=0.26", "transformers>=5.0", "tokenizers>=0.19",
                 "safetensors>=0.4", "protobuf>=4"],
        "zstd": ["zstandard>=0.22"],
        "parquet": ["pyarrow>=15"],  # parquet inputs of annotate and preprocessing
        "scaling": ["scipy>=1.11", "matplotlib>=3.7", "threadpoolctl>=3.1", "pyyaml>=6.0", "submitit>=1.5,<1.6"],
        "tensorboard": ["tensorboard>=2.15"],
        "wandb": ["wandb>=0.17"],
        "sglang": ["sglang"],
        "te": ["transformer-engine[pytorch]"],
        # aiohttp: the test suite's stand-in SGLang server; psutil: the annotation benchmark
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "ruff==0.17.6", "aiohttp>=3.9", "psutil>=5.9", "scipy>=1.11",
                "matplotlib>=3.7", "threadpoolctl>=3.1",
                "pyyaml>=6.0", "submitit>=1.5,<1.6", "transformers>=5.0", "tokenizers>=0.19", "zstandard>=0.22",
                "pyarrow>=15", "tensorboard>=2.15", "lm-eval>=0.4.9,<0.5", "accelerate>=0.26", "safetensors>=0.4",
                "protobuf>=4", "wandb>=0.17"],
    },
    entry_points={
        "console_scripts": [
            "ixt-annotate=annotate.cli:main",
            "ixt-preprocess=megatron_ixt_tools.preprocess_ixt:main",
            "ixt-merge=megatron_ixt_tools.merge_ixt:main",
            "ixt-inspect=megatron_ixt_tools.inspect_ixt:main",
            "ixt-inspect-samples=megatron_ixt_tools.inspect_samples:main",
            "ixt-pretrain=megatron_ixt.pretrain:main",
            "ixt-pretrain-megatron-lm=megatron_ixt.megatron_lm:main",
            "ixt-generate=megatron_ixt.generate:main",
            "ixt-scaling=megatron_ixt.scaling.cli:main",
            "ixt-evaluate=megatron_ixt.evaluation.cli:main",
            "ixt-convert-to-hf=megatron_ixt_tools.convert_to_hf:main",
        ],
    },
)
