"""megatron-ixt: Introspective Training (IXT) on NVIDIA Megatron-Core."""
__version__ = "0.1.0"
