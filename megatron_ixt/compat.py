"""CPU compatibility layer for megatron-core (active only when CUDA is unavailable).

megatron-core's pipeline schedules (even PP=1), p2p communication, DDP buffers, grad-norm
fallback and RNG tracker hard-code CUDA: ``device="cuda"``, ``torch.cuda.current_device()``,
``torch.cuda.synchronize()``, ``torch.cuda.manual_seed`` / ``get_rng_state``. On a machine
without a GPU (CI, laptops) :func:`install` maps exactly these to the CPU so that the *real*
megatron-core code paths run with gloo:

* a :class:`torch.overrides.TorchFunctionMode` rewrites ``device="cuda"`` (or ``cuda:N``, or
  an integer device) in tensor factory calls to ``cpu``, makes ``Tensor.cuda()`` a no-op, and
  makes ``Tensor.type()`` name CPU tensors ``torch.cuda.*`` (megatron's optimizer sorts and
  asserts parameters by that string);
* ``torch.cuda.current_device()`` returns ``"cpu"`` (it is only ever used as a device
  argument), ``torch.cuda.synchronize()`` is a no-op, and ``torch.cuda.current_stream()`` is a
  stream whose waits are no-ops (CPU work is already ordered; megatron-core 0.19 asks for the
  stream in every gradient sync);
* the CUDA RNG used by megatron's ``CudaRNGStatesTracker`` (and hence by
  ``model_parallel_cuda_manual_seed``) is the CPU default generator.

Everything else (CUDA streams for overlapped grad reduce, the distributed optimizer's CUDA
buffers, CUDA graphs) stays unsupported on CPU; :mod:`megatron_ixt.training.config` refuses
those flags there. With a GPU, :func:`install` does nothing.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_installed = False


def cpu_only() -> bool:
    """True when the process has no usable CUDA device (the compatibility layer applies)."""
    return not torch.cuda.is_available()


def _is_accelerator_device(device) -> bool:
    if isinstance(device, int):
        return True
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class CudaToCpuMode(TorchFunctionMode):
    """CUDA device arguments become CPU; ``Tensor.cuda()`` is identity; ``Tensor.type()`` says cuda."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        device = kwargs.get("device")
        if device is not None and _is_accelerator_device(device):
            kwargs = dict(kwargs, device="cpu")
            kwargs.pop("pin_memory", None)
        return func(*args, **kwargs)


def _cpu_get_rng_state(*args, **kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, *args, **kwargs) -> None:
    torch.set_rng_state(new_state)


class CpuStream:
    """The stream ``torch.cuda.current_stream()`` returns on CPU: everything already runs in order."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass


def install() -> bool:
    """Activate the CPU mapping once per process if CUDA is unavailable; returns whether active."""
    global _installed
    if not cpu_only():
        return False
    if _installed:
        return True
    from megatron_ixt.mcore_private import route_cuda_rng_state

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_stream = lambda *args, **kwargs: CpuStream()
    torch.cuda.manual_seed = torch.manual_seed
    torch.cuda.get_rng_state = _cpu_get_rng_state
    torch.cuda.random.get_rng_state = _cpu_get_rng_state
    route_cuda_rng_state(_cpu_get_rng_state, _cpu_set_rng_state)
    CudaToCpuMode().__enter__()  # process-wide: stays on the mode stack
    _installed = True
    return True
