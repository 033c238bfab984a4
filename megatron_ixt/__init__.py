"""megatron-ixt: Introspective Training (IXT) on NVIDIA Megatron-Core."""
import logging
import os
import warnings

__version__ = "0.1.0"

if not os.path.exists("/proc/driver/nvidia/version"):
    # No NVIDIA driver: megatron-core's import-time notices that Transformer Engine and Apex are
    # missing (it falls back to local kernels), and torch's that no CUDA runtime is found, are
    # expected here and would open every command's output with eight lines of noise. On a GPU
    # machine they stay visible.
    warnings.filterwarnings("ignore", message="(Transformer Engine and Apex are|Apex is) not installed",
                            category=UserWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
