"""Export of megatron-ixt checkpoints to other formats (``hf``: Hugging Face transformers)."""
