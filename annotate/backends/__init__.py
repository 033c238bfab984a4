"""Judge backends: one interface, three implementations.

A backend turns a :class:`Request` into a :class:`Completion` (the judge's raw output and
token usage) or raises :class:`BackendError` once it has given up on that request. Server
faults are retried inside the backend; parse/length retries are the runner's business.

- ``http``: SGLang servers (native ``/generate`` or OpenAI ``/v1/chat/completions``), see http.py
- ``sglang``: in-process ``sglang.Engine`` (imported only when chosen), see engine.py
- ``verifier``: programmatic judge of arithmetic worked solutions (CPU), see verifier.py
"""
from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("http", "sglang", "verifier")


@dataclass(frozen=True)
class Request:
    doc_id: str
    prompt: str  # the rendered user message: rubric first, document last
    document: str  # the (possibly truncated) document text alone


@dataclass(frozen=True)
class Completion:
    text: str  # the answer (may still contain <think> blocks)
    reasoning: str | None  # reasoning returned separately by the server, if any
    finish_reason: str  # "stop", "length", ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class BackendError(Exception):
    """A request the backend gave up on; ``reason`` becomes ``ixt.status = "failed:<reason>"``."""

    def __init__(self, message: str, reason: str = "http", attempts: int = 1):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts


class AllServersDown(RuntimeError):
    """Every server has been unreachable for longer than the configured time: abort the run."""


def build_backend(args, counter):
    """The backend selected by the parsed CLI ``args`` (see annotate.cli). ``counter`` (a
    :class:`annotate.prompt.TokenCounter`) supplies the tokenizer's chat template for the
    raw-completion APIs and the token counts of the verifier."""
    from annotate.prompt import ChatFormatter

    formatter = ChatFormatter(counter.hf_tokenizer, args.chat_template_kwargs)
    if args.backend == "http":
        from annotate.backends.http import HttpBackend, HttpConfig

        return HttpBackend(HttpConfig.from_args(args), formatter)
    if args.backend == "sglang":
        from annotate.backends.engine import EngineBackend, EngineConfig

        return EngineBackend(EngineConfig.from_args(args), formatter)
    if args.backend == "verifier":
        from annotate.backends.verifier import VerifierBackend

        return VerifierBackend(counter.count)
    raise ValueError(f"unknown backend {args.backend!r}; expected one of {BACKENDS}")
