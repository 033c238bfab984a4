"""HTTP backend: SGLang servers (or an sglang-router) speaking SGLang's protocol.

Two APIs (``--api``):

- ``generate`` (default): SGLang's native ``POST /generate`` with
  ``{"text": <chat-formatted prompt>, "sampling_params": {"max_new_tokens", "temperature", "top_p"}}``;
  the response is ``{"text", "output_ids", "meta_info": {"prompt_tokens", "completion_tokens",
  "cached_tokens", "finish_reason": {"type": "stop"|"length"|"abort", ...}, ...}}``.
- ``chat``: OpenAI-compatible ``POST /v1/chat/completions``; reasoning arrives in
  ``choices[0].message.reasoning_content`` when the server runs a ``--reasoning-parser``;
  ``usage.prompt_tokens_details.cached_tokens`` needs SGLang's ``--enable-cache-report``.
  Works with any OpenAI-compatible server.

Fault handling: the backend waits for ``GET /health`` == 200 before starting, sends each
request to the healthy server with the fewest requests in flight, and retries connection
failures/resets, timeouts, HTTP 408/429/5xx, aborted requests and malformed responses with
exponential backoff and jitter (``Retry-After`` honoured), at most ``max_retries`` times;
then the request fails with ``failed:http``. Other 4xx answers (e.g. a prompt longer than the
context) fail at once, marked as a *refusal* with the likely fix (``--api chat``, ``--model``,
``--api-key-env``), so the runner stops when documents in a row are all refused the same way.
A server that fails at the connection level or times out is taken out of rotation and probed
on ``/health`` until it answers again; when no server has been up for ``all_down_timeout``
seconds, :class:`AllServersDown` aborts the run.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field

from annotate.backends.base import AllServersDown, BackendError, Completion, JudgeContext, Request, Sampling
from annotate.backends.httpconn import ConnectError, HttpPool, ProtocolError

log = logging.getLogger("annotate")
APIS = ("generate", "chat")


@dataclass
class HttpConfig:
    urls: list = field(default_factory=list)
    api: str = "generate"
    model: str | None = None  # None: asked from the server (/model_info or /v1/models)
    sampling: Sampling = field(default_factory=Sampling)
    api_key: str | None = None
    chat_template_kwargs: dict | None = None
    request_timeout: float = 1800.0  # seconds per request (a thinking judge can be slow)
    connect_timeout: float = 10.0
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    health_timeout: float = 1800.0  # initial wait for a first healthy server
    all_down_timeout: float = 600.0


class _Retryable(Exception):
    def __init__(self, message: str, server_down: bool = False, retry_after: float = 0.0):
        super().__init__(message)
        self.server_down = server_down
        self.retry_after = retry_after


class _Server:
    __slots__ = ("url", "pool", "up", "inflight", "last_error", "probe")

    def __init__(self, url: str, pool: HttpPool):
        self.url, self.pool = url, pool
        self.up, self.inflight, self.last_error, self.probe = False, 0, "not probed yet", None


class HttpBackend:
    """:class:`annotate.backends.base.BackendFactory` and ``Backend`` for SGLang / OpenAI servers."""

    name = "http"
    description = "SGLang servers or an sglang-router over HTTP (see annotate/backends/http.py)"
    result_flags = ("api", "model")
    operational_flags = ("url", "api_key_env", "request_timeout", "max_retries", "backoff_base", "backoff_max",
                         "health_timeout", "all_down_timeout")

    @staticmethod
    def add_args(group) -> None:
        d = HttpConfig()
        group.add_argument("--url", action="append", default=[],
                           help="SGLang server or sglang-router URL, e.g. http://127.0.0.1:30000 (repeatable; each "
                                "request goes to the healthy server with the fewest requests in flight)")
        group.add_argument("--api", choices=APIS, default=d.api,
                           help="generate: SGLang's native POST /generate (the prompt formatted with --tokenizer's "
                                "chat template); chat: OpenAI-compatible POST /v1/chat/completions (any such server)")
        group.add_argument("--model", default=d.model,
                           help="model name recorded in ixt.annotator.model and sent with --api chat; "
                                "default: asked from the server (/model_info, /v1/models)")
        group.add_argument("--api-key-env", default=None, metavar="ENV_VAR",
                           help="name of an environment variable holding a bearer token (the token is never saved)")
        group.add_argument("--request-timeout", type=float, default=d.request_timeout,
                           help="seconds to wait for one answer (a thinking judge can take minutes)")
        group.add_argument("--max-retries", type=int, default=d.max_retries,
                           help="retries of a request after a server fault (connection error, timeout, HTTP "
                                "408/429/5xx, abort, malformed answer) before the document is failed:http")
        group.add_argument("--backoff-base", type=float, default=d.backoff_base,
                           help="seconds before the first retry; doubles with each further retry (with jitter)")
        group.add_argument("--backoff-max", type=float, default=d.backoff_max,
                           help="longest wait in seconds between retries (also caps Retry-After)")
        group.add_argument("--health-timeout", type=float, default=d.health_timeout,
                           help="seconds to wait at the start for a first server answering GET /health with 200")
        group.add_argument("--all-down-timeout", type=float, default=d.all_down_timeout,
                           help="seconds without any reachable server after which the run stops (exit 69, resumable)")

    @classmethod
    def from_args(cls, args, judge: JudgeContext) -> HttpBackend:
        if not args.url:
            raise ValueError("--backend http needs at least one --url")
        api_key = None
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
        config = HttpConfig(urls=[u.rstrip("/") for u in args.url], api=args.api, model=args.model,
                            sampling=judge.sampling, api_key=api_key,
                            chat_template_kwargs=judge.chat_template_kwargs,
                            request_timeout=args.request_timeout, max_retries=args.max_retries,
                            backoff_base=args.backoff_base, backoff_max=args.backoff_max,
                            health_timeout=args.health_timeout, all_down_timeout=args.all_down_timeout)
        return cls(config, judge.format)

    def __init__(self, config: HttpConfig, formatter):
        self.cfg = config
        self.model = config.model
        self.format = formatter
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
        self.servers = [_Server(u, HttpPool(u, config.connect_timeout, headers)) for u in config.urls]
        self.errors: dict[str, int] = {}  # error kind -> count (retried or not), for stats
        self.served_models: list[str] = []  # ids listed by GET /v1/models (for error hints)
        self._any_up: asyncio.Event | None = None
        self._down_since = time.monotonic()
        self._next = 0
        if config.api == "generate":
            self._path = "/generate"
            self._sampling = asdict(config.sampling)
        else:
            self._path = "/v1/chat/completions"

    def info(self) -> dict:
        return {"backend": self.name, "model": self.model or "unknown", "api": self.cfg.api}

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._any_up = asyncio.Event()
        self._down_since = time.monotonic()
        for s in self.servers:
            s.probe = asyncio.create_task(self._probe(s))
        log.info("waiting for /health on %d server(s): %s", len(self.servers), ", ".join(s.url for s in self.servers))
        try:
            await asyncio.wait_for(self._any_up.wait(), self.cfg.health_timeout)
        except asyncio.TimeoutError:
            raise AllServersDown(f"no server answered GET /health with 200 within {self.cfg.health_timeout:g}s: "
                                 + "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)) from None
        server = next(s for s in self.servers if s.up)
        models = await self._get_json(server, "/v1/models")
        try:
            self.served_models = [str(m["id"]) for m in models["data"]]
        except (KeyError, TypeError):
            self.served_models = []
        if self.model is None:
            info = await self._get_json(server, "/model_info")
            self.model = str(info["model_path"]) if isinstance(info, dict) and info.get("model_path") else (
                self.served_models[0] if self.served_models else None)
            if self.model is None and self.cfg.api == "chat":
                raise ValueError(f"{server.url}: the server reports no model name (/model_info, /v1/models); "
                                 "pass --model")

    async def close(self) -> None:
        for s in self.servers:
            if s.probe is not None:
                s.probe.cancel()
            s.pool.close()

    @staticmethod
    async def _get_json(server: _Server, path: str):
        """The JSON answer of ``GET path``, or None (not 200, unreachable, not JSON)."""
        try:
            status, _, raw = await server.pool.request("GET", path, timeout=10)
            return json.loads(raw) if status == 200 else None
        except (OSError, asyncio.TimeoutError, ValueError):
            return None

    def _hint(self, status: int, answer: str) -> str:
        """The likely fix when the server refuses a request with HTTP ``status``."""
        if status in (401, 403):
            if self.cfg.api_key:
                return "the server refused the token given by --api-key-env: check it"
            return "the server wants an API key: put it in an environment variable and pass --api-key-env NAME"
        if status == 404 and self.cfg.api == "generate":
            return ("this server has no SGLang /generate (an OpenAI-compatible server?): pass --api chat, "
                    "or check --url")
        if "model" in answer.lower():
            listed = f" (GET /v1/models lists {', '.join(self.served_models[:5])})" if self.served_models else ""
            return f"the server does not serve --model {self.model!r}: pass --model with one it serves{listed}"
        if status == 404:
            return "this server has no /v1/chat/completions: check --url (an SGLang server: --api generate)"
        if "context" in answer.lower() or "too long" in answer.lower():
            return "documents longer than the judge's context: lower --max-doc-tokens or --max-new-tokens"
        return "check --model, --chat-template-kwargs and the sampling flags against the server's documentation"

    # ---------------------------------------------------------------- server pool
    async def _probe(self, server: _Server) -> None:
        delay = 0.25
        while True:
            try:
                status, _, _ = await server.pool.request("GET", "/health", timeout=10)
                if status == 200:
                    self._mark_up(server)
                    return
                server.last_error = f"/health answered HTTP {status}"
            except (OSError, asyncio.TimeoutError) as e:
                server.last_error = f"/health: {type(e).__name__}: {e}"
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 10.0)

    def _mark_up(self, server: _Server) -> None:
        if not server.up:
            log.info("server %s is up", server.url)
        server.up, server.probe = True, None
        self._any_up.set()

    def _mark_down(self, server: _Server, why: str) -> None:
        server.last_error = why
        if not server.up:
            return
        server.up = False
        log.warning("server %s taken out of rotation (%s); probing /health", server.url, why)
        if not any(s.up for s in self.servers):
            self._any_up.clear()
            self._down_since = time.monotonic()
        server.probe = asyncio.create_task(self._probe(server))

    async def _acquire(self) -> _Server:
        while True:
            best, n = None, len(self.servers)
            for i in range(n):
                s = self.servers[(self._next + i) % n]
                if s.up and (best is None or s.inflight < best.inflight):
                    best = s
            if best is not None:
                self._next = (self._next + 1) % n
                return best
            remaining = self.cfg.all_down_timeout - (time.monotonic() - self._down_since)
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(self._any_up.wait(), remaining)
            except asyncio.TimeoutError:
                raise AllServersDown(
                    f"all {len(self.servers)} server(s) unreachable for more than {self.cfg.all_down_timeout:g}s ("
                    + "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)
                    + "). Completed work is saved: rerun the same command to resume.") from None

    # ---------------------------------------------------------------- requests
    def _body(self, request: Request) -> bytes:
        if self.cfg.api == "generate":
            body = {"text": self.format(request.prompt), "sampling_params": self._sampling}
        else:
            body = {"model": self.model, "messages": [{"role": "user", "content": request.prompt}],
                    "max_tokens": self.cfg.sampling.max_new_tokens, "temperature": self.cfg.sampling.temperature,
                    "top_p": self.cfg.sampling.top_p}
            if self.cfg.chat_template_kwargs:
                body["chat_template_kwargs"] = self.cfg.chat_template_kwargs
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def _backoff(self, failures: int, retry_after: float) -> float:
        ceiling = min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (failures - 1))
        return max(min(retry_after, self.cfg.backoff_max), ceiling / 2 + random.uniform(0, ceiling / 2))

    async def complete(self, request: Request) -> Completion:
        body = self._body(request)
        failures = 0
        while True:
            server = await self._acquire()
            server.inflight += 1
            try:
                return await self._send(server, body)
            except BackendError as e:
                e.attempts = failures + 1
                raise
            except _Retryable as e:
                failures += 1
                kind = str(e).split(":", 1)[0]
                self.errors[kind] = self.errors.get(kind, 0) + 1
                if e.server_down:
                    self._mark_down(server, str(e))
                if failures > self.cfg.max_retries:
                    raise BackendError(f"{e} (gave up after {failures} attempts)", "http", failures) from None
                wait = self._backoff(failures, e.retry_after)
            finally:
                server.inflight -= 1
            await asyncio.sleep(wait)

    async def _send(self, server: _Server, body: bytes) -> Completion:
        try:
            status, headers, raw = await server.pool.request("POST", self._path, body, self.cfg.request_timeout)
        except asyncio.TimeoutError:
            raise _Retryable(f"timeout: no answer from {server.url} within {self.cfg.request_timeout:g}s",
                             server_down=True) from None
        except ConnectError as e:
            raise _Retryable(f"connection refused: {server.url}: {e}", server_down=True) from None
        except ProtocolError as e:
            raise _Retryable(f"protocol error: {server.url}: {e}", server_down=True) from None
        except OSError as e:  # ConnectionResetError and friends
            raise _Retryable(f"connection reset: {server.url}: {type(e).__name__}: {e}", server_down=True) from None
        retry_after = headers.get("retry-after", "")
        if status != 200:
            message = raw[:300].decode("utf-8", "replace")
            if status in (408, 429) or status >= 500:
                wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
                raise _Retryable(f"HTTP {status}: {message}", retry_after=wait)
            kind = f"HTTP {status}"
            self.errors[kind] = self.errors.get(kind, 0) + 1
            raise BackendError(f"{kind} from {server.url}{self._path}: {message}", "http", refusal=kind,
                               hint=self._hint(status, message))
        try:
            data = json.loads(raw)
            return self._generate_completion(data) if self.cfg.api == "generate" else self._chat_completion(data)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise _Retryable(f"malformed response: {type(e).__name__}: {e}: {raw[:200]!r}") from None

    @staticmethod
    def _generate_completion(data: dict) -> Completion:
        meta = data["meta_info"]
        reason = meta.get("finish_reason")
        kind = reason.get("type", "unknown") if isinstance(reason, dict) else str(reason)
        if kind == "abort":
            raise _Retryable(f"aborted: {reason.get('message')}")
        return Completion(text=data["text"], reasoning=None, finish_reason=kind,
                          prompt_tokens=int(meta.get("prompt_tokens") or 0),
                          completion_tokens=int(meta.get("completion_tokens") or 0),
                          cached_tokens=int(meta.get("cached_tokens") or 0))

    @staticmethod
    def _chat_completion(data: dict) -> Completion:
        choice = data["choices"][0]
        message = choice["message"]
        kind = choice.get("finish_reason") or "unknown"
        if kind == "abort":
            raise _Retryable("aborted: the server aborted the request")
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        return Completion(text=message.get("content") or "", reasoning=message.get("reasoning_content"),
                          finish_reason=kind, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          cached_tokens=int(details.get("cached_tokens") or 0))
