"""Judge backends: the interface (:mod:`annotate.backends.base`) and the registry of the
``--backend`` choices, ``REGISTRY``: name -> :class:`BackendFactory`.

- ``http``: SGLang servers (native ``/generate`` or OpenAI ``/v1/chat/completions``), see http.py
- ``sglang``: in-process ``sglang.Engine`` (sglang imported only when chosen), see engine.py

A new backend is a module with a class that satisfies :class:`BackendFactory` (and whose
instances satisfy :class:`Backend`), added to ``_BUILT_IN`` below, or passed to
:func:`register` by a module of one's own loaded with ``python -m annotate --import MODULE``
(docs/annotate.md, "Adding a backend"; the demo's ``verifier`` judge, examples/demo/ixt_demo/verifier.py,
is one).
"""
from __future__ import annotations

from annotate.backends.base import (
    AllServersDown,
    Backend,
    BackendError,
    BackendFactory,
    Completion,
    JudgeContext,
    Misconfigured,
    Request,
    Sampling,
)
from annotate.backends.engine import EngineBackend
from annotate.backends.http import HttpBackend

__all__ = ["AllServersDown", "Backend", "BackendError", "BackendFactory", "Completion", "JudgeContext",
           "Misconfigured", "Request", "Sampling", "REGISTRY", "register"]

REGISTRY: dict[str, BackendFactory] = {}


def register(factory: BackendFactory) -> BackendFactory:
    """Offer ``factory`` as ``--backend factory.name``; returns it (usable as a class decorator).
    ValueError when another factory has that name."""
    taken = REGISTRY.get(factory.name)
    if taken is not None and taken is not factory:
        raise ValueError(f"annotation backend {factory.name!r} is already registered ({taken.__module__})")
    REGISTRY[factory.name] = factory
    return factory


_BUILT_IN = (HttpBackend, EngineBackend)
for _factory in _BUILT_IN:
    register(_factory)
