"""megatron-ixt: Introspective Training (feedback-conditioned pretraining) on Megatron-Core."""
from setuptools import find_packages, setup

setup(
    name="megatron-ixt",
    version="0.1.0",
    description="Introspective Training (IXT) on NVIDIA Megatron-Core: annotate, preprocess, train, steer.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_ixt", "megatron_ixt.*", "annotate", "annotate.*", "tools"]),
    package_data={"annotate": ["prompts/*.txt"], "megatron_ixt": ["data/templates/*.txt"]},
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16,<0.20",
        "numpy>=1.26",
        "sentencepiece>=0.2",
        "psutil>=5.9",
        "aiohttp>=3.9",
    ],
    extras_require={
        "hf": ["transformers>=4.40", "tokenizers>=0.19"],
        "zstd": ["zstandard>=0.22"],
        "scaling": ["scipy>=1.11"],
        "tensorboard": ["tensorboard>=2.15"],
        "sglang": ["sglang"],
        "te": ["transformer-engine[pytorch]"],
        "dev": ["pytest>=8", "pytest-timeout>=2.2", "scipy>=1.11", "transformers>=4.40",
                "tokenizers>=0.19", "zstandard>=0.22", "tensorboard>=2.15"],
    },
    entry_points={
        "console_scripts": [
            "ixt-pretrain=megatron_ixt.pretrain:main",
            "ixt-preprocess=tools.preprocess_ixt:main",
            "ixt-annotate=annotate.cli:main",
        ],
    },
)
