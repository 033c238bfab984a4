"""The judge backend interface: what the runner calls (:class:`Backend`) and what the CLI
needs to offer a backend as ``--backend NAME`` (:class:`BackendFactory`).

A backend turns a :class:`Request` into a :class:`Completion` (the judge's raw output and
token usage) or raises :class:`BackendError` once it has given up on that request. Server
faults are retried inside the backend; parse/length retries are the runner's business.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


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
    """A request the backend gave up on; ``reason`` becomes ``ixt.status = "failed:<reason>"``.

    ``refusal`` marks an answer that every request would get if the run is misconfigured (e.g.
    ``"HTTP 404"``); ``hint`` is then the likely fix. When a window of documents in a row fail
    with the same refusal the runner stops instead of recording them as failed."""

    def __init__(self, message: str, reason: str = "http", attempts: int = 1, refusal: str | None = None,
                 hint: str = ""):
        super().__init__(message)
        self.reason = reason
        self.attempts = attempts
        self.refusal = refusal
        self.hint = hint


class Misconfigured(RuntimeError):
    """Documents in a row all failed with the same refusal: stop without recording them."""


class AllServersDown(RuntimeError):
    """Every server has been unreachable for longer than the configured time: abort the run."""


@dataclass(frozen=True)
class Sampling:
    """The judge's sampling settings: SGLang ``sampling_params`` / the OpenAI request fields."""

    max_new_tokens: int = 4096
    temperature: float = 0.6
    top_p: float = 0.95


@dataclass(frozen=True)
class JudgeContext:
    """What the shared judge options give every backend: ``count`` measures text in the judge's
    tokens (``--tokenizer``, else an estimate); ``format`` turns the rendered user message into
    the text for a raw-completion API (the tokenizer's chat template with
    ``chat_template_kwargs``, else the message unchanged); ``chat_template_kwargs`` also go to
    servers that apply the template themselves."""

    count: Callable[[str], int]
    format: Callable[[str], str]
    sampling: Sampling = field(default_factory=Sampling)
    chat_template_kwargs: dict | None = None


class Backend(Protocol):
    """A judge, as the runner drives it: ``start()`` once (e.g. wait for a healthy server),
    then ``info()`` once, ``complete()`` from up to ``--concurrency`` tasks at a time,
    ``close()`` once (also after a failure or an interrupt)."""

    errors: dict[str, int]  # error kind -> count (retried or not), reported in the run summary

    async def start(self) -> None:
        """Get ready to serve requests; raise :class:`AllServersDown` if the judge never comes up."""

    def info(self) -> dict:
        """The ``ixt.annotator`` block of every record: at least ``backend`` (its registry name)
        and ``model``. A resumed shard refuses a different ``backend`` or ``model``."""

    async def complete(self, request: Request) -> Completion:
        """The judge's answer to one request; :class:`BackendError` when the backend gives up."""

    async def close(self) -> None:
        """Release servers, connections, engines."""


class BackendFactory(Protocol):
    """How a backend is offered by ``python -m annotate``: a class (usually the backend class
    itself, with a static ``add_args`` and a class method ``from_args``) registered under
    ``name`` with :func:`annotate.backends.register`.

    ``run`` saves the options named in ``result_flags`` and ``operational_flags`` (argparse
    dests of the flags ``add_args`` declares) in ``OUTPUT/run_config.json``; ``retry-failed``
    takes them as its defaults. ``result_flags`` change the annotations (model, sampling, API):
    a resumed ``run`` refuses other values for them once the directory holds annotations.
    ``operational_flags`` say how the run reaches the judge (servers, timeouts, batch sizes):
    free to change between runs. Flags in neither are not saved.
    """

    name: str  # the --backend choice, and info()["backend"]
    description: str  # one line, shown in --help above the backend's flags
    result_flags: tuple[str, ...]
    operational_flags: tuple[str, ...]

    @staticmethod
    def add_args(group) -> None:
        """Declare this backend's flags, each with help, on ``group`` (an argparse argument
        group titled after the backend)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, judge: JudgeContext) -> Backend:
        """The backend for parsed ``args``; ValueError (a message for the user) on bad values."""
